"""The /metrics exposition, side by side with the plain prometheus_client path, in one run.

    .venv/bin/python -m bench.render                      # N = 1,000 and 10,000, 5 rounds
    .venv/bin/python -m bench.render --sizes 10000 --rounds 3 --out /tmp/render.json

On the same synthetic snapshots (one app, ``--live-share`` of the streams live, ids and
names as random as the API's), in rounds that interleave every case so that machine noise
hits them all, it times:

- **render**: the snapshot's families as prometheus_client's encoders write them
  (``generate_latest``, text and OpenMetrics, over a :class:`SnapshotCollector`) against
  :func:`exporter.render.render_part` (byte-identical; checked first);
- **new snapshot**: the first scrape of a variant after a new snapshot, through
  :class:`exporter.exposition.Exposition` (render, gzip if asked, the own part), once with
  prometheus_client's encoders as its ``render`` and once with ``render_part``: the CPU a
  poll cycle or a webhook push costs for that variant, and what delays a stop on /metrics;
- **scrape**: a scrape between snapshots (the own part rendered, joined to the cached
  snapshot part, gzip continued), against what a plain exporter does per scrape (the
  whole registry through the encoder, then ``gzip.compress``: ``bench/baseline.py``), and
  against gzip-compressing the whole body per scrape, the own metrics' render alone
  included;
- **memory**: the peak of Python allocations (tracemalloc) during each render;
- **switch interval**: the latency of scrapes of a cached body (a real aiohttp server of
  :func:`exporter.server.create_app`, a client in another process) while a thread renders
  without pause, with Python's switch interval (5 ms) and the one ``exporter.cli`` sets.

Times are medians over the rounds, of CPU time (``time.thread_time``: what the poll
cycle's CPU target counts, less disturbed by other processes than wall time) for the
in-process cases and of wall time for scrapes over HTTP. Exporter renders run inline here
(one thread), so nothing but the case itself is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import gzip
import json
import random
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from exporter import client, connections, hints, receiver
from exporter.collector import SnapshotCollector, families
from exporter.exposition import GZIP_LEVEL, Exposition
from exporter.model import EMPTY_SNAPSHOT, AppState, Livestream, Session, Snapshot, StreamState
from exporter.render import render_part
from exporter.server import create_app
from exporter.telemetry import ExporterMetrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    Encoder = Callable[[Collector], bytes]
    Render = Callable[[Encoder, Snapshot | None], bytes]

TEXT_ACCEPT: Final = "text/plain;version=0.0.4"
# What Prometheus sends (bench/run.py's PROMETHEUS_ACCEPT): OpenMetrics is negotiated.
PROMETHEUS_ACCEPT: Final = (
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
)
# (name, Accept, gzip): the body a plain curl gets, and the one Prometheus gets.
VARIANTS: Final = (("text", TEXT_ACCEPT, False), ("om+gz", PROMETHEUS_ACCEPT, True))
FORMATS: Final = (("text", TEXT_ACCEPT), ("om", PROMETHEUS_ACCEPT))
DEFAULT_SWITCH: Final = 0.005  # Python's own sys.getswitchinterval()
CLI_SWITCH: Final = 0.001  # exporter.cli.SWITCH_INTERVAL
NOW: Final = 1_767_000_000.0
STATUSES: Final = ("IDLE", "OFFLINE", "ERRORED", "INVOKED")
ACCOUNT, APP = "bench-account", "bench-app"  # bench/run.py's
NAMES: Final = ("Main stage", "Backstage", "Q&A", "Keynote", "Bühne", "Town hall")

# A scraper in a process of its own (it must not share the GIL it measures): ``count``
# GETs on one keep-alive connection, each timed from sending to the whole body read.
CLIENT: Final = r"""
import http.client, json, sys, time
port, accept, encoding, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=120)
times = []
for _ in range(count):
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Accept": accept, "Accept-Encoding": encoding})
    response = conn.getresponse()
    body = response.read()
    times.append(time.perf_counter() - started)
    if response.status != 200 or not body:
        sys.exit(f"bad response: {response.status}")
print(json.dumps(times))
"""


# -- inputs ----------------------------------------------------------------------------
def snapshot(streams: int, *, live_share: float, seed: int) -> Snapshot:
    """One app of ``streams`` livestreams, ``live_share`` of them live, shaped as bench.run's
    simulator makes them (its account and app, UUIDs for ids, half of them with a meeting),
    with varied counters and times, so that gzip meets real entropy."""
    rng = random.Random(seed)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    live = set(rng.sample(range(streams), round(streams * live_share)))
    states = []
    for i in range(streams):
        is_live = i in live
        session = None
        if is_live:
            started = NOW - rng.uniform(60, 3600)
            ingest = NOW - started - rng.uniform(0, 5)
            session = Session(uid(), started, None, None, ingest, ingest * rng.uniform(0, 400))
        elif rng.random() < 0.4:
            started = NOW - rng.uniform(3600, 86400)
            stopped = started + rng.uniform(600, 3600)
            error = "ingest timed out" if rng.random() < 0.05 else None
            session = Session(
                uid(), started, stopped, error, stopped - started, rng.uniform(0, 9e5)
            )
        updated = NOW - rng.uniform(0, 30)
        states.append(
            StreamState(
                Livestream(
                    uid(),
                    "LIVE" if is_live else rng.choice(STATUSES),
                    name=f"{rng.choice(NAMES)} {i + 1}" if rng.random() < 0.9 else None,
                    meeting_id=uid() if rng.random() < 0.5 else None,
                    disabled=rng.random() < 0.02,
                ),
                live=is_live,
                session=session,
                last_update=updated,
                expected_live=True if rng.random() < 0.01 else None,
                counted_at=updated - rng.uniform(0, 200) if is_live else None,
            )
        )
    states.sort(key=lambda state: state.id)
    app = AppState(ACCOUNT, APP, True, NOW, tuple(states))
    return Snapshot(apps=(app,), taken_at=NOW, cycles=10, livestream_limit=20_000)


def own_registry() -> CollectorRegistry:
    """The exporter's own metrics as exporter.server.Exporter registers them (webhooks on),
    with a few series set as a running process has them."""
    own = CollectorRegistry(auto_describe=False)
    metrics = ExporterMetrics(
        registry=own,
        endpoints=client.ENDPOINTS,
        reasons=client.REASONS,
        close_reasons=connections.REASONS,
    )
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=own)
    metrics.config_loaded(ok=True, at=NOW)
    metrics.enable_webhooks(
        events=(receiver.STATUS_UPDATE,),
        unverified=[
            (receiver.UNVERIFIED, o) for o in ("bad_signature", "too_large", "unavailable")
        ],
        outcomes=receiver.VERIFIED_OUTCOMES,
        results=hints.RESULTS,
    )
    metrics.track_app("acc", "app")
    for endpoint in client.ENDPOINTS:
        metrics.request(endpoint, "200", 0.12)
    metrics.rate_limit_remaining(1100)
    metrics.watch_budget(lambda: 900, lambda: (1200, 300.0))
    metrics.cycle(0.4)
    return own


class Families:
    """A collector of one snapshot's families, as prometheus_client gets them."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self._snapshot = snapshot or EMPTY_SNAPSHOT

    def collect(self) -> Iterable[Metric]:
        return families(self._snapshot)


def library_render(encoder: Encoder, snapshot: Snapshot | None) -> bytes:
    """What Exposition would render without exporter.render: the encoder's own output."""
    return encoder(Families(snapshot))


class Inline(concurrent.futures.Executor):
    """Runs each job at once on the calling thread, so its CPU time is the caller's."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the awaiting scrape, as a real executor does
            future.set_exception(exc)
        return future


# -- measuring -------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One timed thing; ``run`` does it once, and returns its CPU seconds."""

    key: tuple[str, ...]
    run: Callable[[], Awaitable[float]]
    times: list[float] = dataclasses.field(default_factory=list)


def cpu(fn: Callable[[], object]) -> Callable[[], Awaitable[float]]:
    async def timed() -> float:
        started = time.thread_time()
        fn()
        return time.thread_time() - started

    return timed


def encoder_for(accept: str) -> Encoder:
    encoder: Encoder = choose_encoder(accept)[0]
    return encoder


def baseline_scrape(registry: CollectorRegistry, accept: str, gzipped: bool) -> bytes:
    """bench/baseline.py's /metrics: the whole registry per scrape, gzip at the exporter's
    level."""
    body = encoder_for(accept)(registry)
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if gzipped else body


def cases_for(size: int, snap: Snapshot, own: CollectorRegistry) -> list[Case]:
    whole = CollectorRegistry(auto_describe=False)
    whole.register(SnapshotCollector(lambda: snap))
    whole.register(own)
    n = str(size)
    cases: list[Case] = []
    for fmt, accept in FORMATS:
        encoder = encoder_for(accept)
        if render_part(encoder, snap) != library_render(encoder, snap):
            raise SystemExit(f"render_part differs from prometheus_client at N={size}, {fmt}")
        cases += [
            Case((n, "render", fmt, "library"), cpu(partial(library_render, encoder, snap))),
            Case((n, "render", fmt, "render.py"), cpu(partial(render_part, encoder, snap))),
            Case((n, "own", fmt, "encoder"), cpu(partial(encoder, own))),
        ]
    for name, accept, gzipped in VARIANTS:
        for label, render in (("library", library_render), ("render.py", render_part)):
            first = first_scrape(snap, own, render, accept, gzipped)
            cases.append(Case((n, "new snapshot", name, label), first))
        baseline = cpu(partial(baseline_scrape, whole, accept, gzipped))
        cases += [
            Case((n, "scrape", name, "cached"), later_scrape(snap, own, accept, gzipped)),
            Case((n, "scrape", name, "baseline"), baseline),
        ]
        if gzipped:
            whole_gzip = whole_gzip_scrape(snap, own, accept)
            cases.append(Case((n, "scrape", name, "gzip whole body"), whole_gzip))
    return cases


def first_scrape(
    snap: Snapshot, own: CollectorRegistry, render: Render, accept: str, gzipped: bool
) -> Callable[[], Awaitable[float]]:
    """The first scrape of a variant after a new snapshot: all it renders (the snapshot part,
    its gzip start, the own part) on this thread."""
    encoder = encoder_for(accept)

    async def timed() -> float:
        exposition = Exposition(own, lambda: snap, render=render, executor=Inline())
        started = time.thread_time()
        await exposition.chunks(encoder, gzipped=gzipped)
        spent = time.thread_time() - started
        exposition.close()
        return spent

    return timed


def later_scrape(
    snap: Snapshot, own: CollectorRegistry, accept: str, gzipped: bool
) -> Callable[[], Awaitable[float]]:
    """A scrape of a variant whose snapshot part is cached."""
    encoder = encoder_for(accept)
    exposition = Exposition(own, lambda: snap, executor=Inline())

    async def timed() -> float:
        await exposition.chunks(encoder, gzipped=gzipped)  # cached from the first round on
        started = time.thread_time()
        await exposition.chunks(encoder, gzipped=gzipped)
        return time.thread_time() - started

    return timed


def whole_gzip_scrape(
    snap: Snapshot, own: CollectorRegistry, accept: str
) -> Callable[[], Awaitable[float]]:
    """The alternative to continuing a cached gzip stream: the plain body (cached snapshot
    part and own part) gzip-compressed whole on every scrape."""
    encoder = encoder_for(accept)
    exposition = Exposition(own, lambda: snap, executor=Inline())

    async def timed() -> float:
        await exposition.chunks(encoder, gzipped=False)
        started = time.thread_time()
        chunks = await exposition.chunks(encoder, gzipped=False)
        gzip.compress(b"".join(chunks), compresslevel=GZIP_LEVEL, mtime=0)
        return time.thread_time() - started

    return timed


def peak_mb(fn: Callable[[], object]) -> float:
    """The peak of Python allocations while ``fn`` runs, in MB, its result included."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return (tracemalloc.get_traced_memory()[1] - before) / 1e6
    finally:
        tracemalloc.stop()


# -- the switch interval ---------------------------------------------------------------
class Busy:
    """A thread that renders without pause until stopped, as the exposition's render thread
    does after a new snapshot (there, for a tenth of a second to a second)."""

    def __init__(self, render: Callable[[], object] | None) -> None:
        self._render = render
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="busy", daemon=True)

    def __enter__(self) -> Busy:
        if self._render is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._render is not None:
            self._thread.join()

    def _work(self) -> None:
        assert self._render is not None
        while not self._stop.is_set():
            self._render()


async def switch_cases(
    size: int, snap: Snapshot, own: CollectorRegistry, *, rounds: int, requests: int
) -> dict[tuple[str, ...], list[float]]:
    """Scrape latency (wall seconds) of cached bodies while a thread renders, by switch
    interval, background render and variant."""
    exposition = Exposition(own, lambda: snap)
    app = create_app(ready=lambda: True, exposition=exposition)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    other = dataclasses.replace(snap, cycles=snap.cycles + 1)
    prometheus = encoder_for(PROMETHEUS_ACCEPT)
    backgrounds: dict[str, Callable[[], object] | None] = {
        "idle": None,
        "render.py": partial(render_part, prometheus, other),
        "library": partial(library_render, prometheus, other),
    }
    out: dict[tuple[str, ...], list[float]] = {}
    previous = sys.getswitchinterval()
    try:
        for _, accept, gzipped in VARIANTS:  # cache every variant first
            await exposition.body(encoder_for(accept), gzipped=gzipped)
        for _ in range(rounds):
            for switch in (DEFAULT_SWITCH, CLI_SWITCH):
                sys.setswitchinterval(switch)
                for background, render in backgrounds.items():
                    with Busy(render):
                        for name, accept, gzipped in VARIANTS:
                            encoding = "gzip" if gzipped else "identity"
                            times = await scrapes(port, accept, encoding, requests)
                            key = (str(size), f"{switch * 1000:g} ms", background, name)
                            out.setdefault(key, []).extend(times)
    finally:
        sys.setswitchinterval(previous)
        await runner.cleanup()
        exposition.close()
    return out


async def scrapes(port: int, accept: str, encoding: str, count: int) -> list[float]:
    """``count`` scrapes by a client in a process of its own; their wall times."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        str(port),
        accept,
        encoding,
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"the scraper failed ({process.returncode})")
    times: list[float] = json.loads(stdout)
    return times


# -- report ----------------------------------------------------------------------------
def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:.1f}x" if fast > 0 else "-"


def row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def report(
    sizes: Sequence[int],
    medians: dict[tuple[str, ...], float],
    memory: dict[tuple[str, ...], float],
    switch: dict[tuple[str, ...], list[float]],
) -> str:
    lines = ["CPU ms per call, median over the rounds", ""]
    lines += [row("N", "what", "variant", "prometheus_client", "render.py", "ratio")]
    lines += ["|---:|---|---|---:|---:|---:|"]
    for n in map(str, sizes):
        for fmt, _ in FORMATS:
            lib, own = medians[n, "render", fmt, "library"], medians[n, "render", fmt, "render.py"]
            lines.append(row(n, "render the snapshot part", fmt, ms(lib), ms(own), ratio(lib, own)))
        for name, _, _ in VARIANTS:
            lib = medians[n, "new snapshot", name, "library"]
            own = medians[n, "new snapshot", name, "render.py"]
            what = "first scrape after a new snapshot"
            lines.append(row(n, what, name, ms(lib), ms(own), ratio(lib, own)))
    lines += ["", row("N", "per scrape", "baseline", "exporter", "ratio", "gzip whole body")]
    lines += ["|---:|---|---:|---:|---:|---:|"]
    for n in map(str, sizes):
        for name, _, gzipped in VARIANTS:
            base = medians[n, "scrape", name, "baseline"]
            cached = medians[n, "scrape", name, "cached"]
            whole = ms(medians[n, "scrape", name, "gzip whole body"]) if gzipped else "-"
            lines.append(row(n, name, ms(base), ms(cached), ratio(base, cached), whole))
        text, om = medians[n, "own", "text", "encoder"], medians[n, "own", "om", "encoder"]
        lines.append(row(n, "own metrics alone, text / om", "", f"{ms(text)} / {ms(om)}", "", ""))
    if memory:
        lines += ["", "Peak Python allocations during one render, MB (tracemalloc, body included)"]
        lines += ["", row("N", "format", "prometheus_client", "render.py"), "|---:|---|---:|---:|"]
        for n in map(str, sizes):
            for fmt, _ in FORMATS:
                lib, own = memory[n, fmt, "library"], memory[n, fmt, "render.py"]
                lines.append(row(n, fmt, f"{lib:.0f}", f"{own:.0f}"))
    if switch:
        lines += [
            "",
            "Scrapes of a cached body over HTTP while a thread renders: wall ms p50 / max",
        ]
        lines += ["", row("N", "switch interval", "background", *(v[0] for v in VARIANTS))]
        lines += ["|---:|---|---|" + "---:|" * len(VARIANTS)]
        for key in sorted({key[:3] for key in switch}, key=lambda k: (int(k[0]), k[1], k[2])):
            times = [switch[(*key, v[0])] for v in VARIANTS]
            lines.append(row(*key, *(f"{ms(statistics.median(t))} / {ms(max(t))}" for t in times)))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    own = own_registry()
    snaps = {n: snapshot(n, live_share=args.live_share, seed=args.seed) for n in args.sizes}
    cases = [case for n in args.sizes for case in cases_for(n, snaps[n], own)]
    for round_ in range(args.rounds):
        # Every case once per round, in an order that alternates, so noise hits them all.
        for case in cases if round_ % 2 == 0 else reversed(cases):
            case.times.append(await case.run())
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    medians = {case.key: statistics.median(case.times) for case in cases}
    memory: dict[tuple[str, ...], float] = {}
    if not args.no_memory:
        for n in args.sizes:
            for fmt, accept in FORMATS:
                encoder = encoder_for(accept)
                for label, render in (("library", library_render), ("render.py", render_part)):
                    memory[str(n), fmt, label] = peak_mb(partial(render, encoder, snaps[n]))
    switch: dict[tuple[str, ...], list[float]] = {}
    if not args.no_switch:
        for n in args.sizes:
            switch |= await switch_cases(
                n, snaps[n], own, rounds=args.rounds, requests=args.requests
            )
    print(report(args.sizes, medians, memory, switch))
    return {
        "args": vars(args),
        "cpu_s": [{"key": list(c.key), "times": c.times} for c in cases],
        "memory_mb": [{"key": list(k), "mb": v} for k, v in memory.items()],
        "switch_s": [{"key": list(k), "times": v} for k, v in switch.items()],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000]
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case (5)")
    parser.add_argument("--live-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--requests", type=int, default=10, help="scrapes per switch-interval case and round (10)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--no-switch", action="store_true", help="skip the HTTP scrapes")
    parser.add_argument("--out", help="write every sample as JSON here")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
