"""Several tokens in one exporter (exporter.fleet): each credentials' apps are polled
with their own token, budget and poller, so that a token rejected, rate limited or
rotated changes nothing for the others; and each app's analytics add up to the
simulator's sessions."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import pytest
from prometheus_client import generate_latest

from exporter import statuspage
from exporter.client import ENDPOINT_ANALYTICS, ENDPOINT_ANALYTICS_DAYS
from exporter.simulator import Canned, Simulator, World
from exporter.simulator.faults import Faults
from exporter.simulator.tokens import SimToken
from tests.clock import FakeClock
from tests.conftest import API_T0
from tests.reloading import exporter_for

if TYPE_CHECKING:
    from pathlib import Path

    from exporter.model import Snapshot
    from exporter.server import Exporter

TOKEN_A: Final = "agency-a-token-3b8e61f0c2d94a7e"
TOKEN_B: Final = "agency-b-token-9c14d7e2a05f4b3c"
TOKEN_B2: Final = "agency-b-token-rotated-77e0c1d5a2"
ACC_A, ACC_B = "acc-a", "acc-b"


def two_accounts() -> Simulator:
    """acc-a (app-a, two streams, one live) read with TOKEN_A; acc-b (app-b, two
    streams, one live) read with TOKEN_B, which may read acc-b alone."""
    world = World(clock=FakeClock(API_T0))
    for account, app in ((ACC_A, "app-a"), (ACC_B, "app-b")):
        world.populate(account, app, 0)
        for n in (1, 2):
            world.create(account, app, livestream_id=f"{app}-ls{n}")
            world.set_status(f"{app}-ls{n}", "IDLE")
        world.go_live(f"{app}-ls1")
    return Simulator(
        world,
        token=TOKEN_A,
        tokens=(SimToken("b", TOKEN_B, frozenset({ACC_B})),),
        ip_limiter="off",
    )


def write(path: Path, base_url: str, *, b_rate: str = "600/5m", with_b: bool = True) -> Path:
    b_file = path.parent / "b.token"
    if not b_file.exists():
        b_file.write_text(TOKEN_B + "\n", encoding="utf-8")
    text = f"""
api:
  base_url: {base_url}
  token: {TOKEN_A}
  rate_limit: 900/5m
  timeout: 2s
poll:
  interval: 30s
  analytics_interval: 5m
apps:
  - account_id: {ACC_A}
    app_id: app-a
    discover: true
"""
    if with_b:
        text += f"""  - account_id: {ACC_B}
    app_id: app-b
    discover: true
    credentials: agency-b
credentials:
  agency-b:
    token_file: b.token
    rate_limit: {b_rate}
"""
    path.write_text(text, encoding="utf-8")
    return path


def app_up(snapshot: Snapshot, app: str) -> bool:
    account = ACC_A if app == "app-a" else ACC_B
    state = snapshot.app(account, app)
    assert state is not None, app
    return state.up


def by_token(sim: Simulator) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for sent in sim.state.log:
        counts[sent.token_name] = counts.get(sent.token_name, 0) + 1
    return counts


def polled(sim: Simulator) -> dict[str | None, int]:
    """by_token, without the analytics requests (those of the first cycle only)."""
    counts: dict[str | None, int] = {}
    for sent in sim.state.log:
        if "/analytics/" not in sent.path:
            counts[sent.token_name] = counts.get(sent.token_name, 0) + 1
    return counts


def sample(exporter: Exporter, name: str, **labels: str) -> float | None:
    value: float | None = exporter.registry.get_sample_value(name, labels)
    return value


async def test_each_credentials_read_their_own_apps_with_their_own_token(
    tmp_path: Path,
) -> None:
    """Both apps up; every request for acc-a carried TOKEN_A, every one for acc-b
    TOKEN_B; each budget counts its own requests, and metrics name the credentials."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        snapshot = await exporter.poller.poll_once(analytics=True)
        assert app_up(snapshot, "app-a") and app_up(snapshot, "app-b")
        for sent in sim.state.log:
            expected = "b" if f"/{ACC_B}/" in sent.path else "default"
            assert sent.token_name == expected, sent.path
        counts = by_token(sim)
        fleet = exporter.poller
        for name, token_name in (("default", "default"), ("agency-b", "b")):
            budget = fleet.unit(name).token.budget
            assert budget.requests - budget.available() == counts[token_name]
        budget_b = "realtimekit_exporter_request_budget_requests"
        assert sample(exporter, budget_b, credentials="agency-b") == 600
        assert sample(exporter, budget_b, credentials="default") == 900
        info = "realtimekit_app_info"
        assert sample(exporter, info, account_id=ACC_B, app_id="app-b", credentials="agency-b")


async def test_a_rejected_token_takes_down_only_its_apps(tmp_path: Path) -> None:
    """TOKEN_B revoked: app-b goes down with an auth error, app-a stays up and its
    requests go on at the same pace."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        await exporter.poller.poll_once(analytics=True)
        before = polled(sim)
        sim.state.faults = Faults(rejected_tokens=("b",))
        snapshot = await exporter.poller.poll_once(analytics=True)
        assert app_up(snapshot, "app-a")
        assert not app_up(snapshot, "app-b")
        errors = "realtimekit_exporter_poll_errors_total"
        assert sample(exporter, errors, account_id=ACC_B, app_id="app-b", reason="auth") == 1
        assert sample(exporter, errors, account_id=ACC_A, app_id="app-a", reason="auth") == 0
        after = polled(sim)
        assert after["default"] - before["default"] == before["default"]  # the same pace


async def test_a_throttled_token_pauses_only_its_apps(tmp_path: Path) -> None:
    """TOKEN_B blocked by the API for 5 minutes (a 429): its unit pauses, app-b goes
    down; app-a's cycle neither waits nor fails, and its budget is untouched by B."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        await exporter.poller.poll_once(analytics=True)
        sim.state.limiter.block(TOKEN_B, sim.world.now(), 300.0)
        snapshot = await asyncio.wait_for(exporter.poller.poll_once(), 20)
        assert app_up(snapshot, "app-a")
        assert not app_up(snapshot, "app-b")
        fleet = exporter.poller
        assert fleet.unit("agency-b").token.budget.paused_until > 0
        assert fleet.unit("default").token.budget.paused_until == 0
        requests = "realtimekit_exporter_api_requests_total"
        throttled = {"api_endpoint": "livestreams", "code": "429"}
        assert sample(exporter, requests, credentials="agency-b", **throttled) == 1
        assert sample(exporter, requests, credentials="default", **throttled) == 0
        snapshot = await asyncio.wait_for(exporter.poller.poll_once(), 20)
        assert app_up(snapshot, "app-a")


async def test_rotating_one_token_file_leaves_the_other_credentials_alone(
    tmp_path: Path,
) -> None:
    """B's token file rotates: B's requests carry the new token from the next cycle;
    A's requests carry TOKEN_A throughout; nothing fails."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        await exporter.poller.poll_once(analytics=True)
        sim.add_token("b", TOKEN_B2, accounts=[ACC_B])  # the old TOKEN_B is refused now
        (tmp_path / "b.token").write_text(TOKEN_B2 + "\n", encoding="utf-8")
        start = len(sim.state.log)
        snapshot = await exporter.poller.poll_once()
        assert app_up(snapshot, "app-a") and app_up(snapshot, "app-b")
        since = list(sim.state.log)[start:]
        assert since and all(s.authorized for s in since)
        assert {s.token_name for s in since if f"/{ACC_A}/" in s.path} == {"default"}
        assert {s.token_name for s in since if f"/{ACC_B}/" in s.path} == {"b"}


async def test_a_reload_adds_and_removes_credentials(tmp_path: Path) -> None:
    """A reload without agency-b stops its poller and drops its series; one that
    brings it back starts it again at once."""
    path = write(tmp_path / "c.yaml", "http://127.0.0.1:9")
    async with two_accounts() as sim:
        write(path, sim.base_url)
        async with exporter_for(path) as (exporter, reloader, _):
            server = asyncio.create_task(exporter.poller.run(stop := asyncio.Event()))
            try:
                await until(lambda: exporter.poller.ready)
                write(path, sim.base_url, with_b=False)
                assert await reloader.reload() is None
                assert set(exporter.poller.units) == {"default"}
                text = generate_latest(exporter.registry).decode()
                assert 'credentials="agency-b"' not in text
                write(path, sim.base_url, b_rate="300/5m")
                assert await reloader.reload() is None
                unit = exporter.poller.unit("agency-b")
                await until(lambda: unit.poller.ready)
                assert unit.token.budget.requests == 300
                snapshot = exporter.poller.snapshot
                assert app_up(snapshot, "app-a") and app_up(snapshot, "app-b")
            finally:
                stop.set()
                await asyncio.wait_for(server, 5)


async def test_analytics_add_up_to_the_simulators_sessions(tmp_path: Path) -> None:
    """Each app's analytics equal what the simulator's sessions add up to (the live one
    included), as counters over all time and today's gauges."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        world = sim.world
        # app-a: a session of 500/120 s that ended, one of 300.7/80.2 s still live, and
        # one of 40/10 s on the other stream; app-b: its live one, at 60/60.
        world.set_counters("app-a-ls1", ingest_seconds=500, viewer_seconds=120)
        world.stop("app-a-ls1")
        world.go_live("app-a-ls1")
        world.set_counters("app-a-ls1", ingest_seconds=300.7, viewer_seconds=80.2)
        world.go_live("app-a-ls2")
        world.set_counters("app-a-ls2", ingest_seconds=40, viewer_seconds=10)
        world.set_counters("app-b-ls1", ingest_seconds=60, viewer_seconds=60)
        for unit in exporter.poller.units.values():
            unit.poller._analytics._clock = world.now  # "today" is the simulated API's day
        await exporter.poller.poll_once(analytics=True)
        expected = {
            "app-a": (3, int(500 + 300.7 + 40), int(120 + 80.2 + 10)),
            "app-b": (1, 60, 60),
        }
        for account, app in ((ACC_A, "app-a"), (ACC_B, "app-b")):
            count, ingest, viewer = expected[app]
            labels = {"account_id": account, "app_id": app}
            for name, value in (
                ("realtimekit_app_livestream_sessions_total", count),
                ("realtimekit_app_livestream_ingest_seconds_total", ingest),
                ("realtimekit_app_livestream_viewer_seconds_total", viewer),
                ("realtimekit_app_livestream_today_sessions", count),  # all of them today
                ("realtimekit_app_livestream_today_ingest_seconds", ingest),
                ("realtimekit_app_livestream_today_viewer_seconds", viewer),
                ("realtimekit_app_analytics_enabled", 1),
            ):
                assert sample(exporter, name, **labels) == value, (app, name)
        # A live session's values grow, and so do the totals at the next read.
        world.set_counters("app-b-ls1", ingest_seconds=90, viewer_seconds=75)
        for unit in exporter.poller.units.values():
            unit.poller._analytics._due.clear()  # due now, not in 5 minutes
        await exporter.poller.poll_once(analytics=True)
        b = {"account_id": ACC_B, "app_id": "app-b"}
        assert sample(exporter, "realtimekit_app_livestream_ingest_seconds_total", **b) == 90


@pytest.mark.parametrize("status", [403, 404])
async def test_analytics_refused_leave_the_app_up(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """app-b's analytics answer 403 (or 404): app-b stays up, its analytics are off
    with one log line, app-a's are read."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        for endpoint in (ENDPOINT_ANALYTICS, ENDPOINT_ANALYTICS_DAYS):
            refused = Canned(status, refusal(status))
            sim.state.answer_next(endpoint, refused, times=None, app_id="app-b")
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                snapshot = await exporter.poller.poll_once(analytics=True)
        assert app_up(snapshot, "app-b")
        b = {"account_id": ACC_B, "app_id": "app-b"}
        a = {"account_id": ACC_A, "app_id": "app-a"}
        assert sample(exporter, "realtimekit_app_analytics_enabled", **b) == 0
        assert sample(exporter, "realtimekit_app_analytics_enabled", **a) == 1
        assert sample(exporter, "realtimekit_up", **b) == 1
        lines = [r for r in caplog.records if "analytics turned off" in r.getMessage()]
        assert len(lines) == 1


def refusal(status: int) -> dict[str, Any]:
    if status == 403:
        return {
            "success": False,
            "errors": [{"code": 10000, "message": "Authentication error"}],
            "messages": [],
            "result": None,
        }
    return {"success": False, "error": {"code": 404, "message": "Not found"}}


async def test_no_token_of_any_credentials_is_shown_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a rejection of B, a throttle of A, and a rotation of B: no token appears
    in the logs, the metrics, the status page or the errors it shows."""
    async with (
        two_accounts() as sim,
        exporter_for(write(tmp_path / "c.yaml", sim.base_url)) as (
            exporter,
            _,
            _,
        ),
    ):
        with caplog.at_level(logging.DEBUG):
            await exporter.poller.poll_once()
            sim.state.faults = Faults(rejected_tokens=("b",))
            sim.state.limiter.block(TOKEN_A, sim.world.now(), 300.0)
            await exporter.poller.poll_once()
            sim.state.faults = Faults()
            sim.add_token("b", TOKEN_B2, accounts=[ACC_B])
            (tmp_path / "b.token").write_text(TOKEN_B2 + "\n", encoding="utf-8")
            await exporter.poller.poll_once()
        shown = [
            caplog.text,
            generate_latest(exporter.registry).decode(),
            statuspage.render(exporter.poller.snapshot, exporter.poller.recent_errors, 0.0, "test"),
            repr(exporter.poller),
            repr(exporter.config),
            *(str(e) for e in exporter.poller.recent_errors),
        ]
        assert exporter.poller.recent_errors
        for text in shown:
            for token in (TOKEN_A, TOKEN_B, TOKEN_B2):
                assert token not in text


async def until(condition: Any, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_start_up_warnings_name_each_credentials_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget above the API's limit is reported under the key the user wrote
    (credentials.agency-b.rate_limit, not api.rate_limit); credentials no app uses are
    reported by name."""
    path = write(tmp_path / "c.yaml", "http://127.0.0.1:9", b_rate="1300/5m")
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "  spare:\n    token: spare-token-0a9e3c5d7f\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, "exporter.server"):
        async with exporter_for(path):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("credentials.agency-b.rate_limit 1300/5m is above") for m in lines)
    assert not any(m.startswith("api.rate_limit") for m in lines)
    assert any("credentials spare are not used by any app" in m for m in lines)
    assert not any("spare-token" in m for m in lines)
