"""The built wheel carries every module of the package (an editable install would not tell)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from typing import TYPE_CHECKING

import pytest

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
    for name in ("pyproject.toml", "README.md"):
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
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "realtimekit-exporter = exporter.__main__:main" in text
