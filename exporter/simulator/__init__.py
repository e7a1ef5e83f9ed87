"""A simulator of the RealtimeKit livestream API, for demos, tests and benchmarks.

``Simulator`` serves a :class:`~exporter.simulator.world.World` over HTTP on a loopback
address; ``realtimekit-exporter simulate`` runs one from the command line, and
``realtimekit-exporter --demo`` runs one inside the exporter's own process.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Literal

from aiohttp import web

from exporter.simulator.api import API_PREFIX, CONTROL, SimulatorState, create_app
from exporter.simulator.faults import Faults
from exporter.simulator.ratelimit import RateLimiter
from exporter.simulator.world import DEMO, REALISTIC, Profile, World

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DEMO", "REALISTIC", "Faults", "Profile", "RateLimiter", "Simulator", "World"]

log = logging.getLogger(__name__)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (None: every interface) only accepts connections from this machine."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class Simulator:
    """Serve ``world`` on ``host:port`` (0: any free port); ``async with`` or start/close."""

    def __init__(
        self,
        world: World,
        *,
        token: str,
        faults: Faults | None = None,
        limiter: RateLimiter | None = None,
        ip_limiter: RateLimiter | Literal["off"] | None = None,
        max_per_page: int = 100,
    ) -> None:
        """``limiter``: the per-token limit (default 1200 per 5 minutes); ``ip_limiter``:
        the per-address one (default 200 per second; "off" for none)."""
        self.state = SimulatorState(
            world,
            token=token,
            faults=faults,
            limiter=limiter,
            ip_limiter=ip_limiter,
            max_per_page=max_per_page,
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
        """Listen on ``host:port``; a host of None means every interface. Anything but
        loopback is logged as a warning: the control interface has no auth."""
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
        if not is_loopback(host):
            log.warning(
                "the simulator listens on %s, beyond loopback: its control interface "
                "(%s) has no auth, anyone who can reach it can change the simulated world",
                "every interface" if host is None else host,
                CONTROL,
                extra={"address": self._origin},
            )

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
