"""A simulator of the RealtimeKit livestream API, for demos, tests and benchmarks.

``Simulator`` serves a :class:`~exporter.simulator.world.World` over HTTP on a loopback
address; ``realtimekit-exporter simulate`` runs one from the command line, and
``realtimekit-exporter --demo`` runs one inside the exporter's own process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from exporter.simulator.api import API_PREFIX, CONTROL, SimulatorState, create_app
from exporter.simulator.faults import Faults
from exporter.simulator.ratelimit import RateLimiter
from exporter.simulator.world import DEMO, REALISTIC, Profile, World

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DEMO", "REALISTIC", "Faults", "Profile", "RateLimiter", "Simulator", "World"]


class Simulator:
    """Serve ``world`` on ``host:port`` (0: any free port); ``async with`` or start/close."""

    def __init__(
        self,
        world: World,
        *,
        token: str,
        faults: Faults | None = None,
        limiter: RateLimiter | None = None,
        max_per_page: int = 100,
    ) -> None:
        self.state = SimulatorState(
            world, token=token, faults=faults, limiter=limiter, max_per_page=max_per_page
        )
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None

    def __repr__(self) -> str:
        return f"Simulator(origin={self._origin!r})"

    @property
    def world(self) -> World:
        return self.state.world

    @property
    def origin(self) -> str:
        """``http://host:port`` once started."""
        if self._origin is None:
            raise RuntimeError("the simulator is not started")
        return self._origin

    @property
    def base_url(self) -> str:
        """What the exporter's ``api.base_url`` should be."""
        return self.origin + API_PREFIX

    @property
    def control_url(self) -> str:
        return self.origin + CONTROL

    async def start(self, host: str | None = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port``; a host of None means every interface."""
        runner = web.AppRunner(create_app(self.state), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self._origin = f"http://{shown}:{bound[1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
