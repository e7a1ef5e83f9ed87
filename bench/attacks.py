"""The attacks of tests/process/test_attacks.py, measured, on each Python the project
supports.

Runs the attack tests once per interpreter with ``REALTIMEKIT_ATTACK_REPORT`` set, so each
test appends what it measured (latencies, CPU seconds, resident memory with and without
stalled clients, stop times) beside its pass or fail, and prints one Markdown table::

    .venv/bin/python -m bench.attacks [--python .venv/bin/python --python .venv-3.12/bin/python]

Each interpreter needs the project and its test tools installed (``pip install -e
'.[test]'``). Ratios compare two measurements of the same run (e.g. memory with and
without 60 stalled clients), so the shared machine's noise hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parent.parent


def measure(python: str, report: Path) -> int:
    """Run the attack tests under ``python``; pytest's exit code."""
    env_report = {"REALTIMEKIT_ATTACK_REPORT": str(report)}
    tests = "tests/process/test_attacks.py"
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests]
    return subprocess.run(  # noqa: S603 (the interpreters given on the command line)
        command, cwd=ROOT, env={**os.environ, **env_report}, check=False
    ).returncode


def table(entries: Sequence[dict[str, Any]]) -> str:
    rows = ["| test | python | measured |", "|---|---|---|"]
    for entry in entries:
        values = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("test", "python"))
        rows.append(f"| {entry['test']} | {entry['python']} | {values} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python",
        action="append",
        help="an interpreter to run them under (repeatable; default: this one)",
    )
    args = parser.parse_args(argv)
    failed = 0
    entries: list[dict[str, Any]] = []
    for python in args.python or [sys.executable]:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.jsonl"
            failed |= measure(python, report)
            if report.exists():
                lines = report.read_text(encoding="utf-8").splitlines()
                entries += [json.loads(line) for line in lines]
    print(table(entries))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
