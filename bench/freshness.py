"""Benchmark: how soon the exporter shows a livestream stopping, under the API's rate limit.

Plans side by side in one run: ``new``, the exporter of this working tree, polling;
``hooks``, the same exporter that also receives the simulator's status webhooks (its URL
registered through the simulator's API, as ``webhooks register`` does); and ``old``, the
exporter of an earlier commit (``--old-commit``, checked out into a temporary git
worktree and run from there). Each plan gets a simulator of its own (both from this
working tree, same seed and settings, so both see the same world) with the API's
per-token limit on (``--rate-limit``, 1200 requests per 5 minutes by default, overrunning
it blocks the token for a whole window), and the exporter polls it with the same budget.
After a warm-up:

1. once in every ``--stops-every`` seconds (at a random moment of each slot), a stream
   that both simulators (and, if possible, both exporters) show live is stopped on both
   through the control API; each exporter's ``/metrics`` is read every second (every
   ``--pending-scrape-every`` while a stop is not seen yet) until
   ``realtimekit_livestream_live`` of that stream reads 0 (or is gone): the stop latency;
2. at every scrape, the age of each live stream's counters (the scrape's time minus the
   stream's session-update timestamp, or its last-update timestamp where the former
   family does not exist), and per stream the longest gap between changes of it;
3. at the end, the requests each simulator counted: the busiest 5 minutes, 429s, and
   requests per endpoint.

Prints a Markdown table, the targets, and writes JSON. See bench/README.md::

    .venv/bin/python -m bench.freshness [--livestreams 10000 --live 500] [--plans hooks,new]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import yaml

from bench.run import (
    _STREAM_ID,
    ACCOUNT,
    APP,
    LOOPBACK,
    MAX_PER_PAGE,
    TEXT_ACCEPT,
    TOKEN,
    BenchError,
    Child,
    _jsonable,
    child_env,
    exporter_config,
    git,
    log,
    meta,
    percentile,
    stop_all,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OLD_COMMIT: Final = "a762e14"
PLANS: Final = ("hooks", "new", "old")
DEFAULT_PLANS: Final = ("new", "old")
HOOKS_STOP_TARGET: Final = 2.0  # seconds, at p99, from a stop to live 0 with webhooks
LIVE: Final = b"realtimekit_livestream_live"
# The time a stream's session counters were last fetched (the new plan fetches them apart
# from the status), and the time all of its data was (the old plan fetches both at once).
SESSION_UPDATE: Final = b"realtimekit_livestream_session_last_update_timestamp_seconds"
LAST_UPDATE: Final = b"realtimekit_livestream_last_update_timestamp_seconds"
UP: Final = b"realtimekit_up"
_BUILD_INFO = re.compile(rb"^realtimekit_exporter_build_info\{([^}]*)\} ", re.M)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Streams whose state one stop may look up on the simulators before it gives up a pass.
LOOKUPS_PER_PASS: Final = 20
CONTROL_PAGE: Final = 10_000  # streams per page when reading a simulator's whole list


# -- settings -------------------------------------------------------------------------
@dataclass(frozen=True)
class RateLimit:
    requests: int
    window: float  # seconds


def parse_rate_limit(text: str) -> RateLimit:
    """``REQUESTS/WINDOW`` as the exporter and the simulator take it: ``1200/5m``."""
    count, sep, window = text.partition("/")
    match = _DURATION.fullmatch(window.strip())
    if not sep or not count.strip().isdigit() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not REQUESTS/WINDOW, e.g. 1200/5m")
    seconds = float(match[1]) * _UNITS[match[2]]
    if int(count) < 1 or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: needs at least 1 request per window")
    return RateLimit(int(count), seconds)


def stop_target(interval: float) -> float:
    """The target for the slowest stop to show: two poll intervals and 10 s."""
    return 2 * interval + 10


# -- processes ------------------------------------------------------------------------
def tree_env(tree: Path) -> dict[str, str]:
    """:func:`bench.run.child_env` with ``tree`` first on the import path."""
    env = child_env()
    env["PYTHONPATH"] = str(tree)
    return env


class TreeChild(Child):
    """A :class:`bench.run.Child` run from the source tree ``tree``: its working directory
    and ``PYTHONPATH``, so that ``python -m exporter`` imports that tree's package (the
    working directory comes first on ``sys.path`` with ``-m``). Stopped like any child."""

    def __init__(self, name: str, argv: list[str], workdir: Path, tree: Path) -> None:
        self.tree = tree
        super().__init__(name, argv, workdir, cwd=tree, env=tree_env(tree))

    def cwd(self) -> str | None:
        with contextlib.suppress(OSError):
            return os.readlink(f"/proc/{self.pid}/cwd")
        return None


def package_in(tree: Path) -> str:
    """Where ``import exporter`` finds the package with ``tree``'s directory and path, as
    the exporter started from it will (checked before it is started)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import exporter; print(exporter.__file__)"],
            cwd=tree,
            env=tree_env(tree),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot import the exporter package from {tree}: {exc}") from None
    found = Path(done.stdout.strip()).resolve()
    if not found.is_relative_to(tree.resolve()):
        raise BenchError(f"the exporter run from {tree} would import {found}")
    return str(found)


_WORKTREES: list[Path] = []


def add_worktree(commit: str) -> tuple[Path, str]:
    """A detached git worktree of ``commit`` in a new temporary directory, and the full
    commit hash; removed by :func:`remove_worktrees`."""
    full = git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if not full:
        raise BenchError(f"no commit {commit!r} in {ROOT}")
    path = Path(tempfile.mkdtemp(prefix="rtk-fresh-old-")) / "tree"
    _WORKTREES.append(path)
    done = subprocess.run(  # noqa: S603
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), full],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode:
        raise BenchError(f"git worktree add failed: {done.stderr.strip()}")
    return path, full


def remove_worktrees() -> None:
    for path in reversed(list(_WORKTREES)):
        done = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode and path.exists():
            log(f"could not remove the worktree {path}: {done.stderr.strip()}")
            continue
        _WORKTREES.remove(path)
        shutil.rmtree(path.parent, ignore_errors=True)


# -- reading /metrics -----------------------------------------------------------------
def family_lines(body: bytes, name: bytes) -> list[bytes] | None:
    """The sample lines of one family of a text-format body; None if it is absent.

    Only the family's own block is split (from its ``# TYPE`` line to the next comment),
    so that a body of many families costs little more than the rows wanted."""
    start = body.find(b"\n# TYPE " + name + b" ")
    if start < 0:
        return None
    end = body.find(b"\n# ", start + 1)
    block = body[start : end if end >= 0 else len(body)]
    prefix = name + b"{"
    return [line for line in block.split(b"\n") if line.startswith(prefix)]


def family(body: bytes, name: bytes) -> dict[str, float] | None:
    """One stream family of a text-format body, by livestream id; None if it is absent."""
    lines = family_lines(body, name)
    if lines is None:
        return None
    rows: dict[str, float] = {}
    for line in lines:
        match = _STREAM_ID.search(line)
        if match is not None:
            rows[match[1].decode()] = float(line.rsplit(b" ", 1)[1])
    return rows


@dataclass
class Stop:
    """One stream stopped on one plan's simulator, and when its exporter showed it."""

    livestream_id: str
    at: float  # monotonic: when the stop request was sent
    wall: float
    rtt: float  # the stop request's round trip
    exporter_live: bool  # the exporter showed the stream live at the stop
    shared: bool  # the same stream was stopped on the other plan's simulator too
    seen_at: float | None = None  # monotonic: the first scrape showing it not live
    gone: bool = False  # that scrape had no series of it at all (rather than a 0)

    @property
    def latency(self) -> float | None:
        return None if self.seen_at is None else self.seen_at - self.at


@dataclass
class Window:
    """The measuring period (monotonic times; ``start`` is None during the warm-up)."""

    start: float | None = None
    end: float = math.inf
    scrape_until: float = math.inf  # past ``end`` while stops are still unseen (drain)
    finished: float | None = None  # when scraping ended

    def measuring(self, at: float) -> bool:
        return self.start is not None and self.start <= at < self.end


class Tracker:
    """What one exporter's scrapes showed: stops seen, counter ages, refresh gaps."""

    def __init__(self) -> None:
        self.stops: list[Stop] = []
        self._pending: dict[str, Stop] = {}
        self.live: frozenset[str] = frozenset()  # in the latest scrape
        self.scrapes = 0
        self.measured = 0
        self.failures: list[str] = []
        self.sent: list[float] = []  # monotonic send times of measured scrapes
        self.durations: list[float] = []  # send to last byte, measured scrapes
        self.body_bytes = 0
        self.build_info: str | None = None
        self.up = 0  # measured scrapes with realtimekit_up 1 (the app fully polled)
        self.timestamp_families: Counter[str] = Counter()  # per measured scrape
        self.ages = array("d")
        self.missing_timestamps = 0
        self._stamp: dict[str, float] = {}  # stream -> its timestamp at the last live scrape
        self._open: dict[str, float] = {}  # stream -> age at the last live scrape
        self.gaps: dict[str, float] = {}  # stream -> longest gap between changes

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add_stop(self, stop: Stop) -> None:
        self.stops.append(stop)
        self._pending[stop.livestream_id] = stop

    def observe(
        self, body: bytes, sent: float, at: float, wall: float, window: Window, took: float
    ) -> None:
        """One scrape: sent at ``sent``, answered at ``at`` (monotonic) / ``wall`` (Unix)."""
        live = family(body, LIVE)
        if live is None:
            self.failures.append("no realtimekit_livestream_live family")
            return
        self.scrapes += 1
        self.body_bytes = len(body)
        if self.build_info is None and (info := _BUILD_INFO.search(body)):
            self.build_info = info[1].decode()
        self.live = frozenset(i for i, v in live.items() if v == 1)
        # A scrape sent after the stop shows the snapshot of its time: a stop is seen once
        # the stream reads 0 there, or is gone.
        for sid, stop in list(self._pending.items()):
            if sent >= stop.at and live.get(sid, 0.0) != 1:
                stop.seen_at, stop.gone = at, sid not in live
                del self._pending[sid]
        if not window.measuring(sent):
            return
        self.measured += 1
        up = family_lines(body, UP)
        self.up += bool(up) and all(line.endswith((b" 1", b" 1.0")) for line in up or ())
        self.sent.append(sent)
        self.durations.append(took)
        stamps = family(body, SESSION_UPDATE)
        used = SESSION_UPDATE
        if stamps is None:
            stamps, used = family(body, LAST_UPDATE) or {}, LAST_UPDATE
        self.timestamp_families[used.decode()] += 1
        for sid in list(self._stamp):
            if sid not in self.live:  # no longer live: its gaps end here
                self._close(sid)
        for sid in self.live:
            stamp = stamps.get(sid)
            if stamp is None:
                self.missing_timestamps += 1
                continue
            age = wall - stamp
            self.ages.append(age)
            before = self._stamp.get(sid)
            if before is not None and stamp != before:
                self.gaps[sid] = max(self.gaps.get(sid, 0.0), stamp - before)
            self._stamp[sid] = stamp
            self._open[sid] = age

    def _close(self, sid: str) -> None:
        """The stream's last gap is still open: it lasted at least its last age seen."""
        self._stamp.pop(sid, None)
        age = self._open.pop(sid, None)
        if age is not None:
            self.gaps[sid] = max(self.gaps.get(sid, 0.0), age)

    def finish(self) -> None:
        for sid in list(self._stamp):
            self._close(sid)


# -- the plans ------------------------------------------------------------------------
@dataclass
class Plan:
    """One simulator and the exporter polling it."""

    name: str
    tree: Path
    commit: str | None
    webhooks: bool = False  # receives the simulator's webhooks
    sim: Child | None = None
    exporter: TreeChild | None = None
    origin: str = ""
    metrics_url: str = ""
    package: str = ""
    exporter_cwd: str | None = None
    ready_after: float | None = None  # seconds from its listening line to /-/ready
    tracker: Tracker = field(default_factory=Tracker)
    live_at_start: dict[str, int] = field(default_factory=dict)  # id -> index in the list
    stats_start: dict[str, Any] = field(default_factory=dict)
    stats_end: dict[str, Any] = field(default_factory=dict)
    webhook_metrics: dict[str, float] = field(default_factory=dict)  # at the end

    def check(self) -> None:
        for child in (self.sim, self.exporter):
            if child is not None:
                child.check()


def simulator_argv(args: argparse.Namespace, token_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter",
        "simulate",
        f"--listen={LOOPBACK}:0",
        f"--livestreams={args.livestreams}",
        f"--live={args.live}",
        f"--seed={args.seed}",
        f"--profile={args.profile}",
        f"--account-id={ACCOUNT}",
        f"--app-id={APP}",
        f"--token-file={token_file}",
        f"--rate-limit={args.rate_limit_text}",
        "--ip-rate-limit=off",
        f"--max-per-page={MAX_PER_PAGE}",
    ]


def plan_config(
    args: argparse.Namespace, origin: str, token_file: Path, hook_port: int | None = None
) -> str:
    """bench.run's exporter configuration, with the API's real budget; with ``hook_port``,
    a webhook receiver there that takes the simulator's key."""
    config = yaml.safe_load(
        exporter_config(
            origin + "/client/v4", token_file, args.interval, args.max_concurrency, args.livestreams
        )
    )
    config["api"]["rate_limit"] = args.rate_limit_text
    config["poll"]["max_staleness"] = f"{args.max_staleness:g}s"
    if hook_port is not None:
        config["webhooks"] = {
            "listen_address": f"{LOOPBACK}:{hook_port}",
            "public_key_url": origin + "/.well-known/webhooks.json",
        }
    return yaml.safe_dump(config, sort_keys=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


async def register_webhook(plan: Plan, port: int) -> None:
    """Subscribe the app's status changes to the plan's receiver, through the simulator's
    API (one request of the token's budget), as ``webhooks register`` does."""
    url = f"{plan.origin}/client/v4/accounts/{ACCOUNT}/realtime/kit/{APP}/webhooks"
    body = {
        "name": "bench",
        "url": f"http://{LOOPBACK}:{port}/webhooks/realtimekit",
        "events": ["livestreaming.statusUpdate"],
    }
    async with (
        control_client() as session,
        session.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        if response.status != 201:
            raise BenchError(f"{plan.name}: registering the webhook: {response.status}")


def ready_timeout(args: argparse.Namespace) -> float:
    """Room for a first cycle that reads every page and every live stream's session at
    the budget's pace, three times over."""
    rate: RateLimit = args.rate_limit
    naive: int = math.ceil(args.livestreams / MAX_PER_PAGE) + args.live
    return 180 + 3 * max(0, naive - rate.requests) * rate.window / rate.requests


async def start(plans: list[Plan], args: argparse.Namespace, workdir: Path) -> None:
    """Both simulators, then both exporters, until every exporter is ready."""
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    for plan in plans:
        plan.package = package_in(plan.tree)
        plan.sim = Child(f"simulator-{plan.name}", simulator_argv(args, token_file), workdir)
    # Two simulators populate at once: twice bench.run's room.
    within = 60 + args.livestreams / 500
    found = await asyncio.gather(
        *(p.sim.wait_log(r"address=(http://127\.0\.0\.1:\d+)", within) for p in plans if p.sim)
    )
    hook_ports: dict[str, int] = {}
    for plan, match in zip(plans, found, strict=True):
        plan.origin = match[1]
        config_path = workdir / f"exporter-{plan.name}.yaml"
        if plan.webhooks:
            hook_ports[plan.name] = free_port()
        config_path.write_text(
            plan_config(args, plan.origin, token_file, hook_ports.get(plan.name))
        )
        argv = [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={config_path}",
            f"--web.listen-address={LOOPBACK}:0",
        ]
        plan.exporter = TreeChild(f"exporter-{plan.name}", argv, workdir, plan.tree)
        plan.exporter_cwd = plan.exporter.cwd()
    ports = await asyncio.gather(
        *(p.exporter.wait_log(r"listening on 127\.0\.0\.1:(\d+)", 60) for p in plans if p.exporter)
    )
    for plan, match in zip(plans, ports, strict=True):
        plan.metrics_url = f"http://{LOOPBACK}:{match[1]}/metrics"
        if plan.webhooks and plan.exporter is not None:
            await plan.exporter.wait_log(r"webhook public key \w+ loaded", 60)
            await register_webhook(plan, hook_ports[plan.name])
        log(
            f"{plan.name}: simulator {plan.origin}, exporter {plan.metrics_url} "
            f"(package {plan.package})"
        )
    timeout = args.ready_timeout or ready_timeout(args)
    async with control_client() as session:
        await asyncio.gather(*(wait_ready(session, p, timeout) for p in plans))


async def wait_ready(session: aiohttp.ClientSession, plan: Plan, within: float) -> None:
    started = time.monotonic()
    url = plan.metrics_url.removesuffix("/metrics") + "/-/ready"
    while True:
        plan.check()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url) as response:
                if response.status == 200:
                    plan.ready_after = time.monotonic() - started
                    log(f"{plan.name}: first poll cycle done after {plan.ready_after:.1f}s")
                    return
        if time.monotonic() - started > within:
            raise BenchError(f"exporter {plan.name}: not ready in {within:.0f}s")
        await asyncio.sleep(0.5)


async def webhook_metrics(session: aiohttp.ClientSession, plan: Plan) -> dict[str, float]:
    """The exporter's ``realtimekit_exporter_webhook_*`` samples, by series."""
    async with session.get(plan.metrics_url, headers={"Accept": TEXT_ACCEPT}) as response:
        body = await response.read()
    out = {}
    for line in body.splitlines():
        if line.startswith(b"realtimekit_exporter_webhook_"):
            series, _, value = line.decode().rpartition(" ")
            out[series] = float(value)
    return out


def control_client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8),
        timeout=aiohttp.ClientTimeout(total=120),
        trust_env=False,
    )


async def get_json(session: aiohttp.ClientSession, url: str, **params: Any) -> Any:
    async with session.get(url, params=params) as response:
        if response.status != 200:
            raise BenchError(f"GET {url} answered {response.status}")
        return await response.json()


async def live_streams(session: aiohttp.ClientSession, plan: Plan) -> dict[str, int]:
    """Every stream the simulator has live: id -> its place in the control list (where
    ``per_page=1`` finds it again), read a page at a time."""
    url = plan.origin + "/-/simulator/livestreams"
    found: dict[str, int] = {}
    page = 1
    while True:
        body = await get_json(session, url, per_page=CONTROL_PAGE, page_no=page)
        for offset, view in enumerate(body["livestreams"]):
            if view["live"]:
                found[view["id"]] = (page - 1) * CONTROL_PAGE + offset
        if page * CONTROL_PAGE >= body["total_count"] or not body["livestreams"]:
            return found
        page += 1


async def is_live(session: aiohttp.ClientSession, plan: Plan, sid: str) -> bool:
    """Whether the simulator shows the stream live now (one stream's page of the list)."""
    index = plan.live_at_start[sid]
    url = plan.origin + "/-/simulator/livestreams"
    body = await get_json(session, url, per_page=1, page_no=index + 1)
    views = body["livestreams"]
    return bool(views) and views[0]["id"] == sid and bool(views[0]["live"])


# -- measuring ------------------------------------------------------------------------
async def scrape_loop(plan: Plan, window: Window, every: float, pending_every: float) -> None:
    """Read the exporter's /metrics (text format, no compression) every ``every`` seconds
    (``pending_every`` while a stop is not seen yet), or back to back when a scrape takes
    longer, until the window (and its drain) is over."""
    tracker = plan.tracker
    headers = {"Accept": TEXT_ACCEPT, "Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=300),
        auto_decompress=False,
        trust_env=False,
    ) as session:
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= window.scrape_until or (now >= window.end and not tracker.pending):
                return
            plan.check()
            sent = time.monotonic()
            try:
                async with session.get(plan.metrics_url, headers=headers) as response:
                    at, wall = time.monotonic(), time.time()
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                tracker.failures.append(f"{type(exc).__name__}: {exc}")
                status, body = 0, b""
            if status == 200:
                tracker.observe(body, sent, at, wall, window, time.monotonic() - sent)
            elif status:
                tracker.failures.append(f"HTTP {status}")
            # Faster while a stop is not seen yet: its latency is read to that resolution.
            step = min(every, pending_every) if tracker.pending else every
            next_at = max(next_at + step, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())


async def stop_stream(
    session: aiohttp.ClientSession, plan: Plan, sid: str, *, shared: bool
) -> None:
    url = f"{plan.origin}/-/simulator/livestreams/{sid}/stop"
    exporter_live = sid in plan.tracker.live
    sent, wall = time.monotonic(), time.time()
    async with session.post(url, json={"status": "IDLE"}) as response:
        body = await response.json()
        if response.status != 200 or body.get("live"):
            raise BenchError(f"{plan.name}: stopping {sid} answered {response.status}: {body}")
    rtt = time.monotonic() - sent
    plan.tracker.add_stop(Stop(sid, sent, wall, rtt, exporter_live, shared))


async def pick(
    session: aiohttp.ClientSession,
    plans: list[Plan],
    order: list[str],
    used: set[str],
    *,
    exporter_live: bool,
) -> str | None:
    """A stream live on every plan's simulator now (and, if ``exporter_live``, in every
    plan's exporter's latest scrape), not stopped before; None after a bounded search.
    Streams found not live everywhere are set aside for good."""
    lookups = 0
    for sid in order:
        if sid in used or not all(sid in p.live_at_start for p in plans):
            continue
        if exporter_live and not all(sid in p.tracker.live for p in plans):
            continue
        if lookups >= LOOKUPS_PER_PASS:
            return None
        lookups += 1
        states = await asyncio.gather(*(is_live(session, p, sid) for p in plans))
        if all(states):
            return sid
        used.add(sid)
    return None


async def stopper(plans: list[Plan], window: Window, args: argparse.Namespace) -> None:
    """In every ``--stops-every`` seconds from the window's start until ``--stop-tail``
    seconds before its end, stop one live stream, the same on every plan if it can."""
    assert window.start is not None
    rng = random.Random(args.seed)
    async with control_client() as session:
        for plan in plans:
            plan.live_at_start = await live_streams(session, plan)
        order = sorted(set().union(*(p.live_at_start for p in plans)))
        rng.shuffle(order)
        used: dict[str, set[str]] = {p.name: set() for p in plans}
        shared_used: set[str] = set()
        last = window.end - args.stop_tail
        k = 0
        # One stop per slot, at a random moment of it: stops at fixed steps would meet
        # the poll cycle at a few phases only (every 10 s against 15 s cycles: three).
        while (due := window.start + (k + rng.random()) * args.stops_every) <= last:
            k += 1
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            for plan in plans:
                plan.check()
            sid = None
            for exporter_live in (True, False):
                sid = await pick(session, plans, order, shared_used, exporter_live=exporter_live)
                if sid is not None:
                    break
            if sid is not None:
                shared_used.add(sid)
                for plan in plans:
                    used[plan.name].add(sid)
                await asyncio.gather(
                    *(stop_stream(session, p, sid, shared=len(plans) > 1) for p in plans)
                )
                continue
            # No stream is live on every simulator: each plan stops one of its own.
            for plan in plans:
                for exporter_live in (True, False):
                    sid = await pick(
                        session, [plan], order, used[plan.name], exporter_live=exporter_live
                    )
                    if sid is not None:
                        break
                if sid is None:
                    log(f"{plan.name}: no live stream left to stop")
                    continue
                used[plan.name].add(sid)
                shared_used.add(sid)
                await stop_stream(session, plan, sid, shared=False)


async def measure(
    plans: list[Plan], args: argparse.Namespace, workdir: Path, window: Window
) -> None:
    """Start everything, warm up, measure; the simulators' stats go into the plans."""
    await start(plans, args, workdir)
    try:
        async with asyncio.TaskGroup() as group:
            for plan in plans:
                group.create_task(
                    scrape_loop(plan, window, args.scrape_every, args.pending_scrape_every)
                )
            log(f"warm-up: {args.warmup:g}s")
            await asyncio.sleep(args.warmup)
            async with control_client() as session:
                for plan in plans:
                    plan.stats_start = await get_json(session, plan.origin + "/-/simulator/stats")
            window.start = time.monotonic()
            window.end = window.start + args.duration
            window.scrape_until = window.end + args.drain
            log(
                f"measuring for {args.duration:g}s: a stop every {args.stops_every:g}s "
                f"until {args.stop_tail:g}s before the end"
            )
            group.create_task(stopper(plans, window, args))
            await asyncio.sleep(args.duration)
            async with control_client() as session:
                for plan in plans:
                    plan.stats_end = await get_json(session, plan.origin + "/-/simulator/stats")
                    if plan.webhooks:
                        plan.webhook_metrics = await webhook_metrics(session, plan)
            if args.drain > 0 and any(p.tracker.pending for p in plans):
                log(f"draining: up to {args.drain:g}s for stops not seen yet")
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        window.finished = time.monotonic()
    for plan in plans:
        plan.tracker.finish()
        plan.check()


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a task group's failure reads as: its first BenchError, else its first error."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    return next((e for e in leaves if isinstance(e, BenchError)), leaves[0])


# -- results --------------------------------------------------------------------------
def latency_summary(stops: list[Stop], end: float) -> dict[str, Any]:
    seen = [s.latency for s in stops if s.latency is not None]
    censored = [end - s.at for s in stops if s.latency is None]
    everything = seen + censored
    return {
        "stops": len(stops),
        "seen": len(seen),
        "censored": len(censored),
        # Seen because the series was gone, not because it read 0 (the exporter dropped
        # the stream: stale past poll.max_staleness, or no longer listed).
        "seen_gone": sum(s.gone for s in stops if s.latency is not None),
        "p50_s": percentile(seen, 0.5),
        "p99_s": percentile(seen, 0.99),
        "max_s": max(everything) if everything else math.nan,
        # With a stop not seen, the real maximum is at least max_s.
        "max_is_lower_bound": bool(censored),
        "censored_after_s": sorted(censored),
        "shared": sum(s.shared for s in stops),
        "not_live_in_exporter_at_stop": sum(not s.exporter_live for s in stops),
    }


def request_summary(plan: Plan, rate: RateLimit, live: int, seconds: float) -> dict[str, Any]:
    """The simulator's counts: over the whole run, and over the measuring period."""
    end, begin = plan.stats_end, plan.stats_start

    def by_endpoint(stats: dict[str, Any]) -> dict[str, int]:
        return {e: sum(codes.values()) for e, codes in stats.get("requests", {}).items()}

    def refused(stats: dict[str, Any]) -> int:
        return sum(codes.get("429", 0) for codes in stats.get("requests", {}).values())

    whole, before = by_endpoint(end), by_endpoint(begin)
    during = {e: n - before.get(e, 0) for e, n in whole.items() if n - before.get(e, 0)}
    status_lane = during.get("livestreams", 0) + during.get("livestream", 0)
    per_window = status_lane * rate.window / seconds if seconds > 0 else math.nan
    room = rate.requests - per_window
    bound = live * rate.window / room if room > 0 else math.inf
    busiest = end.get("busiest_window", {})
    return {
        "busiest_window": busiest.get("requests"),
        "busiest_window_ended_at": busiest.get("ended_at"),
        "total": end.get("total"),
        "429": refused(end),
        "by_endpoint": whole,
        "by_code": end.get("requests", {}),
        "measuring": {
            "seconds": seconds,
            "total": end.get("total", 0) - begin.get("total", 0),
            "429": refused(end) - refused(begin),
            "by_endpoint": during,
        },
        "status_lane_per_window": per_window,
        "refresh_bound_s": bound,
    }


def plan_result(plan: Plan, args: argparse.Namespace, window: Window) -> dict[str, Any]:
    assert window.start is not None
    end = window.finished or time.monotonic()
    seconds = args.duration
    tracker = plan.tracker
    rate: RateLimit = args.rate_limit
    requests = request_summary(plan, rate, args.live, seconds)
    stops = latency_summary(tracker.stops, end)
    gaps = list(tracker.gaps.values())
    ages = list(tracker.ages)
    intervals = [b - a for a, b in zip(tracker.sent, tracker.sent[1:], strict=False)]
    result: dict[str, Any] = {
        "plan": plan.name,
        "commit": plan.commit,
        "tree": str(plan.tree),
        "package": plan.package,
        "exporter_cwd": plan.exporter_cwd,
        "build_info": tracker.build_info,
        "ready_after_s": plan.ready_after,
        "timestamp_family": dict(tracker.timestamp_families),
        "up_share": tracker.up / tracker.measured if tracker.measured else math.nan,
        "stop_latency": stops,
        "stops": [
            {
                "livestream_id": s.livestream_id,
                "at_s": s.at - window.start,
                "wall": s.wall,
                "latency_s": s.latency,
                "rtt_s": s.rtt,
                "gone": s.gone,
                "exporter_live": s.exporter_live,
                "shared": s.shared,
            }
            for s in tracker.stops
        ],
        "counter_age": {
            "samples": len(ages),
            "p50_s": percentile(ages, 0.5),
            "max_s": max(ages) if ages else math.nan,
            "live_without_timestamp": tracker.missing_timestamps,
        },
        "refresh_period": {
            "streams": len(gaps),
            "p50_s": percentile(gaps, 0.5),
            "max_s": max(gaps) if gaps else math.nan,
        },
        "requests": requests,
        "scrapes": {
            "total": tracker.scrapes,
            "measured": tracker.measured,
            "interval_p50_s": percentile(intervals, 0.5),
            "interval_max_s": max(intervals) if intervals else math.nan,
            "duration_p50_s": percentile(tracker.durations, 0.5),
            "duration_max_s": max(tracker.durations) if tracker.durations else math.nan,
            "body_bytes": tracker.body_bytes,
            "failures": tracker.failures[:10],
            "failed": len(tracker.failures),
        },
        "log_warnings": log_warnings(plan.exporter),
        "webhook_metrics": plan.webhook_metrics,
    }
    result["targets"] = plan_targets(result, args)
    result["warnings"] = caveats(result, args)
    return result


def caveats(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What makes this plan's figures less than they seem."""
    rate: RateLimit = args.rate_limit
    out = []
    if result["requests"]["refresh_bound_s"] < args.interval:
        out.append(
            f"the refresh bound is below one poll interval ({args.interval:g}s): counters "
            "are fetched at most once a cycle, so no plan can meet it"
        )
    if args.duration < rate.window:
        out.append(
            f"measured {args.duration:g}s, less than the {rate.window:g}s rate-limit window: "
            "the status lane's rate is extrapolated from it"
        )
    stops, scrapes = result["stop_latency"], result["scrapes"]
    if stops["seen_gone"]:
        out.append(f"{stops['seen_gone']} stops were seen as a series gone, not as a 0")
    if stops["not_live_in_exporter_at_stop"]:
        out.append(
            f"{stops['not_live_in_exporter_at_stop']} stopped streams were not live in the "
            "exporter at the stop"
        )
    missing, ages = result["counter_age"]["live_without_timestamp"], result["counter_age"]
    if missing:
        out.append(
            f"{missing} of {missing + ages['samples']} live-stream samples had no timestamp "
            "(counters not fetched yet?): left out of the ages and refresh periods"
        )
    if scrapes["interval_max_s"] > 2 * args.scrape_every:
        out.append(
            f"scrapes fell behind: up to {scrapes['interval_max_s']:.1f}s apart "
            f"(each took up to {scrapes['duration_max_s']:.1f}s)"
        )
    if scrapes["failed"]:
        out.append(f"{scrapes['failed']} scrapes failed: {scrapes['failures'][:3]}")
    if result["requests"]["429"]:
        out.append(f"the simulator answered {result['requests']['429']} requests with 429")
    if result["up_share"] < 1:
        out.append(f"realtimekit_up was 1 in {result['up_share']:.0%} of the scrapes")
    return out


def log_warnings(child: Child | None, most: int = 20) -> list[str]:
    if child is None:
        return []
    lines = [
        line[:300]
        for line in child.log().splitlines()
        if " level=warn" in line or " level=error" in line or " level=critical" in line
    ]
    return lines[:most]


def plan_targets(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Value, target and verdict: met, MISSED, or unknown (nothing measured)."""
    rate: RateLimit = args.rate_limit
    stops = result["stop_latency"]
    requests = result["requests"]
    checks = {
        "stop_latency_max_s": (stops["max_s"], stop_target(args.interval)),
        **(
            {"stop_latency_p99_s": (stops["p99_s"], HOOKS_STOP_TARGET)}
            if result["plan"] == "hooks"
            else {}
        ),
        "busiest_window_requests": (requests["busiest_window"], float(rate.requests)),
        "refresh_period_max_s": (result["refresh_period"]["max_s"], requests["refresh_bound_s"]),
    }
    out: dict[str, Any] = {}
    for name, (value, limit) in checks.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            verdict = "unknown"
        else:
            verdict = "met" if value <= limit else "MISSED"
        out[name] = {"value": value, "target": limit, "verdict": verdict}
    # A stop not seen within the run (its latency at least censored_after_s) meets the
    # target only if it had less time than the target to show.
    if stops["censored"] and out["stop_latency_max_s"]["verdict"] == "met":
        out["stop_latency_max_s"]["verdict"] = "unknown"
    return out


def _s(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: Iterable[dict[str, Any]]) -> str:
    head = [
        "plan",
        "stops",
        "seen",
        "stop p50 s",
        "stop p99 s",
        "stop max s",
        "age p50 s",
        "age max s",
        "refresh p50 s",
        "refresh max s",
        "busiest 5 min",
        "429s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            cells = [r["plan"], f"failed: {r['error'][:80]}"] + [""] * (len(head) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        stops, age, refresh = r["stop_latency"], r["counter_age"], r["refresh_period"]
        top = _s(stops["max_s"])
        if stops["max_is_lower_bound"] and top != "-":
            top = ">= " + top
        cells = [
            r["plan"],
            str(stops["stops"]),
            str(stops["seen"]),
            _s(stops["p50_s"]),
            _s(stops["p99_s"]),
            top,
            _s(age["p50_s"]),
            _s(age["max_s"]),
            _s(refresh["p50_s"]),
            _s(refresh["max_s"]),
            _s(r["requests"]["busiest_window"]),
            _s(r["requests"]["429"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def requests_table(results: Iterable[dict[str, Any]]) -> str:
    head = [
        "plan",
        "requests",
        "by endpoint",
        "measuring: by endpoint",
        "status lane / window",
        "refresh bound s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            continue
        req = r["requests"]
        whole, during = (
            ", ".join(f"{e} {n}" for e, n in sorted(counts.items())) or "-"
            for counts in (req["by_endpoint"], req["measuring"]["by_endpoint"])
        )
        cells = [
            r["plan"],
            _s(req["total"]),
            whole,
            during,
            _s(req["status_lane_per_window"]),
            _s(req["refresh_bound_s"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(results: Iterable[dict[str, Any]]) -> list[str]:
    names = {
        "stop_latency_max_s": "stop latency max",
        "stop_latency_p99_s": "stop latency p99",
        "busiest_window_requests": "busiest window",
        "refresh_period_max_s": "refresh period max",
    }
    lines = []
    for r in results:
        if "error" in r:
            continue
        checks = ", ".join(
            f"{names[k]} {_s(c['value'])} (<= {_s(c['target'])}: {c['verdict']})"
            for k, c in r["targets"].items()
        )
        lines.append(f"targets, {r['plan']}: {checks}")
        lines += [f"  note, {r['plan']}: {w}" for w in r["warnings"]]
    return lines


# -- main -----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.freshness",
        description="How soon the exporter shows a livestream stopping under the API's rate "
        "limit, for this working tree (new) and an older commit (old) side by side (see "
        "bench/README.md).",
    )

    def plans(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names or any(n not in PLANS for n in names) or len(set(names)) < len(names):
            raise argparse.ArgumentTypeError(f"{text!r}: a list of {', '.join(PLANS)}")
        return names

    parser.add_argument(
        "--plans",
        type=plans,
        default=list(DEFAULT_PLANS),
        help="which plans to run, of hooks, new and old (new,old)",
    )
    parser.add_argument(
        "--old-commit",
        default=DEFAULT_OLD_COMMIT,
        help=f"the commit the old plan runs ({DEFAULT_OLD_COMMIT})",
    )
    parser.add_argument("--livestreams", type=int, default=10_000, help="N (10000)")
    parser.add_argument("--live", type=int, default=500, help="L, live at any time (500)")
    parser.add_argument("--interval", type=float, default=15.0, help="poll.interval, s (15)")
    parser.add_argument(
        "--rate-limit",
        default="1200/5m",
        help="the simulator's per-token limit and the exporter's api.rate_limit (1200/5m)",
    )
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (1)")
    parser.add_argument(
        "--profile",
        choices=["realistic", "demo"],
        default="realistic",
        help="simulator profile (realistic: live 10-60 min)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=8, help="exporter api.max_concurrency (8)"
    )
    parser.add_argument(
        "--max-staleness",
        type=float,
        default=None,
        help="exporter poll.max_staleness, s (max(300, 3 x interval))",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds after every exporter's first poll cycle before measuring (60)",
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of measuring (600)")
    parser.add_argument(
        "--stops-every", type=float, default=20.0, help="seconds between stops (20)"
    )
    parser.add_argument(
        "--stop-tail",
        type=float,
        default=None,
        help="no stops in the last this many seconds of the measuring period, so that a "
        "stop meeting the target is seen within it (the target, 2 x interval + 10, or half "
        "of --duration if less)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="after the measuring period, go on scraping (nothing else measured) up to "
        "this many seconds while stops are still unseen (0)",
    )
    parser.add_argument(
        "--scrape-every", type=float, default=1.0, help="seconds between scrapes (1)"
    )
    parser.add_argument(
        "--pending-scrape-every",
        type=float,
        default=0.1,
        help="seconds between scrapes while a stop is not seen yet (0.1)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=None,
        help="seconds to wait for the first poll cycle (default: room for three naive "
        "cycles at the budget's pace)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "freshness.json", help="JSON output path"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs (else on failure only)"
    )
    args = parser.parse_args(argv)
    try:
        args.rate_limit_text = args.rate_limit
        args.rate_limit = parse_rate_limit(args.rate_limit)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--rate-limit: {exc}")
    if not 0 <= args.live <= args.livestreams or args.livestreams < 1:
        parser.error("need 1 <= --livestreams and 0 <= --live <= --livestreams")
    if (
        min(
            args.interval,
            args.duration,
            args.stops_every,
            args.scrape_every,
            args.pending_scrape_every,
        )
        <= 0
    ):
        parser.error("--interval, --duration, --stops-every and --scrape-every must be > 0")
    if args.warmup < 0 or args.drain < 0:
        parser.error("--warmup and --drain must be >= 0")
    if args.max_staleness is None:
        args.max_staleness = max(300.0, 3 * args.interval)
    if args.stop_tail is None:
        args.stop_tail = min(stop_target(args.interval), args.duration / 2)
    if not 0 <= args.stop_tail < args.duration:
        parser.error("--stop-tail must be at least 0 and less than --duration")
    return args


async def run(args: argparse.Namespace, report: dict[str, Any], workdir: Path) -> None:
    """Both plans (or those asked for) at once; their results go into ``report`` also when
    the run fails or is interrupted (a plan not measured says so)."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    plans: list[Plan] = []
    window = Window()
    try:
        for name in args.plans:
            if name in ("new", "hooks"):
                plans.append(Plan(name, ROOT, git("rev-parse", "HEAD"), webhooks=name == "hooks"))
            else:
                tree, commit = add_worktree(args.old_commit)
                log(f"old: worktree of {commit[:12]} at {tree}")
                plans.append(Plan("old", tree, commit))
        await measure(plans, args, workdir, window)
    finally:
        report["results"] = [
            plan_result(plan, args, window)
            if plan.stats_end and window.start is not None
            else {"plan": plan.name, "error": "not measured: the run stopped early"}
            for plan in plans
        ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"meta": meta(), "results": []}
    report["meta"]["old_commit"] = args.old_commit
    report["settings"] = {
        "livestreams": args.livestreams,
        "live": args.live,
        "interval_s": args.interval,
        "rate_limit": args.rate_limit_text,
        "seed": args.seed,
        "profile": args.profile,
        "max_per_page": MAX_PER_PAGE,
        "max_concurrency": args.max_concurrency,
        "max_staleness_s": args.max_staleness,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "stops_every_s": args.stops_every,
        "stop_tail_s": args.stop_tail,
        "drain_s": args.drain,
        "scrape_every_s": args.scrape_every,
        "pending_scrape_every_s": args.pending_scrape_every,
        "stop_target_s": stop_target(args.interval),
    }
    workdir = Path(tempfile.mkdtemp(prefix="rtk-fresh-"))
    code = 0
    try:
        asyncio.run(run(args, report, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log(f"interrupted; logs kept in {workdir}")
        report["error"] = "interrupted"
        code = 130
    except BenchError as exc:
        log(f"FAILED: {exc}\n  logs kept in {workdir}")
        report["error"] = str(exc)
        code = 1
    finally:
        stop_all()
        remove_worktrees()
    report["meta"]["loadavg_end"] = os.getloadavg()
    if code == 0 and not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report["logs"] = str(workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    results = report["results"]
    print(table(results))
    print()
    print(requests_table(results))
    print()
    for line in target_lines(results):
        print(line)
    meta_ = report["meta"]
    print(
        f"commit {meta_['commit']}{' (dirty)' if meta_['dirty'] else ''} (new) vs "
        f"{args.old_commit} (old); N={args.livestreams:,}, L={args.live:,}, "
        f"interval {args.interval:g}s, rate limit {args.rate_limit_text}, "
        f"{meta_['cpu_count']} cores, load {meta_['loadavg_start'][0]:.2f} -> "
        f"{meta_['loadavg_end'][0]:.2f}; JSON: {args.out}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
