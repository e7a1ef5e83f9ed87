"""The exporter process: wiring, HTTP endpoints and lifecycle.

:class:`Exporter` builds one HTTP client session, the token's budget, the API client, the
poller, the metrics registry and the /metrics exposition (:mod:`exporter.exposition`) from a
:class:`~exporter.config.Config`.
:func:`create_app` serves ``/metrics``, ``/-/healthy``, ``/-/ready`` and the status page
(:mod:`exporter.statuspage`) at ``/``;
:class:`Server` runs both until asked to stop, and stops within a bounded time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from exporter import __version__, statuspage
from exporter.budget import RequestBudget
from exporter.client import ENDPOINTS, MIN_REQUEST_TIME, REASONS, RealtimeKitClient
from exporter.collector import SnapshotCollector
from exporter.exposition import Exposition
from exporter.model import EMPTY_SNAPSHOT
from exporter.negotiate import accepts_gzip, media_range
from exporter.poller import Poller, budget_warnings
from exporter.telemetry import ExporterMetrics

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from exporter.config import Config
    from exporter.model import Snapshot
    from exporter.poller import PollError

log = logging.getLogger(__name__)

EXPOSITION: Final = web.AppKey("exposition", Exposition)
READY: Final[web.AppKey[Callable[[], bool]]] = web.AppKey("ready")
STATUS: Final[web.AppKey[StatusSource | None]] = web.AppKey("status")
REFRESH: Final[web.AppKey[float | None]] = web.AppKey("refresh")
STOP_TIMEOUT: Final = 4.0


class ServeError(Exception):
    """The server could not start (for example, the address is in use)."""


class Exporter:
    """Everything one exporter process owns; use as ``async with Exporter(config) as e``."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.config = config
        # ``registry`` holds the whole exposition (for --once and tests): the snapshot's
        # families, then the exporter's own metrics, which have a registry of their own so
        # that /metrics can render them per scrape and the snapshot's once per snapshot.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        own = CollectorRegistry(auto_describe=False)
        self.metrics = ExporterMetrics(registry=own, endpoints=ENDPOINTS, reasons=REASONS)
        if process_metrics:
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
            GCCollector(registry=own)
        self._session: aiohttp.ClientSession | None = None
        self._poller: Poller | None = None
        self.registry.register(SnapshotCollector(lambda: self.poller.snapshot))
        self.registry.register(own)
        self.exposition = Exposition(own, lambda: self.poller.snapshot)

    @property
    def poller(self) -> Poller:
        if self._poller is None:
            raise RuntimeError("Exporter is not started; use 'async with'")
        return self._poller

    async def __aenter__(self) -> Exporter:
        api = self.config.api
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"realtimekit-exporter/{__version__}"},
            connector=aiohttp.TCPConnector(limit=max(api.max_concurrency, 1)),
            trust_env=False,  # see client.proxy_for
        )
        rate = self.config.shard.budget(api.rate_limit)
        budget = RequestBudget(requests=rate.requests, window=rate.window)
        self.metrics.watch_budget(budget.available)
        client = RealtimeKitClient(
            session=self._session,
            base_url=api.base_url,
            token=api.token,
            budget=budget,
            timeout=api.timeout,
            # Short intervals (tests, demos) still leave most of the cycle for requests.
            min_request_time=min(MIN_REQUEST_TIME, self.config.poll.interval / 4),
            max_concurrency=api.max_concurrency,
            observer=self.metrics,
        )
        self._poller = Poller(
            config=self.config,
            api=client,
            observer=self.metrics,
            # The formats scraped lately start rendering for each new snapshot at once.
            on_snapshot=self.exposition.published,
        )
        for warning in budget_warnings(self.config):
            log.warning("%s", warning)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class StatusSource(Protocol):
    """What the status page at ``/`` shows (the :class:`~exporter.poller.Poller`)."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def recent_errors(self) -> Sequence[PollError]: ...


def create_app(
    *,
    ready: Callable[[], bool],
    exposition: Exposition | None = None,
    registry: CollectorRegistry | None = None,
    status: StatusSource | None = None,
    refresh: float | None = None,
) -> web.Application:
    """The HTTP app. /metrics serves ``exposition`` (the snapshot's part rendered once per
    snapshot), or else ``registry`` rendered whole on every scrape: pass one of them.
    ``ready`` says whether a poll cycle has completed, ``status`` feeds the page at ``/``
    (which reloads itself every ``refresh`` seconds if given)."""
    if registry is not None and exposition is None:
        exposition = Exposition(registry)
    elif exposition is None or registry is not None:
        raise TypeError("create_app() takes one of exposition and registry")
    app = web.Application()
    app[EXPOSITION] = exposition
    app[READY] = ready
    app[STATUS] = status
    app[REFRESH] = refresh
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/", _index)
    return app


async def _metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(media_range(request.headers.get("Accept", "")))
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    # Renders run off the loop (exporter.exposition), so that a large exposition never
    # delays polling or other scrapes.
    body = await request.app[EXPOSITION].body(encoder, gzipped=gzipped)
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def _ready(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.Response(text="OK\n")
    return web.Response(status=503, text="not ready: no poll cycle has completed yet\n")


# No script runs on the page and it loads nothing: the policy forbids all but inline CSS.
_INDEX_HEADERS: Final = {
    "Content-Type": "text/html; charset=utf-8",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-store",
}


async def _index(request: web.Request) -> web.Response:
    source = request.app[STATUS]
    # Both are read here, on the loop (the poller swaps the snapshot and appends errors on
    # it); the render then runs off the loop, as /metrics does, for apps with many streams.
    snapshot = source.snapshot if source is not None else EMPTY_SNAPSHOT
    errors = tuple(source.recent_errors) if source is not None else ()
    render = functools.partial(
        statuspage.render,
        snapshot,
        errors,
        time.time(),
        __version__,
        refresh=request.app[REFRESH],
    )
    page = await asyncio.get_running_loop().run_in_executor(None, render)
    # "replace": a lone surrogate from a JSON \ud800 escape cannot fail the page.
    return web.Response(body=page.encode("utf-8", "replace"), headers=_INDEX_HEADERS)


class Server:
    """Runs the poller and the HTTP server for one :class:`Exporter` until stopped."""

    def __init__(self, exporter: Exporter, *, host: str | None, port: int) -> None:
        self._exporter = exporter
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.failure: BaseException | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound ``(host, port)`` pairs (port 0 resolves to the real port)."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    async def start(self) -> None:
        app = create_app(
            exposition=self._exporter.exposition,
            ready=lambda: self._exporter.poller.ready,
            status=self._exporter.poller,
            refresh=self._exporter.config.poll.interval,
        )
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            where = join_host_port(self._host or "*", self._port)
            raise ServeError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        self._poll_task = asyncio.create_task(self._exporter.poller.run(self._stop), name="poller")
        self._poll_task.add_done_callback(self._poller_done)
        for host, port in self.addresses:
            address = join_host_port(host, port)
            log.info("listening on %s", address, extra={"address": address})

    def _poller_done(self, task: asyncio.Task[None]) -> None:
        if self._stop.is_set() and (task.cancelled() or task.exception() is None):
            return  # a shutdown
        # Ended by itself: a crash, or a cancellation from a library. Serving a frozen
        # snapshot would hide it, so the process stops and exits 1 for a restart.
        self.failure = (
            RuntimeError("the poller was cancelled") if task.cancelled() else task.exception()
        )
        log.critical("the poller stopped unexpectedly: %r", self.failure)
        self._stop.set()

    def stop(self) -> None:
        """Ask the server to stop; safe to call from a signal handler."""
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        """Stop polling and serving, within :data:`STOP_TIMEOUT` seconds."""
        self._stop.set()
        if self._poll_task is not None:
            self._poll_task.cancel()
            # wait() never raises the task's own CancelledError, so a cancellation of
            # close() itself still propagates.
            _, pending = await asyncio.wait({self._poll_task}, timeout=STOP_TIMEOUT / 2)
            if pending:
                log.warning("the poller did not stop in time")
            self._poll_task = None
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), timeout=STOP_TIMEOUT / 2)
            except TimeoutError:
                log.warning("HTTP server did not stop in time; open connections were dropped")
            self._runner = None


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
