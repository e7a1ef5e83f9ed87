"""Benchmark: the exporter polling the simulator, against a render-per-scrape baseline.

For each size N it starts, as separate processes on loopback, the simulator with N
livestreams (L of them live), the exporter polling it, and the baseline
(``bench/baseline.py``: the same snapshot rendered whole on every scrape). Then:

1. warm-up: a few poll cycles;
2. steady: K poll cycles with one scraper that scrapes once per cycle like Prometheus
   (OpenMetrics, gzip): API requests per cycle next to the lower bound, cycle wall time,
   exporter CPU seconds per cycle;
3. latency: per variant (text, OpenMetrics, each plain and gzip) and server (exporter,
   baseline), 4 concurrent scrapers, rounds interleaved so that noise hits both: p50/p99.

Prints a Markdown table and writes JSON. See bench/README.md for what the columns mean.

    .venv/bin/python -m bench.run [--sizes 100,1000,10000] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import gzip
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import yaml

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

ROOT: Final = Path(__file__).resolve().parent.parent
BASELINE: Final = Path(__file__).resolve().parent / "baseline.py"
LOOPBACK: Final = "127.0.0.1"
ACCOUNT: Final = "bench-account"
APP: Final = "bench-app"
TOKEN: Final = "bench-token"  # noqa: S105 (the simulator's token, guards nothing)
MAX_PER_PAGE: Final = 100
SCRAPERS: Final = 4
# What Prometheus sends (2.x/3.x with OpenMetrics negotiation on).
PROMETHEUS_ACCEPT: Final = (
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
)
TEXT_ACCEPT: Final = "text/plain;version=0.0.4"


@dataclass(frozen=True)
class Variant:
    name: str
    accept: str
    gzip: bool

    @property
    def openmetrics(self) -> bool:
        return self.accept.startswith("application/openmetrics-text")

    def headers(self) -> dict[str, str]:
        return {"Accept": self.accept, "Accept-Encoding": "gzip" if self.gzip else "identity"}


VARIANTS: Final = (
    Variant("text", TEXT_ACCEPT, gzip=False),
    Variant("om", "application/openmetrics-text;version=1.0.0", gzip=False),
    Variant("text+gz", TEXT_ACCEPT, gzip=True),
    Variant("om+gz", PROMETHEUS_ACCEPT, gzip=True),  # what Prometheus asks for
)
PROMETHEUS: Final = VARIANTS[-1]

# What the exporter is built to meet (bench/README.md, "JSON"), checked at N = 10,000 (L = 500).
TARGET_N: Final = 10_000
TARGET_REQUEST_RATIO: Final = 1.05
TARGET_P99_SPEEDUP: Final = 20.0
TARGET_RSS_MB: Final = 250.0
TARGET_CPU_S: Final = 1.5

_API_REQUESTS = re.compile(
    rb'^realtimekit_exporter_api_requests_total\{credentials="[^"]*",'
    rb'api_endpoint="([^"]*)",code="([^"]*)"\} (\S+)',
    re.M,
)
# One token in the benchmark: its credentials are "default".
_POLL_SUM = re.compile(
    rb'^realtimekit_exporter_poll_duration_seconds_sum\{credentials="default"\} (\S+)', re.M
)
_POLL_COUNT = re.compile(
    rb'^realtimekit_exporter_poll_duration_seconds_count\{credentials="default"\} (\S+)', re.M
)
_LIVE_PREFIX: Final = b"realtimekit_livestream_live{"
_STREAM_ID = re.compile(rb'livestream_id="((?:[^"\\]|\\.)*)"')


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark cannot go on at this size (a process died, a wait timed out)."""


# -- processes ------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover (runs in the child)
    """Linux: the child gets SIGTERM if the benchmark dies without cleaning up."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A process of its own group, its output in a log file; :meth:`stop` ends it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        *,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603 (our interpreter, our arguments)
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env() if env is None else env,
                cwd=cwd,
                start_new_session=True,  # its own process group: Ctrl-C goes to us only
                preexec_fn=_die_with_parent,
            )
        _LIVE_CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check(self) -> None:
        if not self.running():
            raise BenchError(
                f"{self.name} exited with {self.popen.returncode}; last lines:\n{self.tail()}"
            )

    async def wait_log(self, pattern: str, within: float) -> re.Match[str]:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            match = compiled.search(self.log())
            if match:
                return match
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {pattern!r} in {within:g}s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to its group, SIGKILL after ``grace`` seconds; reaped either way."""
        if self in _LIVE_CHILDREN:
            _LIVE_CHILDREN.remove(self)
        if self.popen.poll() is not None:
            return
        # Not reaped yet, so its process group id is still its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=grace)

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads) so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status_mb(self, key: str) -> float | None:
        """A ``kB`` line of /proc/PID/status (VmHWM: peak RSS, VmRSS: now) in MB."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(match[1]) / 1024 if match else None


_LIVE_CHILDREN: list[Child] = []


def stop_all() -> None:
    for child in reversed(list(_LIVE_CHILDREN)):
        child.stop()


# -- scraping and parsing -------------------------------------------------------------
@dataclass
class Scrape:
    """What the steady phase reads from one /metrics body of the exporter."""

    at: float
    requests: dict[tuple[str, str], float]
    poll_sum: float
    poll_count: float
    live: frozenset[str]
    streams: int
    cpu: float = 0.0
    simulator: dict[str, Any] = field(default_factory=dict)


def parse_exposition(body: bytes, at: float) -> Scrape:
    requests = {(m[1].decode(), m[2].decode()): float(m[3]) for m in _API_REQUESTS.finditer(body)}
    poll_sum = _POLL_SUM.search(body)
    poll_count = _POLL_COUNT.search(body)
    if poll_sum is None or poll_count is None:
        raise BenchError("no realtimekit_exporter_poll_duration_seconds in /metrics")
    live: set[str] = set()
    streams = 0
    for line in body.split(b"\n"):
        if line.startswith(_LIVE_PREFIX):
            streams += 1
            if not line.endswith((b" 0.0", b" 0")):
                match = _STREAM_ID.search(line)
                if match:
                    live.add(match[1].decode())
    return Scrape(
        at=at,
        requests=requests,
        poll_sum=float(poll_sum[1]),
        poll_count=float(poll_count[1]),
        live=frozenset(live),
        streams=streams,
    )


def decoded(body: bytes, variant: Variant, encoding: str | None) -> bytes:
    """The exposition in a response, checked: raises ValueError if it is not whole."""
    if variant.gzip:
        if encoding != "gzip":
            raise ValueError(f"Content-Encoding {encoding!r}, not gzip")
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"gzip body does not decompress: {exc}") from None
    elif encoding not in (None, "identity"):
        raise ValueError(f"Content-Encoding {encoding!r} not asked for")
    if variant.openmetrics:
        if not body.endswith(b"\n# EOF\n"):
            raise ValueError("OpenMetrics body does not end with # EOF")
    elif not body.endswith(b"\n") or b"\n# EOF" in body:
        raise ValueError("text body does not end with a newline, or has # EOF")
    return body


async def fetch(
    session: aiohttp.ClientSession, url: str, variant: Variant
) -> tuple[float, int, bytes, str | None]:
    """(seconds, status, raw body, Content-Encoding) of one GET."""
    started = time.perf_counter()
    async with session.get(url, headers=variant.headers()) as response:
        body = await response.read()
        elapsed = time.perf_counter() - started
        return elapsed, response.status, body, response.headers.get("Content-Encoding")


def client(timeout: float) -> aiohttp.ClientSession:
    """A client with one keep-alive connection, no proxy, no automatic decompression."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
        trust_env=False,
    )


async def scrape_exporter(session: aiohttp.ClientSession, url: str) -> Scrape:
    """One Prometheus-like scrape (OpenMetrics, gzip), parsed."""
    _, status, raw, encoding = await fetch(session, url, PROMETHEUS)
    at = time.monotonic()
    if status != 200:
        raise BenchError(f"exporter /metrics answered {status}")
    try:
        body = decoded(raw, PROMETHEUS, encoding)
    except ValueError as exc:
        raise BenchError(f"exporter /metrics: {exc}") from None
    return parse_exposition(body, at)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- one size -------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    live_share: float
    interval: float | None
    warmup: int
    cycles: int
    requests: int
    seconds: float
    rounds: int
    seed: int
    max_concurrency: int
    keep_logs: bool
    profile: str
    settle: float


def default_interval(n: int) -> float:
    """A poll interval in which a whole cycle fits comfortably at N livestreams."""
    if n <= 1_000:
        return 10.0
    if n <= 10_000:
        return 30.0
    return 120.0


def exporter_config(
    base_url: str, token_file: Path, interval: float, concurrency: int, streams: int
) -> str:
    config: dict[str, object] = {
        "api": {
            "base_url": base_url,
            "token_file": str(token_file),
            "timeout": "10s",
            "max_concurrency": concurrency,
            "rate_limit": "1000000/5m",
        },
        "poll": {
            "interval": f"{interval:g}s",
            "max_staleness": f"{max(300.0, 3 * interval):g}s",
        },
        "apps": [{"account_id": ACCOUNT, "app_id": APP, "discover": True}],
        # Room for every stream: the default limit (20,000) would cut N = 100,000.
        "limits": {"max_livestreams": max(streams, 20_000)},
    }
    return yaml.safe_dump(config, sort_keys=False)


async def bench_size(n: int, settings: Settings, workdir: Path) -> dict[str, Any]:
    live = min(n, round(n * settings.live_share))
    interval = settings.interval or default_interval(n)
    result: dict[str, Any] = {
        "n": n,
        "live": live,
        "interval_s": interval,
        "max_per_page": MAX_PER_PAGE,
        "max_concurrency": settings.max_concurrency,
        "seed": settings.seed,
        "profile": settings.profile,
        "settle_s": settings.settle,
        "warnings": [],
    }
    warnings: list[str] = result["warnings"]
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    children: list[Child] = []
    try:
        py = sys.executable
        sim = Child(
            "simulator",
            [
                py,
                "-m",
                "exporter",
                "simulate",
                f"--listen={LOOPBACK}:0",
                f"--livestreams={n}",
                f"--live={live}",
                f"--seed={settings.seed}",
                f"--profile={settings.profile}",
                f"--account-id={ACCOUNT}",
                f"--app-id={APP}",
                f"--token-file={token_file}",
                "--rate-limit=1000000/5m",
                "--ip-rate-limit=off",
                f"--max-per-page={MAX_PER_PAGE}",
            ],
            workdir,
        )
        children.append(sim)
        sim_started = time.monotonic()
        origin = (await sim.wait_log(r"address=(http://127\.0\.0\.1:\d+)", 60 + n / 1000))[1]
        config_path = workdir / "exporter.yaml"
        config_path.write_text(
            exporter_config(
                origin + "/client/v4", token_file, interval, settings.max_concurrency, n
            )
        )
        exporter = Child(
            "exporter",
            [
                py,
                "-m",
                "exporter",
                f"--config.file={config_path}",
                f"--web.listen-address={LOOPBACK}:0",
            ],
            workdir,
        )
        children.append(exporter)
        port = (await exporter.wait_log(r"listening on 127\.0\.0\.1:(\d+)", 30))[1]
        exporter_url = f"http://{LOOPBACK}:{port}/metrics"
        baseline = Child(
            "baseline",
            [py, str(BASELINE), f"--config.file={config_path}", f"--listen={LOOPBACK}:0"],
            workdir,
        )
        children.append(baseline)
        start_timeout = 60 + 3 * interval
        match = await baseline.wait_log(r"baseline listening on 127\.0\.0\.1:(\d+)", start_timeout)
        baseline_url = f"http://{LOOPBACK}:{match[1]}/metrics"
        polled = re.search(r"baseline polled .*", baseline.log())
        result["baseline_poll"] = polled[0] if polled else None
        log(f"N={n}: simulator {origin}, exporter {exporter_url}, baseline {baseline_url}")

        async with client(120.0) as session:
            steady = await steady_phase(
                n,
                live,
                interval,
                settings,
                session,
                exporter_url,
                origin,
                exporter,
                sim,
                settle_until=sim_started + settings.settle,
            )
            result.update(steady)
            result["rss_mb_after_steady"] = exporter.status_mb("VmHWM")
            for child in children:
                child.check()
        result["latency"] = await latency_phase(
            n, settings, {"exporter": exporter_url, "baseline": baseline_url}, [exporter, baseline]
        )
        result["rss_mb"] = exporter.status_mb("VmHWM")
        result["baseline_rss_mb"] = baseline.status_mb("VmHWM")
        result["simulator_rss_mb"] = sim.status_mb("VmHWM")
        for child in children:
            child.check()
        for line in exporter.log().splitlines():
            if "api.rate_limit 1000000/5m is above" in line:
                continue  # the benchmark's budget, set high on purpose
            if " level=warn" in line or " level=error" in line or " level=critical" in line:
                warnings.append(f"exporter log: {line[:300]}")
                if len(warnings) > 20:
                    break
        return result
    finally:
        for child in reversed(children):
            child.stop()


async def steady_phase(
    n: int,
    live: int,
    interval: float,
    settings: Settings,
    session: aiohttp.ClientSession,
    url: str,
    origin: str,
    exporter: Child,
    sim: Child,
    settle_until: float,
) -> dict[str, Any]:
    """Warm-up, then ``settings.cycles`` cycles scraped once each, mid-way between cycles."""
    stats_url = origin + "/-/simulator/stats"
    warnings: list[str] = []
    # Settle: the simulator changes nothing at first (the realistic profile's quiet spell);
    # scraped once per interval meanwhile, as Prometheus would.
    if time.monotonic() < settle_until:
        log(f"N={n}: settling for {settle_until - time.monotonic():.0f}s")
    next_scrape = 0.0
    while (left := settle_until - time.monotonic()) > 0:
        exporter.check()
        sim.check()
        if time.monotonic() >= next_scrape:
            await scrape_exporter(session, url)
            next_scrape = time.monotonic() + interval
        await asyncio.sleep(min(1.0, left))
    # Warm-up: wait for the cycles, then find the end of one to align on (scrapes of the
    # cached variant are cheap; these are not measured).
    deadline = time.monotonic() + (settings.warmup + 2) * interval + 120 + n / 500
    first = await scrape_exporter(session, url)
    while first.poll_count < settings.warmup:
        exporter.check()
        if time.monotonic() > deadline:
            raise BenchError(f"exporter did not complete {settings.warmup} cycles in time")
        await asyncio.sleep(0.5)
        first = await scrape_exporter(session, url)
    while True:
        exporter.check()
        if time.monotonic() > deadline:
            raise BenchError("exporter did not complete a cycle in time")
        await asyncio.sleep(0.2)
        latest = await scrape_exporter(session, url)
        if latest.poll_count > first.poll_count:
            break
    warm = latest.poll_sum / latest.poll_count
    log(
        f"N={n}: warm after {latest.poll_count:.0f} cycles (mean {warm:.2f}s); "
        f"{settings.cycles} steady cycles of {interval:g}s"
    )
    if warm > interval / 2:
        warnings.append(f"cycles take {warm:.1f}s of a {interval:g}s interval")
    # A cycle just ended at about latest.at: scrape half an interval after each next end.
    ends_at = latest.at
    scrapes: list[Scrape] = []
    extra = 0
    for k in range(settings.cycles + 1):
        target = ends_at + k * interval + interval / 2
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        while True:
            exporter.check()
            sim.check()
            scrape = await scrape_exporter(session, url)
            scrape.cpu = exporter.cpu_seconds()
            want = scrapes[0].poll_count + k if scrapes else 0
            if scrape.poll_count >= want or time.monotonic() > target + interval:
                break
            extra += 1  # the cycle has not ended yet: look again shortly
            await asyncio.sleep(0.25)
        scrape.simulator = await get_json(session, stats_url)
        if scrapes and scrape.poll_count != scrapes[0].poll_count + k:
            warnings.append(
                f"scrape {k} saw cycle {scrape.poll_count:.0f}, "
                f"expected {scrapes[0].poll_count + k:.0f}"
            )
        scrapes.append(scrape)
    first, last = scrapes[0], scrapes[-1]
    cycles = last.poll_count - first.poll_count
    if cycles <= 0:
        raise BenchError("no poll cycle completed in the steady phase")
    by_endpoint: dict[str, float] = {}
    non_ok: dict[str, float] = {}
    for key, value in last.requests.items():
        delta = value - first.requests.get(key, 0.0)
        endpoint, code = key
        by_endpoint[endpoint] = by_endpoint.get(endpoint, 0.0) + delta
        if code != "200" and delta:
            non_ok[f"{endpoint} {code}"] = delta
    total = sum(by_endpoint.values())
    sim_total = last.simulator.get("total", 0) - first.simulator.get("total", 0)
    pages = math.ceil(n / MAX_PER_PAGE)
    parts = {"pages": 0, "live": 0, "left_live": 0}
    for before, after in itertools.pairwise(scrapes):
        parts["pages"] += pages
        parts["live"] += len(after.live)
        parts["left_live"] += len(before.live - after.live)
    bound = sum(parts.values())
    if last.streams != n:
        warnings.append(f"the exporter exports {last.streams} livestreams, not {n}")
    return {
        "cycles": cycles,
        "requests_per_cycle": total / cycles,
        "requests_by_endpoint_per_cycle": {k: v / cycles for k, v in by_endpoint.items()},
        "requests_not_200": non_ok,
        "simulator_requests_per_cycle": sim_total / cycles,
        "lower_bound_per_cycle": bound / cycles,
        "lower_bound_parts_per_cycle": {k: v / cycles for k, v in parts.items()},
        "request_ratio": total / bound if bound else math.nan,
        "live_per_scrape": [len(s.live) for s in scrapes],
        "cycle_s": (last.poll_sum - first.poll_sum) / cycles,
        "cpu_s_per_cycle": (last.cpu - first.cpu) / cycles,
        "steady_window_s": last.at - first.at,
        "steady_extra_scrapes": extra,
        "steady_warnings": warnings,
    }


async def latency_phase(
    n: int, settings: Settings, urls: dict[str, str], procs: Iterable[Child]
) -> dict[str, Any]:
    """p50/p99 per variant and server; 4 scrapers each, rounds interleaved."""
    per_scraper = max(1, math.ceil(settings.requests / settings.rounds / SCRAPERS))
    block_seconds = settings.seconds / settings.rounds
    timings: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], list[str]] = {}
    sizes: dict[tuple[str, str], int] = {}
    sessions = {server: [client(300.0) for _ in range(SCRAPERS)] for server in urls}
    log(
        f"N={n}: latency, {settings.rounds} rounds x {len(VARIANTS)} variants x "
        f"{len(urls)} servers, {SCRAPERS} scrapers, up to {per_scraper} requests "
        f"or {block_seconds:g}s each per block"
    )
    try:
        for rnd in range(settings.rounds):
            for index, variant in enumerate(VARIANTS):
                order = list(urls)
                if (rnd + index) % 2:
                    order.reverse()
                for server in order:
                    for proc in procs:
                        proc.check()
                    key = (variant.name, server)
                    await run_block(
                        sessions[server],
                        urls[server],
                        variant,
                        n,
                        per_scraper,
                        block_seconds,
                        check_all=rnd == 0,
                        timings=timings.setdefault(key, []),
                        failures=failures.setdefault(key, []),
                        sizes=sizes,
                        key=key,
                    )
    finally:
        for group in sessions.values():
            for session in group:
                await session.close()
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        entry: dict[str, Any] = {}
        for server in urls:
            values = timings[(variant.name, server)]
            entry[server] = {
                "requests": len(values),
                "failed": len(failures[(variant.name, server)]),
                "failures": failures[(variant.name, server)][:5],
                "p50_ms": percentile(values, 0.5) * 1000,
                "p99_ms": percentile(values, 0.99) * 1000,
                "max_ms": max(values) * 1000 if values else math.nan,
                "bytes": sizes.get((variant.name, server)),
            }
        exp, base = entry.get("exporter"), entry.get("baseline")
        if exp and base:
            entry["ratio_p50"] = base["p50_ms"] / exp["p50_ms"] if exp["p50_ms"] else math.nan
            entry["ratio_p99"] = base["p99_ms"] / exp["p99_ms"] if exp["p99_ms"] else math.nan
        out[variant.name] = entry
    return out


async def run_block(
    sessions: list[aiohttp.ClientSession],
    url: str,
    variant: Variant,
    n: int,
    per_scraper: int,
    seconds: float,
    *,
    check_all: bool,
    timings: list[float],
    failures: list[str],
    sizes: dict[tuple[str, str], int],
    key: tuple[str, str],
) -> None:
    """``SCRAPERS`` scrapers, each on its own connection, sequential requests: up to
    ``per_scraper`` each, none started after ``seconds`` (but at least one each)."""
    deadline = time.monotonic() + seconds

    async def scraper(session: aiohttp.ClientSession) -> None:
        for i in range(per_scraper):
            if i and time.monotonic() >= deadline:
                return
            try:
                elapsed, status, raw, encoding = await fetch(session, url, variant)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200:
                failures.append(f"HTTP {status}")
                continue
            try:
                body = decoded(raw, variant, encoding)
                # Once per scraper and block of the first round: every stream is there.
                if check_all and i == 0:
                    count = sum(1 for line in body.split(b"\n") if line.startswith(_LIVE_PREFIX))
                    if count != n:
                        raise ValueError(f"{count} livestream_live samples, not {n}")
            except ValueError as exc:
                failures.append(str(exc))
                continue
            sizes[key] = len(raw)
            timings.append(elapsed)

    await asyncio.gather(*(scraper(session) for session in sessions))


# -- report ---------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    head = [
        "N",
        "L",
        "requests/cycle",
        "lower bound",
        "ratio",
        "cycle s",
        "CPU s/cycle",
        "RSS MB steady/end",
    ]
    for variant in VARIANTS:
        head += [
            f"{variant.name} p50 ms exp/base",
            f"{variant.name} p99 ms exp/base",
            f"{variant.name} p99 x",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            cells = [str(r["n"]), str(r.get("live", "-")), f"failed: {r['error'][:80]}"]
            cells += [""] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [
            f"{r['n']:,}",
            f"{r['live']:,}",
            _fmt(r.get("requests_per_cycle")),
            _fmt(r.get("lower_bound_per_cycle")),
            _fmt(r.get("request_ratio"), 3),
            _fmt(r.get("cycle_s"), 3),
            _fmt(r.get("cpu_s_per_cycle"), 3),
            f"{_fmt(r.get('rss_mb_after_steady'), 0)} / {_fmt(r.get('rss_mb'), 0)}",
        ]
        for variant in VARIANTS:
            entry = r.get("latency", {}).get(variant.name, {})
            exp, base = entry.get("exporter", {}), entry.get("baseline", {})
            cells += [
                f"{_ms(exp.get('p50_ms'))} / {_ms(base.get('p50_ms'))}",
                f"{_ms(exp.get('p99_ms'))} / {_ms(base.get('p99_ms'))}",
                _fmt(entry.get("ratio_p99")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The targets at N = 10,000, L = 500 (bench/README.md): value, limit and verdict."""
    speedups = {name: entry.get("ratio_p99", math.nan) for name, entry in result["latency"].items()}
    checks = {
        "request_ratio": (result["request_ratio"], TARGET_REQUEST_RATIO, "<="),
        "p99_speedup_min_over_variants": (min(speedups.values()), TARGET_P99_SPEEDUP, ">="),
        "p99_speedup_prometheus_variant": (speedups[PROMETHEUS.name], TARGET_P99_SPEEDUP, ">="),
        "rss_mb_steady": (result["rss_mb_after_steady"], TARGET_RSS_MB, "<"),
        "rss_mb_end": (result["rss_mb"], TARGET_RSS_MB, "<"),
        "cpu_s_per_cycle": (result["cpu_s_per_cycle"], TARGET_CPU_S, "<"),
    }
    out: dict[str, Any] = {}
    for name, (value, limit, op) in checks.items():
        ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit}[op]
        out[name] = {"value": value, "target": f"{op} {limit:g}", "met": bool(ok)}
    return out


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607 (git from PATH)
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip()  # porcelain lines may start with a space


def meta() -> dict[str, Any]:
    status = git("status", "--porcelain")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "dirty_files": status.splitlines() if status else [],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": os.getloadavg(),
        "argv": sys.argv[1:],
    }


def mem_available_mb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match[1]) / 1024 if match else None


def memory_needed_mb(n: int, results: list[dict[str, Any]]) -> float:
    """Three processes' peak at N, scaled from the largest size run so far (else a guess
    of 40 kB per livestream and process), with a margin of half."""
    done = [r for r in results if r.get("rss_mb")]
    if done:
        r = max(done, key=lambda r: r["n"])
        total = sum(r.get(k) or 0.0 for k in ("rss_mb", "baseline_rss_mb", "simulator_rss_mb"))
        return float(1.5 * total * n / r["n"])
    return 1.5 * 3 * 40 * n / 1024


# -- main -----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the exporter against the simulator and a render-per-scrape "
        "baseline (see bench/README.md).",
    )

    def sizes(text: str) -> list[int]:
        try:
            values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError("sizes must be whole numbers >= 1")
        return values

    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[100, 1_000, 10_000],
        help="livestream counts N, comma-separated (default 100,1000,10000; 100000 opt-in)",
    )
    parser.add_argument("--live-share", type=float, default=0.05, help="L = this share of N (0.05)")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="poll.interval in seconds for every size "
        "(default 10 up to N=1000, 30 up to 10000, 120 above)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="cycles before measuring (2)")
    parser.add_argument("--cycles", type=int, default=3, help="steady cycles measured (3)")
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="latency: most requests per variant and server, all rounds (1000)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="latency: seconds per variant and server, all rounds (20); a block ends at "
        "its share of them or at its share of --requests, whichever comes first",
    )
    parser.add_argument("--rounds", type=int, default=4, help="latency: interleaved rounds (4)")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (1)")
    parser.add_argument(
        "--profile",
        choices=["realistic", "demo"],
        default="realistic",
        help="simulator profile: realistic (live 10-60 min, the default) or demo (40-90 s, "
        "much churn)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds after the simulator starts before the steady window at the earliest "
        "(default 160 for realistic, past its 150 s without changes; 10 for demo)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=8, help="exporter api.max_concurrency (8)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON output path"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs (else on failure only)"
    )
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = 160.0 if args.profile == "realistic" else 10.0
    if args.cycles < 1 or args.warmup < 1 or args.rounds < 1 or args.requests < 1:
        parser.error("--cycles, --warmup, --rounds and --requests must be at least 1")
    if not 0 < args.live_share <= 1:
        parser.error("--live-share must be in (0, 1]")
    return args


async def run(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    """Every size in turn; results go into ``report`` as they come (kept on Ctrl-C)."""
    settings = Settings(
        live_share=args.live_share,
        interval=args.interval,
        warmup=args.warmup,
        cycles=args.cycles,
        requests=args.requests,
        seconds=args.seconds,
        rounds=args.rounds,
        seed=args.seed,
        max_concurrency=args.max_concurrency,
        keep_logs=args.keep_logs,
        profile=args.profile,
        settle=args.settle,
    )
    results: list[dict[str, Any]] = report["results"]
    ok = True
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    for n in args.sizes:
        needed, available = memory_needed_mb(n, results), mem_available_mb()
        if available is not None and needed > available:
            log(f"N={n}: skipped, needs about {needed:.0f} MB, {available:.0f} MB available")
            results.append({"n": n, "error": f"skipped: needs ~{needed:.0f} MB of memory"})
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"rtk-bench-{n}-"))
        started = time.monotonic()
        try:
            result = await bench_size(n, settings, workdir)
        except asyncio.CancelledError:
            log(f"N={n}: interrupted; logs kept in {workdir}")
            raise
        except BenchError as exc:
            ok = False
            log(f"N={n}: FAILED: {exc}\n  logs kept in {workdir}")
            results.append({"n": n, "error": str(exc), "logs": str(workdir)})
            continue
        result["wall_s"] = time.monotonic() - started
        results.append(result)
        log(f"N={n}: done in {result['wall_s']:.0f}s")
        if args.keep_logs:
            result["logs"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return ok


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"meta": meta(), "results": []}
    code = 0
    try:
        code = 0 if asyncio.run(run(args, report)) else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: the sizes done so far are reported")
        code = 130
    finally:
        stop_all()
    report["meta"]["loadavg_end"] = os.getloadavg()
    report["targets"] = {
        str(r["n"]): targets(r)
        for r in report["results"]
        if r["n"] == TARGET_N and "error" not in r
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    print(table(report["results"]))
    print()
    for n, checks in report["targets"].items():
        verdicts = ", ".join(
            f"{name} {_fmt(c['value'], 3)} ({c['target']}: {'ok' if c['met'] else 'MISSED'})"
            for name, c in checks.items()
        )
        print(f"targets at N={n}: {verdicts}")
    meta_ = report["meta"]
    print(
        f"commit {meta_['commit']}{' (dirty)' if meta_['dirty'] else ''}, "
        f"Python {meta_['python']}, {meta_['cpu_count']} cores, "
        f"load {meta_['loadavg_start'][0]:.2f} -> {meta_['loadavg_end'][0]:.2f}; "
        f"JSON: {args.out}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
