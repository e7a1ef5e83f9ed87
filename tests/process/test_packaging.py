"""The built wheel carries every module of the package and the licence (an editable install
would not tell), and the dependency lock in requirements/ matches pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from typing import TYPE_CHECKING, Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests import REPO

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(180)
def test_wheel_contains_every_module_and_the_entry_point(tmp_path: Path) -> None:
    # Built from a fresh copy: setuptools reuses a build/ folder left in the source tree.
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "exporter", src / "exporter", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path / "dist"
    subprocess.run(  # noqa: S603 (fixed arguments)
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        timeout=170,
    )
    (wheel,) = out.glob("realtimekit_exporter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "exporter").rglob("*.py")}
    assert sources, "no sources found"
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert not any(n.startswith("tests/") for n in names)
    # The licence text pyproject.toml declares (license-files), in the wheel's metadata.
    (licence,) = (n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert zipfile.ZipFile(wheel).read(licence) == (REPO / "LICENSE").read_bytes()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "realtimekit-exporter = exporter.__main__:main" in text


# -- the dependency lock (requirements/, written by scripts/lock) -------------------------
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """Each package in requirements/LOCK.txt: its version and how many hashes it has."""
    found: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in (REPO / "requirements" / f"{lock}.txt").read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            assert name not in found, f"{name} is pinned twice in {lock}.txt"
            found[name] = (Version(match[2]), 0)
        elif line.strip().startswith("--hash=sha256:"):
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def project() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("test", ("build", "runtime", "test")), ("runtime", ("build", "runtime"))],
)
def test_the_lock_has_what_pyproject_asks_for(lock: str, groups: tuple[str, ...]) -> None:
    """Every dependency, test extra and build requirement is locked at a version its bounds
    allow, with hashes; a change to pyproject.toml without `scripts/lock` fails here."""
    meta = project()
    wanted = {
        "build": meta["build-system"]["requires"],
        "runtime": meta["project"]["dependencies"],
        "test": meta["project"]["optional-dependencies"]["test"],
    }
    locked = pins(lock)
    for text in (req for group in groups for req in wanted[group]):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{name} is not in requirements/{lock}.txt: run scripts/lock"
        version, hashes = locked[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock}.txt has {name} {version}, pyproject.toml asks for "
            f"{req.specifier}: run scripts/lock"
        )
        assert hashes > 0, f"{name} has no hash in requirements/{lock}.txt"


def test_the_image_gets_the_versions_ci_tests() -> None:
    """runtime.txt (the Dockerfile's) is test.txt's runtime part, at the same versions."""
    test, runtime = pins("test"), pins("runtime")
    assert runtime.keys() <= test.keys(), sorted(runtime.keys() - test.keys())
    assert {n: v for n, (v, _) in runtime.items()} == {n: test[n][0] for n in runtime}
    assert not {"pytest", "mypy", "ruff"} & runtime.keys()
