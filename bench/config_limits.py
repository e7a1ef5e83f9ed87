"""How long the configuration takes to load at the bounds of exporter.config.

Writes YAML files at MAX_CONFIG_FILE_BYTES and MAX_YAML_NODES (and the default
limits.max_livestreams of configured livestreams), times ``exporter.config.load`` on each
(read, parse, validate; the best and worst of ``--runs``) and prints one line per file::

    .venv/bin/python -m bench.config_limits [--runs 3]

Files refused by a bound are timed too: their time is what a bad file costs. The loader
uses libyaml's parser when PyYAML has it (``yaml.__with_libyaml__``, printed first).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from exporter import config

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

HEAD = "api:\n  token: t\nlimits:\n  max_livestreams: {limit}\napps:\n  - account_id: acc\n"
HEAD += "    app_id: app\n    livestreams:\n"


def streams(count: int, id_length: int, *, expect_live: bool = True) -> str:
    """A config of one app listing ``count`` livestreams with ids of ``id_length``."""
    rows = [HEAD.format(limit=max(count, 1))]
    for i in range(count):
        rows.append(f"      - id: {f'{i:08d}-'.ljust(id_length, 'x')}\n")
        if expect_live:
            rows.append("        expect_live: true\n")
    return "".join(rows)


def cases() -> Iterator[tuple[str, str]]:
    nodes, size = config.MAX_YAML_NODES, config.MAX_CONFIG_FILE_BYTES
    default = config.DEFAULT_MAX_LIVESTREAMS
    longest = config.MAX_LIVESTREAM_ID_LENGTH
    yield f"{default} livestreams, 36-character ids", streams(default, 36)
    yield f"{default} livestreams, {longest}-character ids", streams(default, longest)
    # 5 nodes a livestream (a mapping, two keys, two values), the app and the top: 20 more.
    yield "livestreams up to the node bound", streams((nodes - 20) // 5, 36)
    yield "a flow list just over the node bound", "x: [" + ",".join(["a"] * nodes) + "]\n"
    yield "short pairs just over the node bound", "".join(f"k{i}: v\n" for i in range(nodes))
    yield "one scalar at the byte bound", "x: " + "a" * (size - 5) + "\n"
    aliased = ["anchor: &app", "  account_id: acc", "  app_id: app", "  livestreams:"]
    aliased += [f"    - id: s{i}" for i in range(3000)] + ["apps:"] + ["  - *app"] * 3000
    yield "3000 aliases of an app of 3000 livestreams", "\n".join(aliased) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="loads per file (3)")
    args = parser.parse_args(argv)
    print(f"libyaml: {yaml.__with_libyaml__}")
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "config.yaml"
        for name, text in cases():
            path.write_text(text, encoding="utf-8")
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                try:
                    config.load(path, environ={})
                    outcome = "loaded"
                except config.ConfigError as exc:
                    outcome = "; ".join(exc.problems)[:70]
                times.append(time.perf_counter() - started)
            print(
                f"{name}: {len(text) / 1e6:.1f} MB, {min(times):.2f}-{max(times):.2f} s: {outcome}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
