"""The exporter process: wiring, HTTP endpoints and lifecycle.

:class:`Exporter` builds one HTTP client session, the pollers of each API token
(:mod:`exporter.fleet`), the metrics registry and the /metrics exposition
(:mod:`exporter.exposition`) from a :class:`~exporter.config.Config`, and takes a
reloaded one.
:func:`create_app` serves ``/metrics``, ``/-/healthy``, ``/-/ready``, ``/-/reload`` and the
status page (:mod:`exporter.statuspage`) at ``/``, behind basic auth if the web
configuration (:mod:`exporter.webconfig`) asks for it;
:class:`Server` runs both until asked to stop, and stops within a bounded time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from exporter import __version__, receiver, statuspage
from exporter.apitoken import config_warnings
from exporter.client import ENDPOINTS, REASONS
from exporter.collector import SnapshotCollector
from exporter.connections import IDLE_TIMEOUT, ConnectionGuard, GuardedSite, connection_limit
from exporter.connections import REASONS as CLOSE_REASONS
from exporter.exposition import Exposition
from exporter.fleet import Fleet
from exporter.hints import RESULTS
from exporter.model import EMPTY_SNAPSHOT
from exporter.negotiate import accepts_gzip, media_range
from exporter.telemetry import ExporterMetrics
from exporter.webconfig import WWW_AUTHENTICATE, AuthOverloaded, WebState, client_key
from exporter.webhookkey import PublicKeys
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from aiohttp.typedefs import Middleware

    from exporter.apitoken import ApiToken
    from exporter.config import Config
    from exporter.model import PollError, Snapshot
    from exporter.statuspage import CredentialsStatus

    # Re-reads the configuration; None on success, else why it was rejected. It runs to its
    # end even if its caller is cancelled (a client that hung up), as Reloader.reload does.
    Reload = Callable[[], Awaitable[str | None]]

log = logging.getLogger(__name__)

EXPOSITION: Final = web.AppKey("exposition", Exposition)
READY: Final[web.AppKey[Callable[[], bool]]] = web.AppKey("ready")
STATUS: Final[web.AppKey[StatusSource | None]] = web.AppKey("status")
REFRESH: Final[web.AppKey[float | None]] = web.AppKey("refresh")
WEB: Final = web.AppKey("web", WebState)
RELOAD: Final[web.AppKey[Reload]] = web.AppKey("reload")
OBSERVER: Final[web.AppKey[HttpObserver]] = web.AppKey("observer")
PAGES: Final = web.AppKey("pages", DaemonExecutor)
STOPPING: Final = web.AppKey("stopping", asyncio.Event)
STOP_TIMEOUT: Final = 4.0
SOCKETS_PER_LISTENER: Final = 2  # ":PORT" listens on IPv4 and IPv6
# Requests in progress at a stop get this long to finish, then as long again to end once
# cancelled (aiohttp's shutdown_timeout), within the share of STOP_TIMEOUT given to it.
GRACE: Final = 0.5
# Bodies are handed to the transport this much at a time. Python 3.11's transports copy
# what they cannot send at once into a buffer of their own, so a body handed over whole
# (13 MB at 10,000 streams) became one copy per client that reads slowly or not at all;
# in slices, a stalled client holds one slice (3.12 keeps references, not copies).
WRITE_SLICE: Final = 256 * 1024


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
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        """``on_token`` is told each token the exporter starts to use after ``config``'s
        (a reload's, or a rotated token file's), before it is used: for log redaction."""
        self.config = config
        # ``registry`` holds the whole exposition (for --once and tests): the snapshot's
        # families, then the exporter's own metrics, which have a registry of their own so
        # that /metrics can render them per scrape and the snapshot's once per snapshot.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        own = CollectorRegistry(auto_describe=False)
        self.metrics = ExporterMetrics(
            registry=own, endpoints=ENDPOINTS, reasons=REASONS, close_reasons=CLOSE_REASONS
        )
        if process_metrics:
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
            GCCollector(registry=own)
        self.metrics.config_loaded(ok=True, at=time.time())
        self._on_token = on_token
        self._session: aiohttp.ClientSession | None = None
        self._fleet: Fleet | None = None
        self.keys: PublicKeys | None = None
        if config.webhooks is not None:
            self.metrics.enable_webhooks(
                events=(receiver.STATUS_UPDATE,),
                unverified=[
                    (receiver.UNVERIFIED, o) for o in ("bad_signature", "too_large", "unavailable")
                ],
                outcomes=receiver.VERIFIED_OUTCOMES,
                results=RESULTS,
            )
        self.registry.register(SnapshotCollector(lambda: self.poller.snapshot))
        self.registry.register(own)
        self.exposition = Exposition(own, lambda: self.poller.snapshot)

    @property
    def poller(self) -> Fleet:
        """The pollers of every credentials in use, seen as one."""
        if self._fleet is None:
            raise RuntimeError("Exporter is not started; use 'async with'")
        return self._fleet

    @property
    def refresher(self) -> Fleet | None:
        """Where verified webhooks go (the refreshers of the units); None without a receiver."""
        return self._fleet if self._fleet is not None and self.config.webhooks else None

    @property
    def token(self) -> ApiToken:
        """The default credentials' token (with one token, the only one)."""
        return self.poller.unit().token

    async def __aenter__(self) -> Exporter:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"realtimekit-exporter/{__version__}"},
            # No pool limit of its own: each client bounds the requests in flight by
            # api.max_concurrency, which a reload may change.
            connector=aiohttp.TCPConnector(limit=0),
            trust_env=False,  # see client.proxy_for
        )
        hooks = self.config.webhooks
        self._fleet = Fleet(
            self.config,
            session=self._session,
            metrics=self.metrics,
            webhooks=hooks is not None,
            # The formats scraped lately start rendering for each new snapshot at once.
            on_snapshot=self.exposition.published,
            on_token=self._on_token,
        )
        if hooks is not None:
            self.keys = PublicKeys(
                url=hooks.public_key_url,
                file=hooks.public_key_file,
                session=self._session,
                observer=self.metrics,
            )
        _warn(self.config)
        return self

    def reconfigure(self, config: Config) -> None:
        """Poll by ``config`` (a reload's): each credentials' unit takes it at its next
        cycle, with its budget resized at once (:meth:`Fleet.reconfigure`); credentials
        it adds start now, those it no longer uses stop. The snapshot carries over."""
        if self._on_token is not None:
            for token in config.tokens():
                self._on_token(token.reveal())
        old = self.config
        if config.webhooks != old.webhooks:
            log.warning(
                "the webhooks section changed: it takes effect at the next restart "
                "(the receiver keeps its listener, path and key source until then)"
            )
            config = dataclasses.replace(config, webhooks=old.webhooks)
        self.config = config
        changes = self.poller.reconfigure(config)
        log.info(
            "polling by the reloaded configuration: %s%s",
            config.summary(),
            f" (credentials {', '.join(changes)})" if changes else "",
        )
        _warn(config)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exposition.close()
        if self._fleet is not None:
            await self._fleet.close()
        if self.keys is not None:
            await self.keys.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _warn(config: Config) -> None:
    """Log what may go wrong with ``config`` (each credentials' budget, among others)."""
    for warning in config_warnings(config):
        log.warning("%s", warning)


class HttpObserver(Protocol):
    """Where the HTTP side reports what it refuses (the exporter's own metrics)."""

    def auth_overloaded(self) -> None: ...


class StatusSource(Protocol):
    """What the status page at ``/`` shows (the :class:`~exporter.fleet.Fleet`); read on
    the event loop, where it changes, and rendered off it."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def recent_errors(self) -> Sequence[PollError]: ...

    def credentials_status(self) -> Sequence[CredentialsStatus]: ...


def create_app(
    *,
    ready: Callable[[], bool],
    exposition: Exposition | None = None,
    registry: CollectorRegistry | None = None,
    status: StatusSource | None = None,
    refresh: float | None = None,
    web_state: WebState | None = None,
    reload: Reload | None = None,
    guard: ConnectionGuard | None = None,
    observer: HttpObserver | None = None,
) -> web.Application:
    """The HTTP app. /metrics serves ``exposition`` (the snapshot's part rendered once per
    snapshot), or else ``registry`` rendered whole on every scrape: pass one of them.
    ``ready`` says whether a poll cycle has completed, ``status`` feeds the page at ``/``
    (which reloads itself every ``refresh`` seconds if given). ``web_state`` puts every
    path but its ``unauthenticated`` ones behind its basic auth, if it has users;
    ``reload`` is run by ``POST /-/reload`` (without it, that answers 403 and why);
    ``guard`` is told when each request starts and ends (a connection in a request is
    never evicted or timed out for its headers);
    ``observer`` counts the requests refused because password checks queue too long."""
    owned = None
    if registry is not None and exposition is None:
        exposition = owned = Exposition(registry)
    elif exposition is None or registry is not None:
        raise TypeError("create_app() takes one of exposition and registry")
    middlewares: list[Middleware] = []
    if guard is not None:
        middlewares.append(guard.middleware)
    if web_state is not None:
        middlewares.append(_authenticate)
    app = web.Application(middlewares=middlewares)
    app[EXPOSITION] = exposition
    app[PAGES] = DaemonExecutor(1, name="statuspage")
    app[STOPPING] = asyncio.Event()
    app.on_cleanup.append(_stop_pages)
    if owned is not None:
        app.on_cleanup.append(lambda _: _close(owned))
    if observer is not None:
        app[OBSERVER] = observer
    app[READY] = ready
    app[STATUS] = status
    app[REFRESH] = refresh
    if web_state is not None:
        app[WEB] = web_state
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    if reload is not None:
        app[RELOAD] = reload
    app.router.add_post("/-/reload", _reload)  # any other method: 405
    app.router.add_get("/", _index)
    return app


async def _stop_pages(app: web.Application) -> None:
    app[PAGES].shutdown()


async def _close(exposition: Exposition) -> None:
    exposition.close()


_UNAUTHORIZED_HEADERS: Final = {"WWW-Authenticate": WWW_AUTHENTICATE, "Cache-Control": "no-store"}
_OVERLOADED_HEADERS: Final = {"Retry-After": "1", "Cache-Control": "no-store"}
_CLOSE: Final = {"Connection": "close", "Cache-Control": "no-store"}


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[WEB]
    auth = state.auth  # read once: a reload may replace it meanwhile
    if auth is None or request.path in state.unauthenticated:
        return await handler(request)
    try:
        allowed = await auth.allows(
            request.headers.get("Authorization"), client=client_key(request.remote)
        )
    except AuthOverloaded:
        if (observer := request.app.get(OBSERVER)) is not None:
            observer.auth_overloaded()
        return web.Response(
            status=503, text="too many password checks waiting\n", headers=_OVERLOADED_HEADERS
        )
    if allowed:
        return await handler(request)
    return web.Response(status=401, text="Unauthorized\n", headers=_UNAUTHORIZED_HEADERS)


LIFECYCLE_OFF: Final = "lifecycle APIs are not enabled: start with --web.enable-lifecycle\n"


async def _reload(request: web.Request) -> web.Response:
    reload = request.app.get(RELOAD)
    if reload is None:
        # As Prometheus answers: the endpoint exists, but it is off (a 404 said nothing).
        return web.Response(status=403, text=LIFECYCLE_OFF, headers={"Cache-Control": "no-store"})
    problem = await reload()
    if problem is None:
        return web.Response(text="configuration reloaded\n")
    return web.Response(status=500, text=f"reload failed: {problem}\n")


async def _metrics(request: web.Request) -> web.StreamResponse:
    if request.app[STOPPING].is_set():  # its renders are no longer taken
        return _stopping()
    encoder, content_type = choose_encoder(media_range(request.headers.get("Accept", "")))
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    # Renders run off the loop (exporter.exposition), so that a large exposition never
    # delays polling or other scrapes. The chunks are sent in turn: joined, the cached
    # part would be copied for every scrape.
    chunks = await request.app[EXPOSITION].chunks(encoder, gzipped=gzipped)
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return await _send(request, headers, chunks)


async def _send(
    request: web.Request, headers: Mapping[str, str], chunks: Sequence[bytes]
) -> web.StreamResponse:
    """A response of ``chunks`` in turn, in :data:`WRITE_SLICE` slices (the headers alone
    for HEAD, which a stream response would otherwise follow with the body)."""
    response = web.StreamResponse(headers=headers)
    response.content_length = sum(len(chunk) for chunk in chunks)
    await response.prepare(request)
    if request.method == "HEAD":
        chunks = ()
    stopping = request.app[STOPPING]
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), WRITE_SLICE):
            if stopping.is_set():
                raise ConnectionResetError("the exporter is stopping")
            await response.write(view[start : start + WRITE_SLICE])
    await response.write_eof()
    return response


def _stopping() -> web.Response:
    """For a request that arrives on an open connection while the server stops."""
    return web.Response(status=503, text="the exporter is stopping\n", headers=_CLOSE)


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


async def _index(request: web.Request) -> web.StreamResponse:
    if request.app[STOPPING].is_set():
        return _stopping()
    source = request.app[STATUS]
    # All is read here, on the loop (the poller swaps the snapshot and appends errors on
    # it, the budgets grant requests on it) into plain data; the render then runs off the
    # loop, as /metrics does, for apps with many streams.
    snapshot = source.snapshot if source is not None else EMPTY_SNAPSHOT
    errors = tuple(source.recent_errors) if source is not None else ()
    credentials = tuple(source.credentials_status()) if source is not None else ()
    render = functools.partial(
        statuspage.render,
        snapshot,
        errors,
        time.time(),
        __version__,
        credentials=credentials,
        refresh=request.app[REFRESH],
    )
    page = await asyncio.get_running_loop().run_in_executor(request.app[PAGES], render)
    # "replace": a lone surrogate from a JSON \ud800 escape cannot fail the page.
    return await _send(request, _INDEX_HEADERS, [page.encode("utf-8", "replace")])


class Server:
    """Runs the poller and the HTTP server for one :class:`Exporter` until stopped."""

    def __init__(
        self,
        exporter: Exporter,
        *,
        host: str | None,
        port: int,
        web_state: WebState | None = None,
        reload: Reload | None = None,
    ) -> None:
        """``web_state``: TLS and basic auth (none: plain HTTP, open); ``reload``: what
        ``POST /-/reload`` runs (none: it answers 403, lifecycle APIs are not enabled)."""
        self._exporter = exporter
        self._host = host
        self._port = port
        self._web = web_state
        self._reload = reload
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None
        self._guard: ConnectionGuard | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.failure: BaseException | None = None
        # The webhook receiver's listener, when the config has one.
        self._hook_runner: web.AppRunner | None = None
        self._hook_guard: ConnectionGuard | None = None
        self._key_task: asyncio.Task[object] | None = None
        self._hook_limit = 0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound ``(host, port)`` pairs (port 0 resolves to the real port)."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    @property
    def webhook_addresses(self) -> list[tuple[str, int]]:
        """The webhook receiver's bound ``(host, port)`` pairs; none without a receiver."""
        if self._hook_runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._hook_runner.addresses]

    async def start(self) -> None:
        limit = None
        if self._exporter.config.webhooks is not None:
            # Two listeners share the open-files limit: the receiver gets a quarter.
            whole = connection_limit(listeners=2 * SOCKETS_PER_LISTENER)
            self._hook_limit = max(16, whole // 4)
            limit = max(16, whole - self._hook_limit)
        self._guard = guard = ConnectionGuard(observer=self._exporter.metrics, limit=limit)
        app = create_app(
            exposition=self._exporter.exposition,
            ready=lambda: self._exporter.poller.ready,
            status=self._exporter.poller,
            refresh=self._exporter.config.poll.interval,
            web_state=self._web,
            reload=self._reload,
            guard=guard,
            observer=self._exporter.metrics,
        )
        self._app = app
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=GRACE,
            keepalive_timeout=IDLE_TIMEOUT,
            # A client that hangs up stops its request: no bcrypt run or render for it.
            handler_cancellation=True,
        )
        await self._runner.setup()
        tls = self._web.tls if self._web is not None else None
        site = GuardedSite(
            self._runner,
            self._host,
            self._port,
            guard=guard,
            tls=tls.context if tls is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            where = join_host_port(self._host or "*", self._port)
            raise ServeError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        guard.start()
        try:
            await self._start_receiver()
        except ServeError:
            await self._runner.cleanup()
            self._runner = None
            await guard.close()
            raise
        self._poll_task = asyncio.create_task(self._exporter.poller.run(self._stop), name="poller")
        self._poll_task.add_done_callback(self._poller_done)
        for host, port in self.addresses:
            address = join_host_port(host, port)
            log.info("listening on %s (%s)", address, self.scheme, extra={"address": address})

    async def _start_receiver(self) -> None:
        """Listen for webhooks on their own address, if the config has a receiver, and
        start loading the public key (deliveries are answered 503 until it is loaded)."""
        exporter = self._exporter
        hooks = exporter.config.webhooks
        if hooks is None or exporter.keys is None or exporter.refresher is None:
            return
        self._hook_guard = guard = ConnectionGuard(limit=self._hook_limit)
        judge = receiver.Receiver(
            keys=exporter.keys, hints=exporter.refresher, observer=exporter.metrics, guard=guard
        )
        app = receiver.create_receiver(judge, hooks.path, middlewares=[guard.middleware])
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=GRACE,
            keepalive_timeout=IDLE_TIMEOUT,
            handler_cancellation=True,
            lingering_time=receiver.LINGERING_TIME,
        )
        await runner.setup()
        site = GuardedSite(runner, hooks.host, hooks.port, guard=guard)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._hook_guard = None
            where = join_host_port(hooks.host or "*", hooks.port)
            raise ServeError(
                f"cannot listen for webhooks on {where}: {exc.strerror or exc}"
            ) from None
        self._hook_runner = runner
        guard.start()
        self._key_task = asyncio.create_task(exporter.keys.load(), name="webhook-key")
        for host, port in self.webhook_addresses:
            address = join_host_port(host, port)
            log.info(
                "receiving webhooks on %s at %s (http)",
                address,
                hooks.path,
                extra={"address": address},
            )

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "https" if self._web is not None and self._web.tls is not None else "http"

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
        """Stop polling and serving, within :data:`STOP_TIMEOUT` seconds: requests in
        progress get :data:`GRACE` to finish, but no body is sent on once stopping (a
        scrape cut short fails, as it would a moment later against a stopped process)."""
        self._stop.set()
        if self._app is not None:
            self._app[STOPPING].set()
        # Renders queued for scrapes are dropped, so those scrapes end now instead of
        # keeping the render thread (and the GIL) busy while the server winds down.
        self._exporter.exposition.close()
        if self._key_task is not None:
            self._key_task.cancel()
        await asyncio.gather(self._stop_polling(), self._stop_serving(), self._stop_receiver())
        for guard in (self._guard, self._hook_guard):
            if guard is not None:
                await guard.close()  # TLS handshakes in progress, anything left
        self._guard = self._hook_guard = None
        if self._key_task is not None:
            await asyncio.gather(self._key_task, return_exceptions=True)
            self._key_task = None
        if self._exporter.keys is not None:
            await self._exporter.keys.close()

    async def _stop_polling(self) -> None:
        if self._poll_task is None:
            return
        self._poll_task.cancel()
        # wait() never raises the task's own CancelledError, so a cancellation of close()
        # itself still propagates.
        _, pending = await asyncio.wait({self._poll_task}, timeout=STOP_TIMEOUT / 4)
        if pending:
            log.warning("the poller did not stop in time")
        self._poll_task = None

    async def _stop_serving(self) -> None:
        runner, self._runner = self._runner, None
        await _stop_runner(runner, "HTTP server")

    async def _stop_receiver(self) -> None:
        runner, self._hook_runner = self._hook_runner, None
        await _stop_runner(runner, "webhook listener")


async def _stop_runner(runner: web.AppRunner | None, what: str) -> None:
    if runner is None:
        return
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=STOP_TIMEOUT / 2)
    except TimeoutError:
        log.warning("%s did not stop in time; open connections were dropped", what)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
