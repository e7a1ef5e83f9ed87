"""Benchmark: two tokens in one exporter, each kept to its own budget, neither slowed by
the other.

One process runs the simulator (two accounts, each an app of ``--livestreams`` streams,
``--live`` of them live, each account readable by its own token only, the API's
per-token limit on) and the exporter (``Exporter``, as the daemon builds it) with the
credentials ``default`` for account A and ``b`` for account B, each with its own
``rate_limit``. Three phases of ``--seconds`` each, on the same world:

1. ``both healthy``: streams of account A are stopped at random moments; the stop
   latency is how long until the exporter's snapshot shows each one not live;
2. ``B rejected``: the API refuses token B (401); A's stops are measured again;
3. ``B throttled``: the API blocks token B for the whole phase (HTTP 429, as when
   something else spends it; last, as the pause outlasts the phase); A's stops again.

Reported per phase: A's stop latency (p50, p99, max), whether A's and B's apps were up
at its end, and per token the busiest window of requests the simulator counted against
the budget. The ratios of A's latencies to phase 1's, measured in the same run, are the
isolation: 1.0 means B's trouble cost A nothing.

    .venv/bin/python -m bench.credentials [--livestreams 500 --live 50 --seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from exporter import config as config_module
from exporter.server import Exporter
from exporter.simulator import RateLimiter, Simulator, World
from exporter.simulator.faults import Faults
from exporter.simulator.tokens import SimToken

if TYPE_CHECKING:
    from collections.abc import Sequence

TOKEN_A: Final = "bench-token-a-5c0e9d2f7b1a43c8"  # noqa: S105  # the simulator's
TOKEN_B: Final = "bench-token-b-8f3a6e1d0c9b47d2"  # noqa: S105
ACCOUNTS: Final = (("acc-a", "app-a", "default"), ("acc-b", "app-b", "b"))


def world(livestreams: int, live: int, seed: int) -> World:
    w = World(seed=seed)
    for account, app, _ in ACCOUNTS:
        w.populate(account, app, livestreams, live=live)
    return w


def config_text(base_url: str, args: argparse.Namespace) -> str:
    return f"""
api:
  base_url: {base_url}
  token: {TOKEN_A}
  rate_limit: {args.rate_a}
  timeout: 5s
poll:
  interval: {args.interval}s
  analytics_interval: 1m
apps:
  - account_id: acc-a
    app_id: app-a
    discover: true
  - account_id: acc-b
    app_id: app-b
    discover: true
    credentials: b
credentials:
  b:
    token: {TOKEN_B}
    rate_limit: {args.rate_b}
"""


def live_ids(exporter: Exporter, account: str, app: str) -> list[str]:
    state = exporter.poller.snapshot.app(account, app)
    return [] if state is None else [s.id for s in state.streams if s.live]


def shown_live(exporter: Exporter, sid: str) -> bool:
    state = exporter.poller.snapshot.app("acc-a", "app-a")
    stream = state.stream(sid) if state is not None else None
    return stream is not None and stream.live


async def phase(
    sim: Simulator, exporter: Exporter, seconds: float, rng: random.Random
) -> list[float]:
    """Stop streams of A at random moments for ``seconds``; each one's stop latency."""
    latencies: list[float] = []
    pending: dict[str, float] = {}
    end = time.monotonic() + seconds
    next_stop = time.monotonic() + rng.uniform(0.5, 2.0)
    while time.monotonic() < end or pending:
        now = time.monotonic()
        if now >= next_stop and now < end:
            candidates = [
                s
                for s in live_ids(exporter, "acc-a", "app-a")
                if s not in pending and sim.world.find(s).session is not None
            ]
            if candidates:
                sid = rng.choice(candidates)
                sim.world.stop(sid)
                pending[sid] = now
            next_stop = now + rng.uniform(0.5, 2.0)
        for sid, at in list(pending.items()):
            if not shown_live(exporter, sid):
                latencies.append(now - at)
                del pending[sid]
        if now > end + 60:
            break  # a stop never seen: reported as missing
        await asyncio.sleep(0.02)
    return latencies


def summary(latencies: Sequence[float]) -> dict[str, Any]:
    if not latencies:
        return {"stops": 0}
    ordered = sorted(latencies)
    return {
        "stops": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def busiest(sim: Simulator) -> dict[str, int]:
    """Per token name, the most requests it sent in any window of the API's limit."""
    return {name: traffic.busiest for name, traffic in sim.state.token_traffic.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    requests, _, window = args.api_limit.partition("/")
    limiter = RateLimiter(int(requests), config_module.parse_duration(window))
    sim = Simulator(
        world(args.livestreams, args.live, args.seed),
        token=TOKEN_A,
        tokens=(SimToken("b", TOKEN_B, frozenset({"acc-b"})),),
        limiter=limiter,
        ip_limiter="off",
    )
    phases: dict[str, Any] = {}
    async with sim:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(config_text(sim.base_url, args), encoding="utf-8")
            cfg = config_module.load(str(path))
            async with Exporter(cfg, process_metrics=False) as exporter:
                stop = asyncio.Event()
                polling = asyncio.create_task(exporter.poller.run(stop))
                try:
                    async with asyncio.timeout(120):
                        while not exporter.poller.ready:  # noqa: ASYNC110  # no event to wait on
                            await asyncio.sleep(0.05)
                    await asyncio.sleep(args.interval * 2)
                    # Throttled last: the API's pause of token B outlasts its phase.
                    for name, fault in (
                        ("both healthy", None),
                        ("B rejected", "reject"),
                        ("B throttled", "throttle"),
                    ):
                        sim.state.faults = Faults()
                        if fault == "throttle":
                            sim.state.limiter.block(TOKEN_B, sim.world.now(), 10 * args.seconds)
                        elif fault == "reject":
                            sim.state.faults = Faults(rejected_tokens=("b",))
                        latencies = await phase(sim, exporter, args.seconds, rng)
                        snapshot = exporter.poller.snapshot
                        phases[name] = {
                            **summary(latencies),
                            "a_up": all(a.up for a in snapshot.apps if a.app_id == "app-a"),
                            "b_up": all(a.up for a in snapshot.apps if a.app_id == "app-b"),
                        }
                finally:
                    stop.set()
                    await asyncio.wait_for(polling, 10)
            counts = {
                name: dict(sorted((str(k), v) for k, v in c.items()))
                for name, c in sim.state.token_requests.items()
            }
            return {
                "args": vars(args),
                "phases": phases,
                "busiest_window": busiest(sim),
                "requests_by_token": counts,
            }


def report(result: dict[str, Any]) -> str:
    phases = result["phases"]
    base = phases.get("both healthy", {})
    lines = [
        "| phase | A's stops | p50 s | p99 s | max s | p50 / healthy | p99 / healthy "
        "| A up | B up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in phases.items():
        if not p.get("stops"):
            lines.append(f"| {name} | 0 | | | | | | {p['a_up']} | {p['b_up']} |")
            continue
        r50 = p["p50"] / base["p50"] if base.get("p50") else float("nan")
        r99 = p["p99"] / base["p99"] if base.get("p99") else float("nan")
        lines.append(
            f"| {name} | {p['stops']} | {p['p50']:.2f} | {p['p99']:.2f} | {p['max']:.2f} | "
            f"{r50:.2f} | {r99:.2f} | {p['a_up']} | {p['b_up']} |"
        )
    args = result["args"]
    lines.append("")
    lines.append(
        f"Busiest window of the API's limit ({args['api_limit']}) per token: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["busiest_window"].items()))
        + f" (budgets: default {args['rate_a']}, b {args['rate_b']})"
    )
    lines.append("Requests by token and status: " + json.dumps(result["requests_by_token"]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.credentials", description=__doc__)
    parser.add_argument("--livestreams", type=int, default=500)
    parser.add_argument("--live", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=2.0, help="poll.interval, seconds")
    parser.add_argument("--rate-a", default="600/1m", help="the default credentials' budget")
    parser.add_argument("--rate-b", default="300/1m", help="credentials b's budget")
    parser.add_argument("--api-limit", default="660/1m", help="the API's limit per token")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
