"""The fault suite against the in-process simulator: its own fault knobs, turned on through
its control interface for several poll cycles and off again.

Each row of :data:`CASES` runs the story of tests/unit/test_faults.py on a
:class:`~tests.faultrig.FaultRig` whose clock also drives the simulated world: healthy
cycles, the fault, recovery. Throughout, /metrics and the status page answer, live streams
(the world's) stay live with their last values, ``realtimekit_up`` and the error counters
name the fault, the exporter logs once per state change, and neither the token nor any of
the world's stream keys shows up anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import pytest

from exporter.client import ENDPOINT_LISTING, REASONS
from exporter.simulator import REALISTIC, Simulator, World
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP
from tests.faultrig import FaultRig, Scrape, exporter_lines

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.simulator.world import SimStream

TOKEN: Final = "sim_fault_token_8Hq2Lw5Zx1Cv7Bn4Mk0Pj3Ry"
STREAMS: Final = 12
LIVE: Final = 4
LIVE_GAUGE: Final = "realtimekit_livestream_live"
INGEST: Final = "realtimekit_livestream_ingest_seconds"
VIEWER: Final = "realtimekit_livestream_viewer_seconds"


@dataclass(frozen=True)
class Case:
    """A simulator fault (``faults``: a change through ``PUT /-/simulator/faults``;
    ``throttle``: seconds to block the token for through ``POST /-/simulator/throttle``),
    the poll error reasons it may cause, the status codes the API answers with, and what
    else the row asks (see tests/unit/test_faults.py)."""

    id: str
    faults: dict[str, Any] = field(default_factory=dict)
    throttle: float = 0.0
    reasons: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    timeout: float = 5.0
    cycles: int = 6
    pause: float = 0.0
    sends: int | None = None

    @property
    def up(self) -> bool:
        return not self.reasons


CASES: Final = [
    Case(
        "server-errors",
        {"error_rate": 1},
        reasons=frozenset({"http_error"}),
        codes=frozenset({"500", "502", "503", "504"}),
    ),
    Case(
        "malformed",
        {"malformed_rate": 1},
        reasons=frozenset({"decode", "http_error"}),  # success: false is an error answer
        codes=frozenset({"200"}),
    ),
    Case(
        "throttled-by-others",
        throttle=30,
        reasons=frozenset({"rate_limited"}),
        codes=frozenset({"429"}),
        pause=30,
        sends=1,
    ),
    Case(
        "throttle-bursts",
        {"throttle_rate": 1, "throttle_seconds": 20},
        reasons=frozenset({"rate_limited"}),
        codes=frozenset({"429"}),
        pause=20,
        sends=1,
    ),
    Case(
        "token-rejected",
        {"reject_token": True},
        reasons=frozenset({"auth"}),
        codes=frozenset({"401"}),
    ),
    Case(
        "slower-than-the-timeout",
        {"latency": 1.0},
        reasons=frozenset({"timeout"}),
        codes=frozenset({"timeout"}),
        timeout=0.3,
        cycles=3,
    ),
    Case("counters-as-strings", {"numbers_as_strings": True}),
    Case("documented-variants", {"variant_rate": 1}),
    Case("lagging-listing", {"status_lag": 30}),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    world = World(seed=7, profile=REALISTIC, clock=clock)
    world.populate(ACCOUNT, APP, STREAMS, live=LIVE)
    async with Simulator(world, token=TOKEN) as simulator:
        yield simulator


def live_streams(sim: Simulator) -> list[SimStream]:
    sim.world.now()
    return [s for s in sim.world.streams(ACCOUNT, APP) or [] if s.session is not None]


def values(scrape: Scrape, streams: list[SimStream]) -> dict[str, tuple[float | None, ...]]:
    return {s.id: (scrape.stream(INGEST, s.id), scrape.stream(VIEWER, s.id)) for s in streams}


def world_values(sim: Simulator, streams: list[SimStream]) -> dict[str, tuple[float, ...]]:
    now = sim.world.now()
    out: dict[str, tuple[float, ...]] = {}
    for stream in streams:
        assert stream.session is not None
        out[stream.id] = (stream.session.ingest_seconds(now), stream.session.viewer_seconds(now))
    return out


async def control(method: str, url: str, body: Any) -> None:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.request(method, url, json=body) as response,
    ):
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_simulated_fault_is_survived_reported_and_recovered_from(
    sim: Simulator, clock: FakeClock, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """Under each of the simulator's faults every cycle completes and /metrics answers, up
    and the error counters name the fault, the world's live streams stay live with their
    last values, recovery shows at once, logs are one line per state change, and no
    secret of the world's appears anywhere."""
    caplog.set_level(logging.DEBUG)
    live = live_streams(sim)
    assert len(live) == LIVE
    async with FaultRig(sim.base_url, token=TOKEN, timeout=case.timeout, clock=clock) as rig:
        for _ in range(2):
            healthy = await rig.cycle()
        assert healthy.value("realtimekit_up") == 1
        assert values(healthy, live) == world_values(sim, live)
        logged = len(caplog.records)

        if case.faults:
            await control("PUT", sim.control_url + "/faults", case.faults)
        if case.throttle:
            await control("POST", sim.control_url + "/throttle", {"seconds": case.throttle})
        sent = sum(sim.state.requests.values())
        for _ in range(case.cycles):
            scrape = await rig.cycle()
            assert scrape.value("realtimekit_up") == (1 if case.up else 0)
            assert all(scrape.stream(LIVE_GAUGE, s.id) == 1 for s in live)
            if case.up:
                assert values(scrape, live) == world_values(sim, live)
            else:
                assert values(scrape, live) == values(healthy, live)  # the last values stand
        assert rig.internal_errors() == []
        if case.sends is not None:
            assert sum(sim.state.requests.values()) - sent <= case.sends
        counted = {r: scrape.errors(r) - healthy.errors(r) for r in REASONS}
        assert {r for r, n in counted.items() if n} == case.reasons
        assert sum(counted.values()) >= (case.cycles if case.reasons else 0)
        grew = sum(
            scrape.requests(ENDPOINT_LISTING, c) - healthy.requests(ENDPOINT_LISTING, c)
            for c in case.codes
        )
        assert grew >= (1 if case.codes else 0)

        reset = {k: False if isinstance(v, bool) else 0 for k, v in case.faults.items()}
        if reset:
            await control("PUT", sim.control_url + "/faults", reset)
        clock.now += case.pause
        healed = await rig.cycle()
        assert healed.value("realtimekit_up") == 1
        assert all(healed.stream(LIVE_GAUGE, s.id) == 1 for s in live)
        assert values(healed, live) == world_values(sim, live)
        await rig.cycle()

        lines = exporter_lines(caplog.records[logged:])
        assert len(lines) <= (2 if case.reasons else 0), lines
        assert rig.leaks([TOKEN, *sim.world.secrets()], caplog.records) == []
