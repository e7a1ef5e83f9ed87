"""The import rules of docs/architecture.md, read from the source: imports point one way
(cli -> server -> poller -> client -> model), config and model import nothing of ours,
and starting the exporter does not import the simulator."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

import pytest

from tests import REPO

if TYPE_CHECKING:
    from pathlib import Path

PACKAGE = REPO / "exporter"

# Each layer may import the layers after it, never those before it.
LAYERS = (
    ("__main__",),
    ("cli",),
    ("simulate", "reload"),
    ("server", "registration", "demo"),
    ("fleet",),
    ("receiver", "hints", "exposition", "statuspage"),
    ("webhookkey",),
    ("poller", "apitoken"),
    ("analytics",),
    ("client", "simulator"),
    ("merge", "decode", "budget", "lanes", "render", "tokenfile"),
    ("collector",),
    ("model", "config"),
)
# Modules that are leaves: nothing of ours, even for type annotations.
LEAVES = ("model", "config")


def _top(module: str) -> str:
    """exporter.config.load -> config; exporter -> (the package itself) ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, *, typing_too: bool, nested_too: bool) -> set[str]:
    """The exporter modules ``path`` imports (top-level names); those under ``if
    TYPE_CHECKING`` only if ``typing_too``, those inside functions only if ``nested_too``."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(_top(a.name) for a in node.names if a.name.startswith("exporter."))
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "exporter":
                    found.update(a.name for a in node.names)
                elif node.module.startswith("exporter."):
                    found.add(_top(node.module))
            elif isinstance(node, ast.If):
                test = node.test
                checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
                )
                if not checking or typing_too:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and nested_too
            ):
                visit(node.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _modules() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out.setdefault(parts[0], []).append(path)
    return out


MODULES = _modules()
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def test_every_layered_module_exists() -> None:
    """A renamed module must be renamed here too, or the rules below would check nothing."""
    assert set(RANK) <= set(MODULES)


@pytest.mark.parametrize("module", sorted(RANK))
def test_imports_point_down_the_layers(module: str) -> None:
    wrong = []
    for path in MODULES[module]:
        for imported in _imports(path, typing_too=True, nested_too=True):
            if imported in RANK and imported != module and RANK[imported] <= RANK[module]:
                wrong.append(f"{path.name} imports {imported}")
    assert not wrong, f"{module} (layer {RANK[module]}) imports its own layer or above: {wrong}"


@pytest.mark.parametrize("module", LEAVES)
def test_config_and_model_import_nothing_of_ours(module: str) -> None:
    for path in MODULES[module]:
        others = _imports(path, typing_too=True, nested_too=True) - {module, "__version__"}
        assert not others, f"{path} imports {others}"


def _reached_at_start(module: str) -> set[str]:
    """What importing ``module`` imports of ours, following module-level imports only."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        for path in MODULES[name]:
            todo.extend(_imports(path, typing_too=False, nested_too=False))
    return seen


def test_starting_the_exporter_does_not_import_the_simulator() -> None:
    reached = _reached_at_start("cli")
    assert "server" in reached  # the walk follows imports at all
    assert "simulator" not in reached
    assert "demo" not in reached


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    """The walker finds imports in every place they hide: plain, in a function, under
    TYPE_CHECKING, in a try."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from exporter import server\n"
        "if TYPE_CHECKING:\n    from exporter.poller import Poller\n"
        "try:\n    import exporter.cli\nexcept ImportError:\n    pass\n"
        "def f():\n    from exporter.simulator import World\n",
        encoding="utf-8",
    )
    assert _imports(source, typing_too=True, nested_too=True) == {
        "server",
        "poller",
        "cli",
        "simulator",
    }
    assert _imports(source, typing_too=False, nested_too=False) == {"server", "cli"}
