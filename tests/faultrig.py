"""The exporter's pieces wired as :class:`exporter.server.Exporter` wires them, on a
hand-moved clock, with /metrics and the status page served on a loopback port, and with
everything a secret could leak into kept for :meth:`FaultRig.leaks` to search.

The clock moves only between cycles (and when the client or its budget sleep), so retries
and rate-limit pauses are deterministic; only a request the API never answers takes real
time, bounded by ``api.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.apitoken import ApiToken
from exporter.client import ENDPOINTS, REASONS, ApiError, RealtimeKitClient
from exporter.collector import SnapshotCollector
from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.poller import INTERNAL, Poller
from exporter.server import create_app
from exporter.telemetry import ExporterMetrics
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, make_config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable
    from types import TracebackType

    from exporter.config import Config, RateLimit
    from exporter.model import ActiveSession, Listing, Livestream, PollError, Snapshot, Totals
    from exporter.statuspage import CredentialsStatus

T0: Final = 1_800_000_000.0
INTERVAL: Final = 2.0
CYCLE_LIMIT: Final = 20.0  # real seconds one poll cycle may take before the test fails
HTTP_LIMIT: Final = 5.0  # real seconds for one scrape
OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0"
Key = tuple[str, frozenset[tuple[str, str]]]


class RecordingApi:
    """The client as the poller's ``Api``, keeping every :class:`ApiError` it raises."""

    def __init__(self, client: RealtimeKitClient) -> None:
        self.client = client
        self.errors: list[ApiError] = []

    async def list_livestreams(self, account_id: str, app_id: str, **kwargs: Any) -> Listing:
        listing: Listing = await self._kept(
            self.client.list_livestreams(account_id, app_id, **kwargs)
        )
        return listing

    async def livestream(
        self, account_id: str, app_id: str, livestream_id: str, **kwargs: Any
    ) -> Livestream | None:
        found: Livestream | None = await self._kept(
            self.client.livestream(account_id, app_id, livestream_id, **kwargs)
        )
        return found

    async def active_session(
        self, account_id: str, app_id: str, livestream_id: str, **kwargs: Any
    ) -> ActiveSession:
        answer: ActiveSession = await self._kept(
            self.client.active_session(account_id, app_id, livestream_id, **kwargs)
        )
        return answer

    async def session(
        self, account_id: str, app_id: str, session_id: str, **kwargs: Any
    ) -> ActiveSession:
        answer: ActiveSession = await self._kept(
            self.client.session(account_id, app_id, session_id, **kwargs)
        )
        return answer

    async def livestream_analytics(self, *args: Any, **kwargs: Any) -> Totals:
        totals: Totals = await self._kept(self.client.livestream_analytics(*args, **kwargs))
        return totals

    async def livestream_analytics_days(self, *args: Any, **kwargs: Any) -> tuple[Totals, ...]:
        days: tuple[Totals, ...] = await self._kept(
            self.client.livestream_analytics_days(*args, **kwargs)
        )
        return days

    async def _kept(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except ApiError as exc:
            self.errors.append(exc)
            raise


@dataclass(frozen=True)
class Scrape:
    """One scrape of /metrics (text and OpenMetrics) and of the status page."""

    text: str
    openmetrics: str
    page: str
    samples: dict[Key, float]

    def value(self, name: str, **labels: str) -> float | None:
        key = (name, frozenset({"account_id": ACCOUNT, "app_id": APP, **labels}.items()))
        return self.samples.get(key)

    def stream(self, name: str, livestream_id: str) -> float | None:
        return self.value(name, livestream_id=livestream_id)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def count(self, name: str, **labels: str) -> int:
        """How many samples of ``name`` have labels including ``labels``."""
        wanted = set(labels.items())
        return sum(1 for n, ls in self.samples if n == name and wanted <= ls)

    def errors(self, reason: str) -> float:
        return self.value("realtimekit_exporter_poll_errors_total", reason=reason) or 0.0

    def requests(self, endpoint: str, code: str) -> float:
        return self.total(
            "realtimekit_exporter_api_requests_total", api_endpoint=endpoint, code=code
        )


def samples(text: str) -> dict[Key, float]:
    """The samples of a text exposition; fails on a sample that appears twice."""
    found: dict[Key, float] = {}
    for family in parse_text(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


class _PollerStatus:
    """The status page's source for one poller without a fleet: no credentials table."""

    def __init__(self, poller: Poller) -> None:
        self._poller = poller

    @property
    def snapshot(self) -> Snapshot:
        return self._poller.snapshot

    @property
    def recent_errors(self) -> tuple[PollError, ...]:
        return self._poller.recent_errors

    def credentials_status(self) -> tuple[CredentialsStatus, ...]:
        return ()


class FaultRig:
    """Client, poller, metrics and the HTTP app for one upstream; ``async with`` it."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        timeout: float = 5.0,
        retries: int = 2,
        max_staleness: float = 300.0,
        rate_limit: RateLimit | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.config: Config = make_config(
            base_url,
            discover=True,
            interval=INTERVAL,
            token=token,
            timeout=timeout,
            max_staleness=max_staleness,
            rate_limit=rate_limit,
        )
        self._retries = retries
        self.own = CollectorRegistry(auto_describe=False)
        self.metrics = ExporterMetrics(registry=self.own, endpoints=ENDPOINTS, reasons=REASONS)
        self.scrapes: list[Scrape] = []
        self._http: aiohttp.ClientSession | None = None
        self._scraper: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._origin = ""
        self._api: RecordingApi | None = None
        self._poller: Poller | None = None

    @property
    def api(self) -> RecordingApi:
        assert self._api is not None, "use 'async with'"
        return self._api

    @property
    def poller(self) -> Poller:
        assert self._poller is not None, "use 'async with'"
        return self._poller

    async def __aenter__(self) -> FaultRig:
        self._http = aiohttp.ClientSession(trust_env=False)
        self._scraper = aiohttp.ClientSession(trust_env=False)
        try:
            token = ApiToken(
                self.config,
                session=self._http,
                observer=self.metrics,
                clock=self.clock,
                sleep=self.clock.sleep,
                jitter=lambda: 0.0,
                retries=self._retries,
                slack=0.0,
            )
            self.metrics.watch_budget(token.budget.available, token.in_force)
            self._api = RecordingApi(token.client)
            self._poller = Poller(
                config=self.config,
                api=self._api,
                observer=self.metrics,
                clock=self.clock,
                monotonic=self.clock,
            )
            # The whole registry rendered per scrape: every scrape shows the snapshot of
            # the cycle before it (the cached exposition may serve the one before that while
            # it renders, which tests/unit/test_exposition.py covers).
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(lambda: self.poller.snapshot))
            registry.register(self.own)
            app = create_app(
                registry=registry,
                ready=lambda: self.poller.ready,
                status=_PollerStatus(self.poller),
                refresh=INTERVAL,
            )
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            host, port = self._runner.addresses[0][:2]
            self._origin = f"http://{host}:{port}"
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in (self._http, self._scraper):
            if session is not None:
                await session.close()
        self._http = self._scraper = None

    # -- running ------------------------------------------------------------------------
    async def cycle(self, *, stuck: asyncio.Event | None = None) -> Scrape:
        """One poll cycle an interval after the last, then a scrape. With ``stuck`` (an
        event the API sets when a request hangs), the endpoints are also scraped while the
        cycle waits for the API, and must answer with the last snapshot."""
        self.clock.now += INTERVAL
        before = self.poller.snapshot
        if stuck is not None:
            stuck.clear()
        task = asyncio.create_task(self.poller.poll_once())
        try:
            if stuck is not None:
                waiter = asyncio.create_task(stuck.wait())
                done, _ = await asyncio.wait(
                    {task, waiter}, timeout=CYCLE_LIMIT, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                assert waiter in done and task not in done, "the API did not hang the cycle"
                await self.scrape()
                assert self.poller.snapshot is before
            snapshot = await asyncio.wait_for(asyncio.shield(task), CYCLE_LIMIT)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        assert snapshot.cycles == before.cycles + 1
        return await self.scrape()

    async def scrape(self) -> Scrape:
        """/metrics as text and as OpenMetrics (each must parse), and the status page."""
        text = await self._get("/metrics", {"Accept-Encoding": "identity"})
        openmetrics = await self._get("/metrics", {"Accept": OPENMETRICS})
        list(parse_openmetrics(openmetrics))  # strict: fails on any malformed line
        page = await self._get("/", {})
        assert await self._get("/-/healthy", {}) == "OK\n"
        scrape = Scrape(text=text, openmetrics=openmetrics, page=page, samples=samples(text))
        self.scrapes.append(scrape)
        return scrape

    async def _get(self, path: str, headers: dict[str, str]) -> str:
        assert self._scraper is not None
        timeout = aiohttp.ClientTimeout(total=HTTP_LIMIT)
        async with self._scraper.get(self._origin + path, headers=headers, timeout=timeout) as r:
            assert r.status == 200, (path, r.status)
            return await r.text()

    def internal_errors(self) -> list[str]:
        return [e.message for e in self.poller.recent_errors if e.reason == INTERNAL]

    # -- secrets ------------------------------------------------------------------------
    def outputs(self, records: Iterable[logging.LogRecord]) -> dict[str, str]:
        """Everything the exporter said: scrapes, status pages, log records (as logged,
        before the formatter's redaction), errors raised, errors kept, reprs of config and
        client."""
        texts: dict[str, str] = {}
        for i, s in enumerate(self.scrapes):
            texts[f"scrape {i} text"] = s.text
            texts[f"scrape {i} openmetrics"] = s.openmetrics
            texts[f"scrape {i} status page"] = s.page
        plain = LogfmtFormatter(tuple)  # no secrets registered: no last line of defence
        as_json = JsonFormatter(tuple)
        for i, record in enumerate(records):
            parts = [plain.format(record), as_json.format(record), repr(record.args)]
            parts += [f"{k}={v!r}" for k, v in vars(record).items()]
            texts[f"log record {i} ({record.name})"] = "\n".join(parts)
        for i, error in enumerate(self.api.errors):
            parts = [str(error), repr(error), *map(repr, error.args)]
            for linked in (error.__cause__, error.__context__):
                parts += [str(linked), repr(linked)]
            texts[f"ApiError {i}"] = "\n".join(parts)
        for i, kept in enumerate(self.poller.recent_errors):
            texts[f"recent error {i}"] = f"{kept!r} {kept.message}"
        api = self.config.api
        texts["reprs"] = "\n".join(
            [
                repr(self.config),
                str(self.config),
                repr(api),
                repr(api.token),
                str(api.token),
                repr(self.api.client),
                str(self.api.client),
                repr(self.config.apps),
            ]
        )
        return texts

    def leaks(self, secrets: Iterable[str], records: Iterable[logging.LogRecord]) -> list[str]:
        """Where any of ``secrets`` shows up, in any letter case (the status is upper-cased,
        for one): the place and the secret's first characters."""
        outputs = {where: text.lower() for where, text in self.outputs(records).items()}
        return [
            f"{where}: {secret[:10]}..."
            for secret in secrets
            for where, text in outputs.items()
            if secret.lower() in text
        ]


def exporter_lines(records: Iterable[logging.LogRecord]) -> list[str]:
    """The exporter's log lines at INFO and above."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in records
        if r.name.startswith("exporter") and r.levelno >= logging.INFO
    ]
