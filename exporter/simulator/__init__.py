"""A simulator of the RealtimeKit livestream API, for demos, tests and benchmarks.

``Simulator`` serves a :class:`~exporter.simulator.world.World` over HTTP on a loopback
address; ``realtimekit-exporter simulate`` runs one from the command line, and
``realtimekit-exporter --demo`` runs one inside the exporter's own process.

It accepts the ``token`` it is given (named "default") and any others added by name
(:meth:`Simulator.add_token`, ``POST /-/simulator/tokens``), each maybe limited to some
accounts and each with its own rate-limit window.

It also speaks webhooks as RealtimeKit does (:mod:`exporter.simulator.webhooks`): apps
register them through the API, every livestream status change is delivered, signed with
the simulator's own key pair, whose public half is served at :attr:`Simulator.key_url`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from exporter.simulator.api import API_PREFIX, CONTROL, SimulatorState, create_app
from exporter.simulator.faults import Canned, Faults
from exporter.simulator.ratelimit import RateLimiter
from exporter.simulator.tokens import SimToken, TokenError
from exporter.simulator.webhooks import (
    KEY_PATH,
    STATUS_EVENT,
    DeliveryRecord,
    DeliverySettings,
    Webhook,
    is_loopback,
)
from exporter.simulator.world import DEMO, REALISTIC, Profile, World

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

__all__ = [
    "DEMO",
    "REALISTIC",
    "Canned",
    "DeliveryRecord",
    "DeliverySettings",
    "Faults",
    "Profile",
    "RateLimiter",
    "SimToken",
    "Simulator",
    "TokenError",
    "Webhook",
    "World",
    "is_loopback",
]

log = logging.getLogger(__name__)


class Simulator:
    """Serve ``world`` on ``host:port`` (0: any free port); ``async with`` or start/close."""

    def __init__(
        self,
        world: World,
        *,
        token: str,
        tokens: Iterable[SimToken] = (),
        faults: Faults | None = None,
        limiter: RateLimiter | None = None,
        ip_limiter: RateLimiter | Literal["off"] | None = None,
        max_per_page: int = 100,
        webhook_settings: DeliverySettings | None = None,
    ) -> None:
        """``token``: accepted as the token named "default", for every account;
        ``tokens``: accepted beside it. ``limiter``: the per-token limit (default 1200 per
        5 minutes, each token its own window); ``ip_limiter``: the per-address one
        (default 200 per second; "off" for none); ``webhook_settings``: how webhooks are
        delivered (retry delay, timeout...; tests make them fast)."""
        self.state = SimulatorState(
            world,
            token=token,
            tokens=tokens,
            faults=faults,
            limiter=limiter,
            ip_limiter=ip_limiter,
            max_per_page=max_per_page,
            webhook_settings=webhook_settings,
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

    @property
    def key_url(self) -> str:
        """Where the public key that verifies webhook deliveries is served."""
        return self.origin + KEY_PATH

    @property
    def public_key_pem(self) -> bytes:
        """The public key deliveries are signed for now (PEM, SubjectPublicKeyInfo)."""
        return self.state.deliveries.key.public_pem

    @property
    def webhook_log(self) -> list[DeliveryRecord]:
        """Every delivery so far (the last DeliverySettings.log_size), oldest first; the
        records of deliveries under way change as they proceed."""
        return list(self.state.deliveries.log)

    async def deliveries_settled(self) -> None:
        """Return once no webhook delivery is under way (waiting, sending or retrying)."""
        await self.state.deliveries.settled()

    def webhook_stats(self) -> dict[str, Any]:
        """What ``GET /-/simulator/stats`` shows under ``webhooks``."""
        return self.state.deliveries.stats()

    def rotate_key(self) -> bytes:
        """Sign deliveries with a new key pair from now on, and serve it; its public PEM."""
        return self.state.deliveries.rotate_key().public_pem

    def add_token(self, name: str, token: str, *, accounts: Iterable[str] | None = None) -> bool:
        """Accept ``token`` as ``name``, for ``accounts`` only (None: every account), as
        ``POST /-/simulator/tokens`` does; a name that exists gets the new token (its old
        one is refused from now on). True if it replaced one; TokenError if it cannot be
        added (more than MAX_TOKENS, a value another name holds)."""
        return self.state.add_token(name, token, accounts=accounts)

    def add_webhook(
        self,
        account_id: str,
        app_id: str,
        *,
        url: str,
        events: Iterable[str] = (STATUS_EVENT,),
        name: str = "simulated",
        enabled: bool = True,
    ) -> Webhook:
        """Register a webhook as ``POST .../webhooks`` would (same checks: WebhookError)."""
        body = {"name": name, "url": url, "events": list(events), "enabled": enabled}
        return self.state.webhooks.add(account_id, app_id, body, now=self.world.now())

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
        self.state.deliveries.start()
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
        """Stop delivering webhooks (every delivery under way is cancelled), then serving;
        requests the ``hold`` and ``latency`` faults keep waiting are answered first."""
        if self.state.faults.hold:
            self.state.faults = self.state.faults.update({"hold": False})
        self.state.close()
        await self.state.deliveries.close()
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
