"""The exporter's polling side in the test process, wired as Exporter wires it (the
token's client, the poller, the collector) on a hand-moved clock, so that request counts
and budget waits are exact: for the scale and the lanes tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from exporter.apitoken import ApiToken
from exporter.client import ENDPOINTS, REASONS
from exporter.collector import SnapshotCollector
from exporter.poller import Poller
from exporter.telemetry import ExporterMetrics
from tests.conftest import ACCOUNT, APP

if TYPE_CHECKING:
    import aiohttp

    from exporter.config import Config
    from exporter.model import Snapshot
    from exporter.simulator import Simulator
    from tests.clock import FakeClock

INTERVAL = 2.0  # seconds: each poll() moves the clock on by one interval


class Harness:
    """Client, poller and collector wired as Exporter wires them, on the world's clock."""

    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.sim = sim
        self.http = http
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.poller: Poller | None = None

    def start(self, config: Config) -> Poller:
        metrics = ExporterMetrics(registry=self.registry, endpoints=ENDPOINTS, reasons=REASONS)
        token = ApiToken(
            config,
            session=self.http,
            observer=metrics,
            clock=self.clock,
            sleep=self.clock.sleep,
            jitter=lambda: 0.0,
            slack=0.0,
        )
        poller = Poller(
            config=config,
            api=token.client,
            observer=metrics,
            clock=self.clock,
            monotonic=self.clock,
        )
        self.registry.register(SnapshotCollector(lambda: poller.snapshot))
        self.poller = poller
        return poller

    async def poll(self) -> Snapshot:
        assert self.poller is not None
        self.clock.now += INTERVAL
        return await self.poller.poll_once()

    def sent(self) -> dict[str, int]:
        """Requests the simulator has answered so far, by endpoint."""
        counts: dict[str, int] = {}
        for (endpoint, _), n in self.sim.state.requests.items():
            counts[endpoint] = counts.get(endpoint, 0) + n
        return counts

    async def cycle_cost(self) -> tuple[Snapshot, dict[str, int]]:
        """One poll, and the requests it sent, by endpoint."""
        before = self.sent()
        snapshot = await self.poll()
        after = self.sent()
        return snapshot, {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}

    def value(self, name: str, app: str = APP, **labels: str) -> float | None:
        return self.registry.get_sample_value(
            name, {"account_id": ACCOUNT, "app_id": app, **labels}
        )
