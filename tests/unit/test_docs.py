"""The documentation agrees with the tree. In README.md, docs/*.md, bench/README.md and the
READMEs under deploy/:

- every repository path named in code (``deploy/kubernetes/base``, ``tests/*.py``, or
  ``base/config.yaml`` beside deploy/kubernetes/README.md) exists;
- every ``--flag`` is one that the exporter's parser (all its commands), a script of
  ``scripts/`` or a benchmark of ``bench/`` takes, or one of the few other tools' flags
  listed in FOREIGN_FLAGS;
- every ``python -m MODULE`` names a module of the tree;
- every relative link leads to a file that exists, and every ``#anchor``, within a page or
  into another, to a heading there;

and every alert's runbook (deploy/prometheus/alerts.yml and the generated PrometheusRule)
is a heading of docs/alerts.md, docs/configuration.md names every configuration key, and
the configurations the README and docs/simulator.md give are valid and say what they claim.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from exporter.cli import DEFAULT_PORT, build_parser
from exporter.config import loads
from exporter.simulate import SIMULATOR_DEFAULT_TOKEN, SIMULATOR_LISTEN
from tests import REPO
from tests.markdown import file_anchors, links, prose

if TYPE_CHECKING:
    from collections.abc import Iterator

DOCS = sorted(
    {
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        REPO / "bench" / "README.md",
        *(REPO / "deploy").rglob("README.md"),
    }
)
# A code path is checked when its first part is one of these (at the top of the tree), or
# an entry of the directory of the page that names it, or when it starts with ../ into
# the tree.
TOP = ("exporter", "tests", "docs", "deploy", "bench", "scripts", "requirements", ".ci")
# Files the docs name that the tree does not hold: what a run writes (ignored by git).
WRITTEN = {"bench/results.json", "bench/freshness.json"}
# Flags of tools other than ours that the docs show, each with its tool.
FOREIGN_FLAGS = {
    "--build": "docker compose up",
    "--build-arg": "docker build",
    "--rm": "docker run, docker compose run",
    "--from-file": "kubectl create secret",
    "--dry-run": "kubectl create",
    "--require-hashes": "pip install",
    "--no-build-isolation": "pip install",
    "--universal": "uv pip compile",
    "--generate-hashes": "uv pip compile",
    "--resolution": "uv pip compile",
    "--strict": "mypy",
    "--short": "git rev-parse",
    "--detach": "git worktree add",
    "--force": "git worktree remove",
    "--help": "every command",
}
# A path in code: parts of letters, digits, '.', '_', '-' (a '*' for a glob) joined by '/',
# not itself part of a longer path or a URL (nothing path-like right before it).
_CODE_PATH = re.compile(r"(?<![\w./$:-])([\w.-]+(?:/[\w.*-]+)+/?)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w.-]*\w)")
_MODULE = re.compile(r"python3? -m ((?:bench|exporter)(?:\.\w+)*)")


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def _code(text: str) -> Iterator[tuple[int, str]]:
    """The code of a Markdown text, with line numbers: fenced blocks line by line, and
    inline code spans."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(r"^\s*(```|~~~)", line):
            fenced = not fenced
        elif fenced:
            yield number, line
        else:
            for span in _CODE_SPAN.findall(line):
                yield number, span


def _exists(base: Path, name: str) -> bool:
    if "*" in name:
        return any(base.glob(name))
    return (base / name).exists()


def _path_problems(doc: Path) -> list[str]:
    problems = []
    text = doc.read_text(encoding="utf-8")
    here = {p.name for p in doc.parent.iterdir()} if doc.parent != REPO else set()
    for number, code in _code(text):
        for name in _CODE_PATH.findall(code):
            name = name.rstrip(".")
            first = name.split("/", 1)[0]
            if first == "..":
                # Checked when the directory it leads to is one of the tree: not
                # ../realtimekit-exporter/deploy/... in an overlay of the user's own.
                target = (doc.parent / name).resolve()
                if not (target.is_relative_to(REPO) and target.parent.is_dir()):
                    continue
                found = target.exists()
            elif first in TOP:
                found = _exists(REPO, name) or name in WRITTEN
            elif first in here:
                found = _exists(doc.parent, name)
            else:
                continue  # not a path of this tree (a user's file, a container's path)
            if not found:
                problems.append(f"{_relative(doc)}:{number}: no {name} in the tree")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_every_repository_path_the_docs_name_exists(doc: Path) -> None:
    assert _path_problems(doc) == []


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its commands, at any depth."""
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
    return flags


def _script_flags() -> set[str]:
    """The options the scripts and benchmarks of the tree take: those their argparse
    parsers declare, and the ``--flag)`` cases of the shell scripts."""
    flags: set[str] = set()
    for path in [*(REPO / "bench").glob("*.py"), *(REPO / "scripts").iterdir()]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        flags.update(re.findall(r"add_argument\(\s*\"(--[\w.-]+)\"", text))
        flags.update(re.findall(r"^\s*(--[\w.-]+)(?:\|[^)]*)?\)", text, flags=re.MULTILINE))
        flags.update(re.findall(r"^#\s+[\w./-]+ (--[\w.-]+)", text, flags=re.MULTILINE))
    return flags


KNOWN_FLAGS = _parser_flags(build_parser()) | _script_flags() | set(FOREIGN_FLAGS)


def _flag_problems(doc: Path) -> list[str]:
    problems = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for flag in _FLAG.findall(line):
            if flag not in KNOWN_FLAGS:
                problems.append(f"{_relative(doc)}:{number}: no command here takes {flag}")
        for module in _MODULE.findall(line):
            path = REPO / module.replace(".", "/")
            if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
                problems.append(f"{_relative(doc)}:{number}: no module {module}")
    return problems


def test_the_exporters_flags_are_found() -> None:
    """The flag sets the check compares with hold what they should (a parser walk that
    found nothing would let every flag through as foreign)."""
    exporter = _parser_flags(build_parser())
    assert {"--config.file", "--web.enable-lifecycle", "--demo", "--shard"} <= exporter
    assert {"--listen", "--fault.latency", "--url", "--name"} <= exporter  # simulate, webhooks
    assert {"--runbook-base", "--plans", "--sizes", "--upgrade-package"} <= _script_flags()
    assert not exporter & set(FOREIGN_FLAGS) - {"--help"}


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_every_flag_the_docs_name_exists(doc: Path) -> None:
    assert _flag_problems(doc) == []


def _link_problems(doc: Path) -> list[str]:
    problems = []
    for number, target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        where = f"{_relative(doc)}:{number}: {target}"
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.exists():
            problems.append(f"{where}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in file_anchors(path):
            problems.append(f"{where}: {_relative(path)} has no heading #{anchor}")
        elif anchor and path.suffix != ".md":
            problems.append(f"{where}: an anchor into a file that is not Markdown")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_every_link_and_anchor_leads_somewhere(doc: Path) -> None:
    assert _link_problems(doc) == []


def test_a_broken_link_or_path_or_flag_is_found(tmp_path: Path) -> None:
    """The checks above fail on what they are for: a page with a link to a missing page,
    an anchor no heading has, a missing repository file and an unknown flag."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A section\n\n"
        "[ok](#a-section), [bad](#no-section), [gone](missing.md), [web](https://x.test/#y)\n"
        "Run `realtimekit-exporter --web.listen_address :1` with `docs/no-such-page.md`.\n",
        encoding="utf-8",
    )
    (tmp_path / "docs").mkdir()
    assert _link_problems(page) == [
        f"{_relative(page)}:5: #no-section: {_relative(page)} has no heading #no-section",
        f"{_relative(page)}:5: missing.md: no such file",
    ]
    assert _flag_problems(page) == [
        f"{_relative(page)}:6: no command here takes --web.listen_address"
    ]
    assert _path_problems(page) == [f"{_relative(page)}:6: no docs/no-such-page.md in the tree"]


def _alert_rules() -> list[tuple[str, dict[str, Any]]]:
    """(where, rule) for every alert of alerts.yml and of the generated PrometheusRule."""
    found = []
    for name in ("deploy/prometheus/alerts.yml", "deploy/kubernetes/base/prometheusrule.yaml"):
        document: dict[str, Any] = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
        groups = document["spec"]["groups"] if "spec" in document else document["groups"]
        for group in groups:
            found += [(f"{name}: {r['alert']}", r) for r in group["rules"] if "alert" in r]
    return found


ALERT_RULES = _alert_rules()


@pytest.mark.parametrize(("where", "rule"), ALERT_RULES, ids=[w for w, _ in ALERT_RULES])
def test_every_runbook_is_a_section_of_the_alerts_doc(where: str, rule: dict[str, Any]) -> None:
    """Each alert's runbook is docs/alerts.md#<its own name in lower case>, a heading there."""
    path, _, anchor = rule["annotations"]["runbook"].partition("#")
    assert path == "docs/alerts.md", where
    assert anchor == rule["alert"].lower(), where
    assert anchor in file_anchors(REPO / path), f"{where}: docs/alerts.md has no #{anchor}"


def test_the_configuration_reference_names_every_key() -> None:
    """docs/configuration.md names every key the loader accepts, in code."""
    config_load = importlib.import_module("exporter.config.load")  # the module, not load()
    keys = (
        config_load._ROOT
        | config_load._API
        | config_load._CREDENTIALS
        | config_load._POLL
        | config_load._LIMITS
        | config_load._APP
        | config_load._LIVESTREAM
        | config_load._WEBHOOKS
    )
    text = prose((REPO / "docs" / "configuration.md").read_text(encoding="utf-8"))
    named = set(re.findall(r"`(?:[\w.]+\.|[\w.]+\[\]\.)?(\w+)`", text))
    assert sorted(keys - named) == []


def _yaml_block(path: Path, first_line: str) -> Any:
    """The YAML code block of ``path`` that starts with the comment ``first_line``."""
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (block,) = [b for b in blocks if b.startswith(first_line + "\n")]
    return block


def test_the_readme_config_and_scrape_snippet_work() -> None:
    """README.md's minimal config.yaml is valid (with the token in the environment), and its
    prometheus.yml scrapes the job the shipped alerts select and loads both rule files."""
    readme = REPO / "README.md"
    config = loads(
        _yaml_block(readme, "# config.yaml"), environ={"CLOUDFLARE_API_TOKEN": "a-token"}
    )
    assert config.apps and config.apps[0].discover
    prometheus = yaml.safe_load(_yaml_block(readme, "# prometheus.yml"))
    (job,) = prometheus["scrape_configs"]
    alerts = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    assert f'up{{job="{job["job_name"]}"}}' in alerts
    assert job["static_configs"][0]["targets"] == [f"localhost:{DEFAULT_PORT}"]
    names = sorted(Path(f).name for f in prometheus["rule_files"])
    assert names == ["alerts.yml", "recording.yml"]


def test_the_simulator_page_config_polls_the_simulator_as_started() -> None:
    """docs/simulator.md's sim.yaml is valid and points at what `simulate` serves by
    default: its address, its token, its account and app."""
    config = loads(_yaml_block(REPO / "docs" / "simulator.md", "# sim.yaml"), environ={})
    defaults = build_parser().parse_args(["simulate"])
    assert config.api.base_url == f"http://{SIMULATOR_LISTEN}/client/v4"
    assert config.api.token.reveal() == SIMULATOR_DEFAULT_TOKEN
    assert [(a.account_id, a.app_id) for a in config.apps] == [
        (defaults.account_id, defaults.app_id)
    ]
