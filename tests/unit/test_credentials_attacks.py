"""The adversarial pass over several credentials and app analytics (issue 16): attacks on
the fleet of units (reload races, isolation between tokens), the analytics' budget and
bodies, secrets and bounds. Each test here is an attack that found a defect, or a race
no other test pins; the whole list of attacks tried is in docs/reliability.md ("Several
credentials: the adversarial pass")."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.parser import text_string_to_metric_families

from exporter import config as config_module
from exporter import statuspage
from exporter.budget import RequestBudget
from exporter.client import (
    ENDPOINT_ANALYTICS,
    ENDPOINT_ANALYTICS_DAYS,
    ApiError,
    RealtimeKitClient,
)
from exporter.config import (
    ApiConfig,
    AppConfig,
    Config,
    ConfigError,
    PollConfig,
    RateLimit,
    Secret,
)
from exporter.model import AppState, Snapshot
from exporter.poller import Poller
from exporter.render import render_part
from exporter.server import Exporter, Server
from exporter.simulator import Canned, Faults, Simulator, World
from exporter.simulator.ratelimit import RateLimiter
from exporter.simulator.tokens import SimToken
from tests.analyticsapi import APPS, TotalsApi, reader
from tests.analyticsapi import cycle as analytics_cycle
from tests.clock import FakeClock
from tests.conftest import API_T0
from tests.faultapi import FaultApi, Hang, Request
from tests.files import dev_zero, directory, fifo
from tests.reloading import exporter_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TOKEN_A: Final = "attack-a-token-51c0e7d2b94f4a38"
TOKEN_B: Final = "attack-b-token-0d83a6f1c27e4b95"
ACC_A, ACC_B = "acc-a", "acc-b"


# -- helpers ---------------------------------------------------------------------------
def accounts() -> Simulator:
    """acc-a (app-a) read with TOKEN_A, which may read every account; acc-b (app-b and
    app-b2) with TOKEN_B, which may read acc-b alone. One live stream in each app."""
    world = World(clock=FakeClock(API_T0))
    for account, app in ((ACC_A, "app-a"), (ACC_B, "app-b"), (ACC_B, "app-b2")):
        world.populate(account, app, 0)
        world.create(account, app, livestream_id=f"{app}-ls1")
        world.go_live(f"{app}-ls1")
    return Simulator(
        world,
        token=TOKEN_A,
        tokens=(SimToken("b", TOKEN_B, frozenset({ACC_B})),),
        ip_limiter="off",
    )


def write(path: Path, base_url: str, apps: dict[str, str], *, interval: str = "30s") -> Path:
    """A config reading each app of ``apps`` (app id -> credentials name) with those
    credentials; agency-b reads with TOKEN_B."""
    lines = [
        "api:",
        f"  base_url: {base_url}",
        f"  token: {TOKEN_A}",
        "  timeout: 2s",
        "poll:",
        f"  interval: {interval}",
        "apps:",
    ]
    for app, credentials in apps.items():
        account = ACC_A if app == "app-a" else ACC_B
        lines += [
            f"  - account_id: {account}",
            f"    app_id: {app}",
            "    discover: true",
            f"    credentials: {credentials}",
        ]
    lines += ["credentials:", "  agency-b:", f"    token: {TOKEN_B}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def samples(exporter: Exporter, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of the family ``name`` in the whole exposition, as text parses it."""
    text = generate_latest(exporter.registry).decode()
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


# -- 1. reload races ----------------------------------------------------------------------
async def test_an_app_moved_to_other_credentials_is_exported_once(tmp_path: Path) -> None:
    """A reload moves app-b from agency-b to the default credentials; the default unit's
    next cycle comes first, and reads app-b with its token. agency-b's last snapshot
    still held app-b: the merged snapshot had it twice, and /metrics two samples of
    realtimekit_up for one app (Prometheus rejects the whole scrape for a duplicate)."""
    async with accounts() as sim:
        path = write(
            tmp_path / "c.yaml",
            sim.base_url,
            {"app-a": "default", "app-b": "agency-b", "app-b2": "agency-b"},
        )
        async with exporter_for(path) as (exporter, reloader, _):
            await exporter.poller.poll_once(analytics=True)
            write(
                path, sim.base_url, {"app-a": "default", "app-b": "default", "app-b2": "agency-b"}
            )
            assert await reloader.reload() is None
            default = exporter.poller.unit("default").poller
            await default.poll_once()  # agency-b's next cycle comes later
            await default.analytics_settled()
            keys = [app.key for app in exporter.poller.snapshot.apps]
            assert sorted(keys) == sorted(set(keys))
            for family in ("realtimekit_up", "realtimekit_app_analytics_enabled"):
                apps = [labels["app_id"] for labels, _ in samples(exporter, family)]
                assert sorted(apps) == ["app-a", "app-b", "app-b2"], family
            info = samples(exporter, "realtimekit_app_info")
            assert {(labels["app_id"], labels["credentials"]) for labels, _ in info} == {
                ("app-a", "default"),
                ("app-b", "default"),
                ("app-b2", "agency-b"),
            }
            await exporter.poller.unit("agency-b").poller.poll_once()
            assert len(exporter.poller.snapshot.apps) == 3


async def test_a_reload_that_adds_credentials_keeps_the_process_ready(tmp_path: Path) -> None:
    """Ready, then a reload adds agency-b: /-/ready stays 200 and the status page keeps
    its apps while agency-b's first cycle runs. Fleet.ready asked every unit for a
    completed cycle, and the merged snapshot took the least cycle count (0): a reload
    made the process unready (a Kubernetes readiness probe takes it out of service) and
    the status page said "No poll yet" until the new token's first cycle ended."""
    async with accounts() as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default"})
        async with exporter_for(path) as (exporter, reloader, _):
            await exporter.poller.poll_once()
            assert exporter.poller.ready
            write(path, sim.base_url, {"app-a": "default", "app-b": "agency-b"})
            assert await reloader.reload() is None
            assert not exporter.poller.unit("agency-b").poller.ready  # its first cycle is due
            assert exporter.poller.ready
            assert exporter.poller.snapshot.cycles >= 1
            assert [a.app_id for a in exporter.poller.snapshot.apps] == ["app-a"]


def write_rated(path: Path, base_url: str, *, with_b: bool, b_rate: str = "1000/5m") -> Path:
    """app-a read with the default credentials; with ``with_b``, app-b with agency-b at
    ``b_rate``."""
    write(path, base_url, {"app-a": "default", **({"app-b": "agency-b"} if with_b else {})})
    if with_b:
        text = path.read_text(encoding="utf-8") + f"    rate_limit: {b_rate}\n"
        path.write_text(text, encoding="utf-8")
    return path


def ours() -> set[asyncio.Task[Any]]:
    """The tasks running the exporter's code (not the simulator's handlers, not this test)."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and "/exporter/" in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
        and "/simulator/" not in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    }


async def test_credentials_removed_while_their_cycle_waits_for_the_budget(
    tmp_path: Path,
) -> None:
    """agency-b's budget (1/5m) is spent after its first request: its cycle waits five
    minutes for the window. A reload removes agency-b: its poller ends at once, its
    series are gone and stay gone, app-a is polled on, and closing leaves no task."""
    async with accounts() as sim:
        path = write_rated(tmp_path / "c.yaml", sim.base_url, with_b=True, b_rate="1/5m")
        async with exporter_for(path) as (exporter, reloader, _):
            fleet = exporter.poller
            before = ours()
            run = asyncio.create_task(fleet.run(stop := asyncio.Event()))
            unit = fleet.unit("agency-b")
            budget = unit.token.budget
            await until(lambda: budget.available() == 0 and bool(budget._queue))
            write_rated(path, sim.base_url, with_b=False)
            assert await reloader.reload() is None
            assert unit.task is not None
            await asyncio.wait_for(asyncio.wait({unit.task}), 5)
            assert not budget._queue  # nothing waits for the retired budget
            text = generate_latest(exporter.registry).decode()
            assert 'credentials="agency-b"' not in text
            assert 'app_id="app-b"' not in text
            cycles = fleet.unit("default").poller.snapshot.cycles
            await fleet.unit("default").poller.poll_once()
            assert fleet.unit("default").poller.snapshot.cycles == cycles + 1
            stop.set()
            await asyncio.wait_for(run, 5)
            await fleet.close()
        assert ours() <= before


async def test_credentials_removed_with_requests_in_flight_leave_no_series_behind(
    tmp_path: Path,
) -> None:
    """Every request is held by the API; a reload removes agency-b, whose cycle has a
    request in flight; then the API answers. No series of agency-b comes back (neither
    from the answers of its requests nor from its cycle's end), and the process stops
    with no task of agency-b left."""
    async with accounts() as sim:
        path = write_rated(tmp_path / "c.yaml", sim.base_url, with_b=True)
        async with exporter_for(path) as (exporter, reloader, _):
            fleet = exporter.poller
            run = asyncio.create_task(fleet.run(stop := asyncio.Event()))
            await until(lambda: fleet.ready)
            sim.state.faults = Faults(hold=True)
            held = len(sim.state.log)
            unit = fleet.unit("agency-b")
            cycle = asyncio.create_task(unit.poller.poll_once())
            await until(lambda: any(s.token_name == "b" for s in list(sim.state.log)[held:]))
            write_rated(path, sim.base_url, with_b=False)
            assert await reloader.reload() is None
            sim.state.faults = Faults()
            await asyncio.wait({cycle}, timeout=5)
            await fleet.unit("default").poller.poll_once()
            text = generate_latest(exporter.registry).decode()
            assert 'credentials="agency-b"' not in text
            assert 'app_id="app-b"' not in text
            stop.set()
            await asyncio.wait_for(run, 5)
            await fleet.close()
            assert not ours()


async def test_credentials_removed_and_added_again_keep_their_budgets_window(
    tmp_path: Path,
) -> None:
    """agency-b spends requests of its budget; one reload removes it and the next brings
    it back (an app commented out and in again). The grants of the current window still
    count: a fresh budget would let the token send a whole second budget within one of
    the API's windows (1000 + 1000 in 5 minutes is over Cloudflare's 1200: the token is
    blocked for 5 minutes). The old unit's requests still count nowhere in the metrics."""
    async with accounts() as sim:
        path = write_rated(tmp_path / "c.yaml", sim.base_url, with_b=True, b_rate="50/5m")
        async with exporter_for(path) as (exporter, _, _):
            fleet = exporter.poller
            await fleet.poll_once(analytics=True)
            spent = 50 - fleet.unit("agency-b").token.budget.available()
            assert spent > 0
            with_b = exporter.config
            exporter.reconfigure(
                config_module.load(str(write_rated(path, sim.base_url, with_b=False)))
            )
            exporter.reconfigure(with_b)
            unit = fleet.unit("agency-b")
            assert unit.token.budget.available() == 50 - spent
            requests = samples(exporter, "realtimekit_exporter_api_requests_total")
            assert sum(v for labels, v in requests if labels["credentials"] == "agency-b") == 0
            await fleet.poll_once(analytics=True)
            b_sent = sum(1 for s in sim.state.log if s.token_name == "b")
            requests = samples(exporter, "realtimekit_exporter_api_requests_total")
            counted = sum(v for labels, v in requests if labels["credentials"] == "agency-b")
            assert 0 < counted < b_sent  # the new unit's requests only
            assert unit.token.budget.available() == 50 - b_sent


@pytest.mark.parametrize(
    ("b_token", "c_token", "problem"),
    [
        (TOKEN_A, TOKEN_B, "credentials.agency-b: holds the same token as api"),
        (TOKEN_B, TOKEN_B, "credentials.agency-c: holds the same token as credentials.agency-b"),
    ],
    ids=["api-and-b", "b-and-c"],
)
def test_two_credentials_in_use_with_one_token_are_refused(
    tmp_path: Path, b_token: str, c_token: str, problem: str
) -> None:
    """Two names for one token gave it two budgets: together they could spend twice
    api.rate_limit in one of the API's windows, and the token is blocked for 5 minutes
    (the same token read from a file counts too). The error names both, never the token."""
    (tmp_path / "c.token").write_text(c_token + "\n", encoding="utf-8")
    text = f"""
api: {{token: {TOKEN_A}}}
credentials:
  agency-b: {{token: {b_token}}}
  agency-c: {{token_file: c.token}}
apps:
  - {{account_id: a, app_id: a, discover: true}}
  - {{account_id: b, app_id: b, discover: true, credentials: agency-b}}
  - {{account_id: c, app_id: c, discover: true, credentials: agency-c}}
"""
    with pytest.raises(ConfigError) as caught:
        config_module.loads(text, base_dir=tmp_path)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    for token in (TOKEN_A, TOKEN_B):
        assert token not in str(caught.value)


def test_credentials_not_in_use_may_share_a_token() -> None:
    """A token named twice where only one of the names is used by apps costs one budget
    (an unused api token from the environment, say): no problem."""
    text = f"""
api: {{token: {TOKEN_A}}}
credentials:
  agency-b: {{token: {TOKEN_A}}}
apps:
  - {{account_id: b, app_id: b, discover: true, credentials: agency-b}}
"""
    assert config_module.loads(text).credential_names() == ("agency-b",)


async def test_a_bug_in_the_poller_of_credentials_added_by_a_reload_stops_the_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller of agency-b, which a reload added, raises (a bug): the fleet stops the
    other pollers and raises it, so that the process exits for a restart rather than
    serve agency-b's apps frozen."""
    async with accounts() as sim:
        path = write_rated(tmp_path / "c.yaml", sim.base_url, with_b=False)
        async with exporter_for(path) as (exporter, reloader, _):
            fleet = exporter.poller
            run = asyncio.create_task(fleet.run(asyncio.Event()))
            await until(lambda: fleet.ready)
            poll_once = Poller.poll_once

            async def broken(poller: Poller) -> Snapshot:
                if poller is fleet.unit("default").poller:
                    return await poll_once(poller)
                raise ZeroDivisionError("a bug")

            monkeypatch.setattr(Poller, "poll_once", broken)
            write_rated(path, sim.base_url, with_b=True)
            assert await reloader.reload() is None
            with pytest.raises(ZeroDivisionError):
                await asyncio.wait_for(run, 5)
            assert all(u.task is not None and u.task.done() for u in fleet.units.values())


@pytest.mark.parametrize("when", ["closing", "closed"])
async def test_a_reload_during_shutdown_leaves_no_task(tmp_path: Path, when: str) -> None:
    """A reload that adds agency-b lands while the server closes (a SIGHUP's reload is
    not waited for), or after: nothing raises, and once the exporter is closed no task
    of it is left (a poller started by the reload would poll with a closed session)."""
    async with accounts() as sim:
        path = write_rated(tmp_path / "c.yaml", sim.base_url, with_b=False)
        async with exporter_for(path) as (exporter, _, _):
            server = Server(exporter, host="127.0.0.1", port=0)
            await server.start()
            await until(lambda: exporter.poller.ready)
            added = config_module.load(str(write_rated(path, sim.base_url, with_b=True)))
            closing = asyncio.create_task(server.close())
            if when == "closing":
                await asyncio.sleep(0)
                exporter.reconfigure(added)
            await asyncio.wait_for(closing, 5)
            if when == "closed":
                exporter.reconfigure(added)
            assert server.failure is None
        await asyncio.sleep(0)
        assert not ours()


async def test_credentials_removed_while_their_analytics_hang_end_them(tmp_path: Path) -> None:
    """agency-b's analytics requests hang at the API; a reload removes agency-b while its
    round waits: the round ends with its poller (no task left, no series of agency-b),
    and the default credentials' cycles go on."""
    async with accounts() as sim, FaultApi(sim) as api:

        def hang_b_analytics(request: Request) -> Hang | None:
            token = request.headers.get("authorization", "")
            return Hang() if TOKEN_B in token and "/analytics/" in request.uri else None

        api.fault = hang_b_analytics
        path = write_rated(tmp_path / "c.yaml", api.base_url, with_b=True)
        async with exporter_for(path) as (exporter, reloader, _):
            fleet = exporter.poller
            run = asyncio.create_task(fleet.run(stop := asyncio.Event()))
            unit = fleet.unit("agency-b")
            await until(lambda: api.stuck.is_set())
            round_ = unit.poller._analytics._task
            assert round_ is not None and not round_.done()
            write_rated(path, api.base_url, with_b=False)
            assert await reloader.reload() is None
            await asyncio.wait_for(asyncio.wait({round_}), 5)
            cycles = fleet.unit("default").poller.snapshot.cycles
            await fleet.unit("default").poller.poll_once()
            assert fleet.unit("default").poller.snapshot.cycles == cycles + 1
            text = generate_latest(exporter.registry).decode()
            assert 'credentials="agency-b"' not in text and 'app_id="app-b"' not in text
            stop.set()
            await asyncio.wait_for(run, 5)
            await fleet.close()
            assert not ours()


# -- 2. isolation -------------------------------------------------------------------------
async def test_a_hanging_api_for_one_token_does_not_slow_the_others_cycles(
    tmp_path: Path,
) -> None:
    """Every request with TOKEN_B hangs (its cycles end only at their deadline, a poll
    interval later): the default credentials' cycles stay short, and a stop of app-a's
    stream shows within about one interval."""
    async with accounts() as sim, FaultApi(sim) as api:
        api.fault = lambda r: Hang() if TOKEN_B in r.headers.get("authorization", "") else None
        path = write(
            tmp_path / "c.yaml",
            api.base_url,
            {"app-a": "default", "app-b": "agency-b"},
            interval="2s",
        )
        async with exporter_for(path) as (exporter, _, _):
            fleet = exporter.poller
            run = asyncio.create_task(fleet.run(stop := asyncio.Event()))
            try:
                default = fleet.unit("default").poller
                await until(lambda: default.snapshot.cycles >= 1 and api.stuck.is_set())
                sim.world.stop("app-a-ls1")
                stopped = asyncio.get_running_loop().time()

                def app_a_live() -> bool:
                    state = default.snapshot.app(ACC_A, "app-a")
                    return state is not None and any(s.live for s in state.streams)

                await until(lambda: not app_a_live(), 10)
                assert asyncio.get_running_loop().time() - stopped < 4.0  # two intervals
                durations = samples(exporter, "realtimekit_exporter_poll_duration_seconds_sum")
                counts = samples(exporter, "realtimekit_exporter_poll_duration_seconds_count")
                by = {labels["credentials"]: v for labels, v in durations}
                count = {labels["credentials"]: v for labels, v in counts}
                assert by["default"] / count["default"] < 0.5
            finally:
                stop.set()
                await asyncio.wait_for(run, 5)


async def test_a_hung_token_file_of_one_credentials_does_not_stop_anothers_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """agency-b's token file is on a file system that hangs, and a reload makes it check
    the file again (a second check hangs too); then the default credentials' token file
    rotates. Their checks shared two threads for the whole process: both held by
    agency-b's hung checks, the default credentials never took up their new token (and
    every request was refused once the old one was revoked)."""
    a_file, b_file = tmp_path / "a.token", tmp_path / "b.token"
    a_file.write_text(TOKEN_A + "\n", encoding="utf-8")
    b_file.write_text(TOKEN_B + "\n", encoding="utf-8")
    release = threading.Event()
    real_read = config_module.read_token_file

    def hanging_read(path: Path, *, shown: str | None = None) -> str:
        if path == b_file:
            release.wait(30)  # bounded, in case the test fails before setting it
        return real_read(path, shown=shown)

    async with accounts() as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default", "app-b": "agency-b"})
        text = path.read_text(encoding="utf-8")
        text = text.replace(f"token: {TOKEN_A}", "token_file: a.token")
        path.write_text(text.replace(f"token: {TOKEN_B}", "token_file: b.token"), encoding="utf-8")
        try:
            async with exporter_for(path) as (exporter, reloader, _):
                fleet = exporter.poller
                assert all(a.up for a in (await fleet.poll_once()).apps)
                monkeypatch.setattr("exporter.tokenfile.read_token_file", hanging_read)
                b_file.write_text(TOKEN_B + " \n", encoding="utf-8")  # changed: read again
                await fleet.poll_once()
                assert await reloader.reload() is None  # agency-b checks its file anew
                b_file.write_text(TOKEN_B + "  \n", encoding="utf-8")
                await fleet.poll_once()
                rotated = "attack-a-token-rotated-6e1f02c9b8"
                sim.state.token = rotated  # TOKEN_A is refused from now on
                a_file.write_text(rotated + "\n", encoding="utf-8")
                for _ in range(3):
                    snapshot = await fleet.poll_once()
                state = snapshot.app(ACC_A, "app-a")
                assert state is not None and state.up
        finally:
            release.set()


def empty(path: Path) -> None:
    path.write_text("", encoding="utf-8")


def gone(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("make", [fifo, empty, gone, directory, dev_zero])
async def test_one_credentials_token_file_broken_mid_run_keeps_every_app_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Callable[[Path], None]
) -> None:
    """agency-b's token file becomes a FIFO (no writer), empty, missing, a directory or
    /dev/zero while polling: agency-b keeps its token (one warning), every cycle ends in
    time, both apps stay up, and no request goes out without a token."""
    b_file = tmp_path / "b.token"
    b_file.write_text(TOKEN_B + "\n", encoding="utf-8")
    async with accounts() as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default", "app-b": "agency-b"})
        text = path.read_text(encoding="utf-8").replace(f"token: {TOKEN_B}", "token_file: b.token")
        path.write_text(text, encoding="utf-8")
        async with exporter_for(path) as (exporter, _, _):
            await exporter.poller.poll_once()
            make(b_file)
            with caplog.at_level(logging.WARNING):
                for _ in range(3):
                    snapshot = await asyncio.wait_for(exporter.poller.poll_once(), 10)
            assert all(app.up for app in snapshot.apps)
            assert all(sent.authorized for sent in sim.state.log)
            warned = [r for r in caplog.records if "keeping the current token" in r.getMessage()]
            assert len(warned) == 1
            assert TOKEN_B not in caplog.text


# -- 3. analytics ---------------------------------------------------------------------------
async def test_credit_saved_while_no_app_was_due_is_not_spent_when_the_budget_is_short() -> None:
    """Cycles with requests to spare while no app's analytics were due saved a round of
    credit; then the budget got short (the lanes plan: a cycle leaves nothing) just as
    the apps fell due. The saved credit sent a whole round of analytics in a cycle that
    had no request to spare, taking them from the statuses and counters of the next."""
    clock = FakeClock()
    api = TotalsApi()
    analytics = reader(clock)
    await analytics_cycle(analytics, api, spare=100)  # every app read; credit spent
    asked = len(api.asked)
    for _ in range(3):
        clock.advance(30)
        await analytics_cycle(analytics, api, spare=100)  # none due: credit saved
    assert len(api.asked) == asked
    clock.advance(300)
    for _ in range(3):
        await analytics_cycle(analytics, api, spare=0)  # short: nothing to spare
        clock.advance(30)
    assert len(api.asked) == asked


class CycleLog:
    """A poll observer that counts the cycles that had to wait for the budget."""

    def __init__(self) -> None:
        self.waited = 0

    def poll_error(self, account_id: str, app_id: str, reason: str) -> None: ...

    def track_app(self, account_id: str, app_id: str) -> None: ...

    def untrack_app(self, account_id: str, app_id: str) -> None: ...

    def cycle(self, seconds: float, *, waited_for_budget: bool = False) -> None:
        self.waited += waited_for_budget

    def plan(self, *, counter_period: float, listing_period: float, lanes: bool) -> None: ...


def analytics_sent(sim: Simulator) -> int:
    return sum(n for (endpoint, _), n in sim.state.requests.items() if "analytics" in endpoint)


async def test_analytics_never_make_cycles_wait_for_the_budget_nor_go_over_it() -> None:
    """15 apps under a budget of 400/5m (cycles may spend 39 requests), on the simulated
    API's clock: quiet (15 requests a cycle), then 23 streams live (38 a cycle, one to
    spare), then 40 more (the lanes plan). Analytics are read with what is spare, no
    cycle ever waits for the budget, none is sent in the lanes plan, and the API never
    sees more than 400 requests in 5 minutes nor answers 429. The credit saved in the
    quiet spell (a whole round, 30 requests) was spent once the apps fell due in the busy
    one, on top of cycles that needed the window: the next cycles waited."""
    rate, window, interval = 400, 300.0, 30.0
    clock = FakeClock()
    world = World(clock=clock)
    apps = [f"app-{n:02d}" for n in range(15)]
    for app in apps:
        world.populate(ACC_A, app, 0)
    limiter = RateLimiter(rate, window)
    async with (
        Simulator(world, token=TOKEN_A, limiter=limiter, ip_limiter="off") as sim,
        aiohttp.ClientSession() as http,
    ):
        budget = RequestBudget(requests=rate, window=window, clock=clock, sleep=clock.sleep)
        client = RealtimeKitClient(
            session=http,
            base_url=sim.base_url,
            token=Secret(TOKEN_A),
            budget=budget,
            clock=clock,
            sleep=clock.sleep,
            jitter=lambda: 0.0,
        )
        config = Config(
            api=ApiConfig(
                token=Secret(TOKEN_A), base_url=sim.base_url, rate_limit=RateLimit(rate, window)
            ),
            poll=PollConfig(interval=interval, analytics_interval=window),
            apps=tuple(AppConfig(ACC_A, app, discover=True) for app in apps),
        )
        log = CycleLog()
        poller = Poller(
            config=config,
            api=client,
            observer=log,
            clock=clock,
            monotonic=clock,
            budget=lambda: (rate, window),
        )
        live = 0
        sent: list[int] = []
        for streams, cycles in ((0, 20), (23, 25), (63, 25)):
            for _ in range(streams - live):
                world.create(ACC_A, apps[live % len(apps)], livestream_id=f"ls-{live}")
                world.go_live(f"ls-{live}")
                live += 1
            before = analytics_sent(sim)
            for _ in range(cycles):
                start = clock.now
                await poller.poll_once()
                await poller.analytics_settled()
                clock.advance(max(0.0, interval - (clock.now - start)))
            sent.append(analytics_sent(sim) - before)
            assert poller._lanes.mode == ("lanes" if streams > 30 else "full")
        assert sent[0] > 0 and sent[1] > 0 and sent[2] == 0, sent
        assert log.waited == 0
        assert sim.state.token_traffic["default"].busiest <= rate
        assert not any(status == 429 for _, status in sim.state.requests)


def many_apps(count: int, *, live: int = 1) -> Simulator:
    """acc-a with ``count`` apps (app-00...), each with ``live`` live streams."""
    world = World(clock=FakeClock(API_T0))
    for n in range(count):
        app = f"app-{n:02d}"
        world.populate(ACC_A, app, 0)
        for k in range(live):
            world.create(ACC_A, app, livestream_id=f"{app}-ls{k}")
            world.go_live(f"{app}-ls{k}")
    return Simulator(world, token=TOKEN_A, ip_limiter="off")


def write_many(path: Path, base_url: str, count: int, *, extra: str = "") -> Path:
    apps = "".join(
        f"  - {{account_id: {ACC_A}, app_id: app-{n:02d}, discover: true}}\n" for n in range(count)
    )
    path.write_text(
        f"api: {{base_url: {base_url}, token: {TOKEN_A}, timeout: 10s, rate_limit: 90000/5m}}\n"
        f"poll: {{interval: 2s, analytics_interval: 2s}}\n{extra}apps:\n{apps}",
        encoding="utf-8",
    )
    return path


async def test_hanging_analytics_hold_neither_the_cycles_nor_the_shutdown(tmp_path: Path) -> None:
    """Every analytics request of 12 apps hangs (api.timeout 10 s; 12 is more than the 8
    connection slots), and the API takes 0.3 s for each other answer, so a cycle takes
    about 1.2 s of its 2 s. The cycles stay that short and without errors, a stream's
    stop shows within about one interval, and the poller stops at once when asked.
    Analytics were given a whole interval from the end of a cycle: they held every slot
    into the next cycle, whose requests then ran out of time: every other cycle marked
    every app down."""
    async with many_apps(12) as sim, FaultApi(sim) as api:
        sim.state.faults = Faults(latency=0.3)
        api.fault = lambda r: Hang() if "/analytics/" in r.uri else None
        async with exporter_for(write_many(tmp_path / "c.yaml", api.base_url, 12)) as (exp, _, _):
            fleet = exp.poller
            run = asyncio.create_task(fleet.run(stop := asyncio.Event()))
            poller = fleet.unit().poller
            try:
                await until(lambda: poller.snapshot.cycles >= 3 and api.stuck.is_set())
                sim.world.stop("app-05-ls0")
                stopped = asyncio.get_running_loop().time()

                def live() -> bool:
                    state = poller.snapshot.app(ACC_A, "app-05")
                    return state is not None and any(s.live for s in state.streams)

                await until(lambda: not live(), 10)
                assert asyncio.get_running_loop().time() - stopped < 4.5
                total = samples(exp, "realtimekit_exporter_poll_duration_seconds_sum")
                count = samples(exp, "realtimekit_exporter_poll_duration_seconds_count")
                assert total[0][1] / count[0][1] < 1.8
                errors = samples(exp, "realtimekit_exporter_poll_errors_total")
                assert sum(value for _, value in errors) == 0
            finally:
                stop.set()
                ended = asyncio.get_running_loop().time()
                await asyncio.wait_for(run, 5)
                assert asyncio.get_running_loop().time() - ended < 0.5


async def test_analytics_that_keep_failing_warn_once_per_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The analytics endpoint times out round after round (the hanging one above): one
    warning per app when it starts failing, not one per app every interval (a thousand
    apps would write a thousand lines every five minutes); one line when it works again."""
    clock = FakeClock()
    api = TotalsApi()
    analytics = reader(clock)
    api.failure = ApiError("timeout", "slow", endpoint=ENDPOINT_ANALYTICS)
    with caplog.at_level(logging.INFO, "exporter.analytics"):
        for _ in range(4):
            await analytics_cycle(analytics, api, spare=100)
            clock.advance(300)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == len(APPS)
        api.failure = None
        caplog.clear()
        await analytics_cycle(analytics, api, spare=100)
        assert len(caplog.records) == len(APPS)
        assert all(r.levelno == logging.INFO for r in caplog.records)


def totals(count: Any, ingest: Any = 10, viewer: Any = 4, **more: Any) -> dict[str, Any]:
    return {"count": count, "total_ingest_seconds": ingest, "total_viewer_seconds": viewer, **more}


def ok(data: Any) -> Canned:
    return Canned(200, {"success": True, "data": data})


TODAY: Final = "2026-11-27"  # the simulated API's day (tests.conftest.API_T0)
APP_A: Final = {"account_id": ACC_A, "app_id": "app-a"}
ANALYTICS: Final = (
    "realtimekit_app_livestream_sessions_total",
    "realtimekit_app_livestream_ingest_seconds_total",
    "realtimekit_app_livestream_viewer_seconds_total",
    "realtimekit_app_livestream_today_sessions",
    "realtimekit_app_livestream_today_ingest_seconds",
    "realtimekit_app_livestream_today_viewer_seconds",
)
# What the simulator's one live session of app-a adds up to (60 s each, as it starts).
FIRST: Final = (1.0, 60.0, 60.0, 1.0, 60.0, 60.0)


# The answers of a hostile or broken API, for overall (None: the simulator's own) and for
# daywise; and what is then exported: FIRST (the answer was refused, the last values
# stay), or the values the answer holds.
HOSTILE: Final[dict[str, tuple[Canned | None, Canned | None, tuple[float | None, ...]]]] = {
    "9 MB body": (Canned(200, raw=b" " * 9_000_000 + b"{}"), None, FIRST),
    "200,000 brackets deep": (Canned(200, raw=b"[" * 200_000), None, FIRST),
    "negative count": (ok(totals(-1)), None, FIRST),
    "negative seconds": (ok(totals(1, -5)), None, FIRST),
    "NaN as a string": (ok(totals(1, "NaN")), None, FIRST),
    "Infinity as a string": (ok(totals(1, "Infinity")), None, FIRST),
    "1e999 as a string": (ok(totals("1e999")), None, FIRST),
    "a count of 10^400": (
        Canned(200, raw=b'{"data": {"count": 1' + b"0" * 400 + b"}}"),
        None,
        FIRST,
    ),
    "a fractional count": (ok(totals(1.5)), None, FIRST),
    "a boolean count": (ok(totals(True)), None, FIRST),
    "data a list": (ok([totals(1)]), None, FIRST),
    "numbers as strings": (ok(totals("7", "10.5", " 3 ")), None, (7.0, 10.5, 3.0, *FIRST[3:])),
    "1e308 seconds": (ok(totals(2, 1e308)), None, (2.0, 1e308, 4.0, *FIRST[3:])),
    "10,000 daywise rows": (None, ok([totals(1, date=TODAY)] * 10_000), FIRST),
    "daywise rows with a negative": (None, ok([totals(-3, date=TODAY)]), FIRST),
    "today's row among odd dates": (
        None,
        ok([totals(9, date="27/11/2026"), totals(5, 50, 20, date=f"{TODAY}T00:00:00Z")]),
        (*FIRST[:3], 5.0, 50.0, 20.0),
    ),
    "rows no date of which can be read": (
        None,
        ok([totals(9, date="2026/11/27"), totals(9, date=1795773600), totals(9, date=None)]),
        (*FIRST[:3], None, None, None),
    ),
}


@pytest.mark.parametrize(("overall", "daywise", "exported"), HOSTILE.values(), ids=list(HOSTILE))
async def test_hostile_analytics_answers_are_never_exported_wrong(
    tmp_path: Path,
    overall: Canned | None,
    daywise: Canned | None,
    exported: tuple[float | None, ...],
) -> None:
    """After a first read of the simulator's analytics, the API answers the next one with
    a hostile body: no crash, the app stays up, and what is exported is the last values
    (a body refused whole) or exactly what the body says; never a negative, infinite or
    NaN value. Rows none of whose dates can be read give no value for today: they gave
    0 (a day without sessions) when there were several of them."""
    async with accounts() as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default"})
        async with exporter_for(path) as (exporter, _, _):
            poller = exporter.poller.unit().poller
            poller._analytics._clock = sim.world.now  # "today" is the simulated API's day
            await exporter.poller.poll_once(analytics=True)
            assert values(exporter) == FIRST
            if overall is not None:
                sim.state.answer_next(ENDPOINT_ANALYTICS, overall, app_id="app-a")
            if daywise is not None:
                sim.state.answer_next(ENDPOINT_ANALYTICS_DAYS, daywise, app_id="app-a")
            poller._analytics._due.clear()  # due now
            snapshot = await exporter.poller.poll_once(analytics=True)
            assert all(app.up for app in snapshot.apps)
            assert values(exporter) == exported


def values(exporter: Exporter) -> tuple[float | None, ...]:
    found = tuple(exporter.registry.get_sample_value(name, APP_A) for name in ANALYTICS)
    assert all(v is None or (math.isfinite(v) and v >= 0) for v in found)
    return found


async def test_a_401_on_analytics_alone_leaves_the_app_and_its_token_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The analytics endpoints answer 401 while the rest accepts the token: the app stays
    up, no auth error is counted for it nor shown on the status page, its requests go
    on, and one warning says the analytics could not be read."""
    async with accounts() as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default"})
        async with exporter_for(path) as (exporter, _, _):
            refused = Canned(401, {"success": False, "errors": [{"code": 10000}]})
            for endpoint in (ENDPOINT_ANALYTICS, ENDPOINT_ANALYTICS_DAYS):
                sim.state.answer_next(endpoint, refused, times=None)
            poller = exporter.poller.unit().poller
            with caplog.at_level(logging.WARNING):
                for _ in range(3):
                    poller._analytics._due.clear()
                    snapshot = await exporter.poller.poll_once(analytics=True)
            assert all(app.up for app in snapshot.apps)
            errors = samples(exporter, "realtimekit_exporter_poll_errors_total")
            assert sum(v for _, v in errors) == 0
            assert not exporter.poller.recent_errors
            assert exporter.token.budget.paused_until == 0
            lines = [r.getMessage() for r in caplog.records if r.name == "exporter.analytics"]
            assert len(lines) == 1 and "could not read" in lines[0], lines
            assert not [r for r in caplog.records if "rejected the token" in r.getMessage()]


# -- 4. secrets ---------------------------------------------------------------------------
PASTED: Final = "Xq7a1B2c3D4e5a1B2c3D4e5a1B2c3D4e5F6g7H8i9j"  # 42 characters, shaped as a token


@pytest.mark.parametrize(
    "entry",
    [
        f"{PASTED}: {{rate_limit: 100/5m}}",
        f"{PASTED}: {{token: {TOKEN_B}}}",
        f"{PASTED}:",
    ],
    ids=["no-token", "with-a-token", "null"],
)
def test_a_token_pasted_as_a_credentials_name_is_never_quoted(entry: str) -> None:
    """A token pasted where the credentials' name goes (``<token>: {rate_limit: ...}``
    for ``agency-b: {token: <token>}``) is refused, and no error quotes it: a name of up
    to 64 characters was valid, so the token was accepted as a name, quoted in each of
    its problems (in the log, the answer of /-/reload, --config.check), and would have
    been a label value of every budget metric."""
    text = (
        f"api: {{token: {TOKEN_A}}}\n"
        f"credentials:\n  {entry}\n"
        f"apps:\n  - {{account_id: a, app_id: a, discover: true, credentials: {PASTED}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        config_module.loads(text)
    assert PASTED not in str(caught.value)
    assert any("a name must be" in p for p in caught.value.problems), caught.value.problems


def test_config_check_names_every_credentials_problem_at_once_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config.check with three broken credentials: one line naming each problem (a
    token with a space, a missing token file, two tokens, an app naming credentials not
    defined), and no token in it."""
    from exporter import cli

    path = tmp_path / "c.yaml"
    path.write_text(
        f"api: {{token: {TOKEN_A}}}\n"
        "credentials:\n"
        f"  b: {{token: '{TOKEN_B} {TOKEN_B}'}}\n"
        "  c: {token_file: missing.token}\n"
        f"  d: {{token: {TOKEN_B}, token_file: d.token, rate_limit: 0/5m}}\n"
        "apps:\n"
        "  - {account_id: a, app_id: a, discover: true, credentials: b}\n"
        "  - {account_id: a, app_id: c, discover: true, credentials: c}\n"
        "  - {account_id: a, app_id: d, discover: true, credentials: d}\n"
        f"  - {{account_id: a, app_id: e, discover: true, credentials: {TOKEN_A}}}\n",
        encoding="utf-8",
    )
    assert cli.main(["--config.file", str(path), "--config.check"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    for problem in (
        "credentials.b.token: must be one token",
        "credentials.c.token_file: cannot read",
        "credentials.d: set credentials.d.token or credentials.d.token_file, not both",
        "credentials.d.rate_limit:",
        "apps[3].credentials: no credentials named",
    ):
        assert problem in err, (problem, err)
    assert TOKEN_A not in err and TOKEN_B not in err


def test_a_credentials_label_value_is_escaped_in_the_exposition_and_the_page() -> None:
    """The loader allows only letters, digits and _.- in a name; were another name to
    reach the snapshot, /metrics escapes it as a label value and the status page as
    HTML: a quote, a brace or a line break cannot forge a series or a tag."""
    hostile = 'x"} 1\nrealtimekit_up{app_id="forged'
    snapshot = Snapshot(
        apps=(AppState(ACC_A, "app-a", up=True, last_success=1.0, credentials=hostile + "<b>"),),
        cycles=1,
        taken_at=1.0,
    )
    text = render_part(generate_text, snapshot).decode()
    info = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "realtimekit_app_info"
    ]
    assert [s.labels["credentials"] for s in info] == [hostile + "<b>"]
    assert 'app_id="forged' not in [line.split("{")[0] for line in text.splitlines()]
    assert sum(1 for line in text.splitlines() if line.startswith("realtimekit_up{")) == 1
    page = statuspage.render(snapshot, (), 2.0, "test")
    assert "<b>" not in page and "&lt;b&gt;" in page


@pytest.mark.parametrize("control", ["\x07", "\x00", "\x7f", "\x1b[2J"], ids=repr)
def test_a_token_with_a_control_character_is_refused_at_load(tmp_path: Path, control: str) -> None:
    """A control character in a token (inline or in its file) cannot be sent in a
    header: every request of its credentials failed as a bug ("unexpected error in the
    exporter", with a traceback), each cycle. It is refused where it is read, without
    quoting it."""
    (tmp_path / "b.token").write_text(TOKEN_B + control + "\n", encoding="utf-8")
    escaped = (TOKEN_A + control).encode("unicode_escape").decode()
    text = (
        f'api: {{token: "{escaped}"}}\n'
        "credentials: {b: {token_file: b.token}}\n"
        "apps:\n"
        "  - {account_id: a, app_id: a, discover: true}\n"
        "  - {account_id: a, app_id: b, discover: true, credentials: b}\n"
    )
    with pytest.raises(ConfigError) as caught:
        config_module.loads(text, base_dir=tmp_path)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "api.token",
        "credentials.b.token_file",
    ], caught.value.problems
    assert TOKEN_A not in str(caught.value) and TOKEN_B not in str(caught.value)


# -- 5. bounds ------------------------------------------------------------------------------
async def test_the_livestream_limit_bounds_the_process_across_credentials(tmp_path: Path) -> None:
    """limits.max_livestreams is 10 and each credentials' app lists 8 streams: the two
    units track 10 together (not 10 each), every cycle, the rest counted as dropped;
    and the same once a reload moves one app to the other credentials."""
    world = World(clock=FakeClock(API_T0))
    for account, app in ((ACC_A, "app-a"), (ACC_B, "app-b")):
        world.populate(account, app, 0)
        for n in range(8):
            world.create(account, app, livestream_id=f"{app}-{n}")
            world.set_status(f"{app}-{n}", "IDLE")
    tokens = (SimToken("b", TOKEN_B, frozenset({ACC_B})),)
    async with Simulator(world, token=TOKEN_A, tokens=tokens, ip_limiter="off") as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default", "app-b": "agency-b"})
        limits = "limits: {max_livestreams: 10}\n"
        path.write_text(path.read_text(encoding="utf-8") + limits, encoding="utf-8")
        async with exporter_for(path) as (exporter, reloader, _):
            for _ in range(3):
                snapshot = await exporter.poller.poll_once()
                assert sum(len(a.streams) for a in snapshot.apps) == 10
                assert sum(a.dropped for a in snapshot.apps) == 6
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("    credentials: agency-b\n", ""), encoding="utf-8")
            assert await reloader.reload() is None
            assert set(exporter.poller.units) == {"default"}
            for _ in range(3):
                snapshot = await exporter.poller.poll_once()
                assert sum(len(a.streams) for a in snapshot.apps) == 10
            tracked = samples(exporter, "realtimekit_livestream_info")
            assert len(tracked) == 10


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_fifty_credentials_stay_within_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 credentials, each reading 2 apps of its own account: every app is up after two
    cycles of every unit; the exporter's tasks and open files stay within what 50 units
    of api.max_concurrency (8) requests each can hold; closing gives every file back."""
    monkeypatch.setattr("exporter.simulator.tokens.MAX_TOKENS", 64)
    world = World(clock=FakeClock(API_T0))
    tokens, names, apps = [], [], []
    for n in range(50):
        account = f"acc-{n:02d}"
        value = f"attack-{n:02d}-token-0123456789abcdef"
        tokens.append(SimToken(f"t{n}", value, frozenset({account})))
        names.append(f"  c{n:02d}: {{token: {value}}}")
        for app in ("app-a", "app-b"):
            world.populate(account, app, 0)
            world.create(account, app, livestream_id=f"{account}-{app}")
            world.go_live(f"{account}-{app}")
            apps.append(
                f"  - {{account_id: {account}, app_id: {app}, discover: true, "
                f"credentials: c{n:02d}}}"
            )
    async with Simulator(world, token=TOKEN_A, tokens=tokens, ip_limiter="off") as sim:
        path = tmp_path / "c.yaml"
        path.write_text(
            f"api: {{base_url: {sim.base_url}, token: {TOKEN_A}, timeout: 5s}}\n"
            "poll: {interval: 1s}\n"
            "credentials:\n" + "\n".join(names) + "\napps:\n" + "\n".join(apps) + "\n",
            encoding="utf-8",
        )
        before = open_files()
        async with exporter_for(path) as (exporter, _, _):
            fleet = exporter.poller
            run = asyncio.create_task(fleet.run(stop := asyncio.Event()))
            peak_tasks = peak_files = 0

            def counted() -> bool:
                nonlocal peak_tasks, peak_files
                peak_tasks = max(peak_tasks, len(ours()))
                peak_files = max(peak_files, open_files())
                return all(u.poller.snapshot.cycles >= 2 for u in fleet.units.values())

            await until(counted, 30)
            assert all(app.up for app in fleet.snapshot.apps)
            assert len(fleet.snapshot.apps) == 100
            assert peak_tasks <= 50 * (1 + 1 + 8)  # poller, analytics, requests
            assert peak_files - before <= 50 * 8 + 16
            stop.set()
            await asyncio.wait_for(run, 5)
        await asyncio.sleep(0)
        assert open_files() <= before + 2
