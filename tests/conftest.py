from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import pytest

from exporter.config import (
    ApiConfig,
    AppConfig,
    Config,
    LivestreamConfig,
    PollConfig,
    RateLimit,
    Secret,
)
from exporter.simulator import Simulator, World
from tests.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from exporter.simulator.world import SimSession

ACCOUNT = "acc-1"
APP = "app-1"
TOKEN: Final = "test-token-5f2b9c0e7d1a4e63"
API_T0: Final = 1_795_773_600.0  # 2026-11-27 10:00:00 UTC: the simulated API's time


def api_simulator(token: str = TOKEN, *, apps: tuple[str, ...] = (APP,)) -> Simulator:
    """The simulated API for a test: its world stands still at API_T0 and has ``apps`` of
    ACCOUNT with no stream yet; no per-address rate limit (tests share one address)."""
    world = World(clock=FakeClock(API_T0))
    for app in apps:
        world.populate(ACCOUNT, app, 0)
    return Simulator(world, token=token, ip_limiter="off")


@pytest.fixture
def restore_root() -> Iterator[None]:
    """The root logger's handlers and level as they were, after the test (which may
    configure logging as the CLI does)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with api_simulator() as simulator:
        yield simulator


def add_stream(
    sim: Simulator,
    livestream_id: str,
    *,
    status: str = "IDLE",
    app: str = APP,
    name: str | None = None,
    meeting_id: str | None = None,
) -> str:
    """A stream under the test's control, listed with ``status``; its id."""
    sim.world.create(ACCOUNT, app, livestream_id=livestream_id, name=name, meeting_id=meeting_id)
    if status != "OFFLINE":
        sim.world.set_status(livestream_id, status)
    return livestream_id


def go_live(
    sim: Simulator, livestream_id: str, *, ingest: float = 60, viewer: float = 60
) -> SimSession:
    """Start a session whose counters read ``ingest`` and ``viewer`` seconds."""
    session = sim.world.go_live(livestream_id)
    sim.world.set_counters(livestream_id, ingest_seconds=ingest, viewer_seconds=viewer)
    return session


def sent(sim: Simulator, endpoint: str | None = None) -> int:
    """API requests that reached ``sim`` (for ``endpoint`` only, a name as in its stats)."""
    return sum(1 for s in sim.state.log if endpoint in (None, s.endpoint))


def make_config(
    base_url: str,
    *,
    streams: tuple[str, ...] = (),
    expect: dict[str, bool] | None = None,
    discover: bool = False,
    interval: float = 30.0,
    max_staleness: float = 300.0,
    token: str = TOKEN,
    timeout: float = 2.0,
    rate_limit: RateLimit | None = None,
) -> Config:
    expect = expect or {}
    app = AppConfig(
        account_id=ACCOUNT,
        app_id=APP,
        discover=discover,
        livestreams=tuple(LivestreamConfig(id=s, expect_live=expect.get(s)) for s in streams),
    )
    return Config(
        api=ApiConfig(
            token=Secret(token),
            base_url=base_url,
            timeout=timeout,
            rate_limit=rate_limit or RateLimit(1000, 300.0),
        ),
        poll=PollConfig(interval=interval, max_staleness=max_staleness),
        apps=(app,),
    )


def shape(body: Any) -> str:
    """Which documented shape an answer of the (simulated) API has: ``usual``,
    ``disabled_text``, ``listing_object``, ``null_session`` or ``single_session``."""
    data = body["data"]
    if isinstance(data, list):
        items = data
    elif "livestreams" in data:
        return "listing_object"
    elif "session" in data and "livestream" in data and "sessions" not in data:
        if data["session"] is None:
            return "null_session"
        items = [data["livestream"]]
        if "paging" in data:
            return "single_session"
    else:
        items = [data["livestream"]]
    kinds = {type(i["disabled"]) for i in items}
    return "disabled_text" if kinds == {str} else "usual"
