"""Async calls to the RealtimeKit API (livestreams, an app's livestream analytics and its
webhooks), with budget, retries and one error type.

Every request passes the token's :class:`~exporter.budget.RequestBudget`, a concurrency
limit and ``api.timeout``; transient failures (timeouts, connection errors, 5xx) are
retried with full-jitter backoff while the cycle's deadline allows, except for a POST,
which could create a second webhook if its first answer was merely lost. Whatever goes
wrong surfaces as :class:`ApiError` with a ``reason`` from a small fixed set. Error text
never holds the token: it is only ever put in the ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import heapq
import itertools
import logging
import random
import re
import time
import urllib.request
from collections import Counter
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from exporter import decode
from exporter.budget import BudgetExhausted, CycleDeadline, RequestBudget
from exporter.model import (
    UNKNOWN_STATUS,
    ActiveSession,
    Listing,
    Livestream,
    Session,
    Totals,
    Webhook,
    addressable,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )

    from exporter.config import Secret

log = logging.getLogger(__name__)

Reason = Literal["auth", "rate_limited", "timeout", "connection", "http_error", "decode"]
REASONS: Final[tuple[Reason, ...]] = (
    "auth",
    "rate_limited",
    "timeout",
    "connection",
    "http_error",
    "decode",
)
ENDPOINT_LISTING: Final = "livestreams"
ENDPOINT_SESSION: Final = "active_livestream_session"
ENDPOINT_SESSION_BY_ID: Final = "livestream_session"
ENDPOINT_LIVESTREAM: Final = "livestream"
ENDPOINT_WEBHOOKS: Final = "webhooks"  # an app's webhooks: listed, or one added
ENDPOINT_WEBHOOK: Final = "webhook"  # one webhook by id: edited or deleted
ENDPOINT_ANALYTICS: Final = "livestream_analytics"  # an app's totals over all time
ENDPOINT_ANALYTICS_DAYS: Final = "livestream_analytics_daywise"  # an app's totals by day
ENDPOINTS: Final = (
    ENDPOINT_LISTING,
    ENDPOINT_SESSION,
    ENDPOINT_SESSION_BY_ID,
    ENDPOINT_LIVESTREAM,
    ENDPOINT_WEBHOOKS,
    ENDPOINT_WEBHOOK,
    ENDPOINT_ANALYTICS,
    ENDPOINT_ANALYTICS_DAYS,
)
Method = Literal["GET", "POST", "PATCH", "DELETE"]
# Methods retried on a transient failure: sent twice, they leave the same state as once
# (the PATCHes this client sends set fields to given values). A POST that timed out may
# still have created its webhook, so it is never sent again.
RETRIED: Final[frozenset[Method]] = frozenset({"GET", "PATCH", "DELETE"})

# per_page of the listing's first page; the API's own cap, if lower, is learnt from it.
LISTING_PAGE_ASK: Final = 1000
LISTING_PAGE_SIZE: Final = 100  # what is asked once the API refuses LISTING_PAGE_ASK
MAX_LISTING_PAGES: Final = 10_000
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
DEFAULT_RETRY_AFTER: Final = 60.0
MIN_REQUEST_TIME: Final = 1.0  # default: no request starts with less of its cycle left
MAX_PAUSE: Final = 900.0  # the API blocks for 300 s; a larger ask is more likely a bug
# Who goes first when requests queue for a connection slot or the budget: the listing
# (every stream's status), then sessions of streams that may be live, then the rest.
# A webhook's targeted refresh of one stream goes ahead of everything else.
PRIORITY_PUSH: Final = -1
PUSH_SLOTS: Final = 2  # requests of PRIORITY_PUSH in flight at once, beside the others
PRIORITY_LISTING: Final = 0
PRIORITY_LIVE: Final = 1
PRIORITY_OTHER: Final = 2
PRIORITY_ANALYTICS: Final = 3  # an app's totals: after everything of a cycle
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
_RATELIMIT_R = re.compile(r"(?:^|;)\s*r=(\d+)")
_RATELIMIT_T = re.compile(r"(?:^|;)\s*t=(\d+)")
_POLICY_Q = re.compile(r"(?:^|;)\s*q=(\d{1,9})(?:;|$)")
_POLICY_W = re.compile(r"(?:^|;)\s*w=(\d{1,9})(?:;|$)")
MAX_POLICY_WINDOW: Final = 3600.0  # a longer stated window (a daily quota) is not followed
WITHHELD: Final = "<withheld: it quotes the API token>"


class ApiError(Exception):
    """A request failed; ``reason`` is one of :data:`REASONS`."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        retry_after: float | None = None,
        service: bool = False,
    ) -> None:
        """``service``: the error body is RealtimeKit's own envelope, not a gateway's or a
        proxy's (so a 400 or 404 is the service's word about what was asked)."""
        where = f"{endpoint}: HTTP {status}" if status is not None else endpoint
        super().__init__(f"{where}: {message}")
        self.reason: Reason = reason
        self.endpoint = endpoint
        self.status = status
        self.retry_after = retry_after
        self.service = service

    @property
    def transient(self) -> bool:
        """Worth another try inside the same cycle."""
        if self.reason in ("timeout", "connection"):
            return True
        return self.reason == "http_error" and self.status is not None and self.status >= 500


class RequestObserver(Protocol):
    """Where the client reports each request it sends (the exporter's own metrics)."""

    def request(self, endpoint: str, code: str, seconds: float) -> None: ...

    def rate_limit_remaining(self, remaining: int) -> None: ...

    def rate_limit_policy(self, requests: int, window: float) -> None: ...


class _NullObserver:
    def request(self, endpoint: str, code: str, seconds: float) -> None:
        pass

    def rate_limit_remaining(self, remaining: int) -> None:
        pass

    def rate_limit_policy(self, requests: int, window: float) -> None:
        pass


# A poll cycle's deadline; a plain time is read as a deadline of its own.
Deadline = CycleDeadline | float | None


class _Slots:
    """At most ``n`` requests in flight; waiters get a slot by priority, then arrival."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, priority: int) -> AsyncIterator[None]:
        if self._free > 0 and not self._queue:
            self._free -= 1
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._queue, (priority, next(self._seq), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed a slot just as it was cancelled
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._queue:
            _, _, turn = heapq.heappop(self._queue)
            if not turn.done():  # a cancelled waiter is skipped
                turn.set_result(None)
                return
        self._free += 1


class RealtimeKitClient:
    """Calls for one token; shares one :class:`aiohttp.ClientSession` and one budget."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        token: Secret,
        budget: RequestBudget,
        timeout: float = 10.0,
        max_concurrency: int = 8,
        retries: int = 2,
        backoff: float = 0.5,
        observer: RequestObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        max_body_bytes: int = MAX_BODY_BYTES,
        min_request_time: float = MIN_REQUEST_TIME,
        budget_share: int = 1,
    ) -> None:
        """``budget_share``: how many processes share the token (shards); each keeps to
        that fraction of the limit the API states."""
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._token = token
        self.budget = budget
        self._timeout_seconds = timeout
        self._min_time = min(timeout, min_request_time)
        self._proxy = proxy_for(self._base_url)
        self._slots = _Slots(max_concurrency)
        # Slots of their own for a webhook's stop lookups (PRIORITY_PUSH): a request waits
        # for the budget while it holds its slot, so the shared ones may all be held by
        # requests waiting for the window to move, and a stop must not wait behind them.
        self._push_slots = _Slots(PUSH_SLOTS)
        self._retries = retries
        self._backoff = backoff
        self._observer: RequestObserver = observer or _NullObserver()
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._max_body = max_body_bytes
        self._page_ask = LISTING_PAGE_ASK
        self._budget_share = max(1, budget_share)
        self._policy: tuple[int, float] | None = None
        # Requests sent, by endpoint (retries count): the poll cycle's debug summary.
        self.sent: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"RealtimeKitClient(base_url={self._base_url!r})"

    def set_token(self, token: Secret) -> None:
        self._token = token

    async def list_livestreams(
        self,
        account_id: str,
        app_id: str,
        *,
        deadline: Deadline = None,
        stop_early: Callable[[Collection[str], int], bool] | None = None,
        per_page: int | None = None,
        max_entries: int | None = None,
        status: str | None = None,
        first_page: int = 1,
        max_pages: int | None = None,
    ) -> Listing:
        """Every livestream of the app, following pages until the listing ends.

        Pages are asked as large as the API gives them: the first asks for
        :data:`LISTING_PAGE_ASK` entries (or :data:`LISTING_PAGE_SIZE` once the API has
        refused that with a 400), and if it comes back shorter while more remain, the API's
        cap is that length and later pages ask for exactly that, so that page offsets line
        up however the API counts them. ``stop_early(ids, pages_left)`` is asked after the
        first page when the paging block tells how many pages are left: if it says yes,
        the listing stops there, incomplete (:attr:`Listing.complete` false). So it does,
        after the page that brings it to ``max_entries`` livestreams, with
        :attr:`Listing.unread` from the paging block. ``per_page`` replaces the first
        page's ask.

        ``status`` asks the API for only the livestreams of that status (the caller checks
        that it was heeded). ``first_page`` and ``max_pages`` read a part of the listing:
        pages ``first_page`` on, at most ``max_pages`` of them; a part that stops before the
        end is not :attr:`Listing.complete`, and :attr:`Listing.per_page` says how to ask
        for the next part (a later part must be asked with that ``per_page``)."""
        path = f"{_app_path(account_id, app_id)}/livestreams"
        seen: dict[str, Livestream] = {}
        skipped = 0
        per_page = per_page or self._page_ask
        received = (first_page - 1) * per_page
        refused: int | None = None
        page_no = first_page
        while page_no <= MAX_LISTING_PAGES:
            query: dict[str, int | str] = {"page_no": page_no, "per_page": per_page}
            if status is not None:
                query["status"] = status
            try:
                doc = await self._request(
                    "GET", ENDPOINT_LISTING, path, query, deadline, priority=PRIORITY_LISTING
                )
            except ApiError as exc:
                if page_no == 1 and exc.status == 400 and per_page > LISTING_PAGE_SIZE:
                    # Perhaps per_page is too large: ask for the documented default once,
                    # and keep to it only if that is answered.
                    refused, per_page = per_page, LISTING_PAGE_SIZE
                    continue
                raise
            if refused is not None:
                log.info(
                    "the API refused per_page=%d but answers per_page=%d: asking for that",
                    refused,
                    per_page,
                )
                self._page_ask, refused = per_page, None
            page = _decoded(ENDPOINT_LISTING, decode.listing_page, doc)
            if page_no == 1 and 0 < page.entries < per_page:
                per_page = page.entries  # the API's cap (or the whole listing)
            received += page.entries
            skipped += page.skipped
            before = len(seen)
            for stream in page.livestreams:
                seen.setdefault(stream.id, self._scrubbed(stream))
            total = page.total_count
            read = page_no - first_page + 1
            if _listing_done(page, received) or len(seen) == before:
                return Listing(
                    livestreams=tuple(seen.values()),
                    pages=read,
                    skipped=skipped,
                    total=total,
                    per_page=per_page,
                )
            if max_pages is not None and read >= max_pages:
                return _cut(seen, read, skipped, total, received, per_page)
            if page_no == 1 and stop_early is not None and total is not None:
                left = -(-(total - received) // per_page)
                if stop_early(seen.keys(), left):
                    return Listing(
                        livestreams=tuple(seen.values()),
                        pages=1,
                        skipped=skipped,
                        total=total,
                        complete=False,
                    )
            if max_entries is not None and len(seen) >= max_entries:
                return _cut(seen, read, skipped, total, received, per_page)
            page_no += 1
        raise ApiError(
            "decode",
            f"listing did not end within {MAX_LISTING_PAGES} pages",
            endpoint=ENDPOINT_LISTING,
        )

    async def livestream(
        self,
        account_id: str,
        app_id: str,
        livestream_id: str,
        *,
        deadline: Deadline = None,
        priority: int = PRIORITY_LISTING,
    ) -> Livestream | None:
        """One livestream (its status and details, not its sessions); ``None`` if the API
        says there is no such livestream."""
        path = f"{_app_path(account_id, app_id)}/livestreams/{_segment(livestream_id)}"
        doc = await self._request(
            "GET",
            ENDPOINT_LIVESTREAM,
            path,
            {"page_no": 1, "per_page": 1},  # its sessions are not needed
            deadline,
            not_found_ok=True,
            priority=priority,
        )
        if doc is None:
            return None
        found: Livestream = _decoded(
            ENDPOINT_LIVESTREAM,
            lambda d: decode.livestream_by_id(d, livestream_id=livestream_id),
            doc,
        )
        return self._scrubbed(found)

    async def active_session(
        self,
        account_id: str,
        app_id: str,
        livestream_id: str,
        *,
        deadline: Deadline = None,
        priority: int = PRIORITY_LIVE,
    ) -> ActiveSession:
        """The stream's active session; a 404 means "no active session", not an error."""
        path = (
            f"{_app_path(account_id, app_id)}/livestreams/"
            f"{_segment(livestream_id)}/active-livestream-session"
        )
        doc = await self._request(
            "GET", ENDPOINT_SESSION, path, None, deadline, not_found_ok=True, priority=priority
        )
        if doc is None:
            return ActiveSession(livestream=None, session=None)
        answer: ActiveSession = _decoded(
            ENDPOINT_SESSION,
            lambda d: decode.active_session(d, livestream_id=livestream_id),
            doc,
        )
        return ActiveSession(
            livestream=self._scrubbed(answer.livestream) if answer.livestream else None,
            session=self._scrubbed_session(answer.session),
        )

    async def session(
        self,
        account_id: str,
        app_id: str,
        session_id: str,
        *,
        deadline: Deadline = None,
        priority: int = PRIORITY_OTHER,
    ) -> ActiveSession:
        """One session by id (its final values once stopped); ``session`` None if not found."""
        path = f"{_app_path(account_id, app_id)}/livestreams/sessions/{_segment(session_id)}"
        doc = await self._request(
            "GET",
            ENDPOINT_SESSION_BY_ID,
            path,
            None,
            deadline,
            not_found_ok=True,
            priority=priority,
        )
        if doc is None:
            return ActiveSession(livestream=None, session=None)
        found: Session | None = _decoded(ENDPOINT_SESSION_BY_ID, decode.session_by_id, doc)
        return ActiveSession(livestream=None, session=self._scrubbed_session(found))

    async def livestream_analytics(
        self,
        account_id: str,
        app_id: str,
        *,
        deadline: Deadline = None,
        priority: int = PRIORITY_ANALYTICS,
    ) -> Totals:
        """The app's livestream totals over all time. A 403 (no permission for analytics)
        or a 404 (no such endpoint) is an :class:`ApiError` like any other, with its
        ``status``: not "nothing to read", so that the caller can tell the feature's
        absence from an app without sessions."""
        path = f"{_app_path(account_id, app_id)}/analytics/livestreams/overall"
        doc = await self._request(
            "GET", ENDPOINT_ANALYTICS, path, None, deadline, priority=priority
        )
        found: Totals = _decoded(ENDPOINT_ANALYTICS, decode.analytics_totals, doc)
        return found

    async def livestream_analytics_days(
        self,
        account_id: str,
        app_id: str,
        *,
        start: int,
        end: int,
        deadline: Deadline = None,
        priority: int = PRIORITY_ANALYTICS,
    ) -> tuple[Totals, ...]:
        """The app's livestream totals by day from ``start`` to ``end`` (Unix seconds), one
        :class:`Totals` per row of the answer, in its order, with the row's ``day`` (None
        if its date cannot be read). Errors as for :meth:`livestream_analytics`."""
        path = f"{_app_path(account_id, app_id)}/analytics/livestreams/daywise"
        query = {"start_time": int(start), "end_time": int(end)}
        doc = await self._request(
            "GET", ENDPOINT_ANALYTICS_DAYS, path, query, deadline, priority=priority
        )
        found: tuple[Totals, ...] = _decoded(ENDPOINT_ANALYTICS_DAYS, decode.analytics_days, doc)
        return found

    async def list_webhooks(
        self, account_id: str, app_id: str, *, deadline: Deadline = None
    ) -> tuple[Webhook, ...]:
        """Every webhook of the app (the API does not page them)."""
        path = f"{_app_path(account_id, app_id)}/webhooks"
        doc = await self._request("GET", ENDPOINT_WEBHOOKS, path, None, deadline)
        found: tuple[Webhook, ...] = _decoded(ENDPOINT_WEBHOOKS, decode.webhooks, doc)
        return tuple(self._scrubbed_webhook(hook) for hook in found)

    async def add_webhook(
        self,
        account_id: str,
        app_id: str,
        *,
        name: str,
        url: str,
        events: Sequence[str],
        deadline: Deadline = None,
    ) -> Webhook:
        """Register a new, enabled webhook. Sent once, whatever happens: if its answer is
        lost (a timeout, a 5xx) the webhook may exist all the same, which only a new
        listing can tell."""
        path = f"{_app_path(account_id, app_id)}/webhooks"
        body = {"name": name, "url": url, "events": list(events), "enabled": True}
        doc = await self._request("POST", ENDPOINT_WEBHOOKS, path, None, deadline, body=body)
        return self._scrubbed_webhook(_decoded(ENDPOINT_WEBHOOKS, decode.webhook_by_id, doc))

    async def edit_webhook(
        self,
        account_id: str,
        app_id: str,
        webhook_id: str,
        *,
        name: str | None = None,
        url: str | None = None,
        events: Sequence[str] | None = None,
        enabled: bool | None = None,
        deadline: Deadline = None,
    ) -> Webhook:
        """Change the given fields of a webhook (the others stay as they are); the webhook
        as the API now has it."""
        fields: dict[str, object] = {"name": name, "url": url, "enabled": enabled}
        if events is not None:
            fields["events"] = list(events)
        body = {key: value for key, value in fields.items() if value is not None}
        if not body:
            raise ValueError("edit_webhook needs at least one field to change")
        path = f"{_app_path(account_id, app_id)}/webhooks/{_segment(webhook_id)}"
        doc = await self._request("PATCH", ENDPOINT_WEBHOOK, path, None, deadline, body=body)
        return self._scrubbed_webhook(_decoded(ENDPOINT_WEBHOOK, decode.webhook_by_id, doc))

    async def delete_webhook(
        self, account_id: str, app_id: str, webhook_id: str, *, deadline: Deadline = None
    ) -> None:
        """Delete a webhook. RealtimeKit's "not found" counts as done: the webhook is gone
        either way (deleted by someone else meanwhile, or by an attempt whose answer was
        lost before a retry)."""
        path = f"{_app_path(account_id, app_id)}/webhooks/{_segment(webhook_id)}"
        await self._request(
            "DELETE",
            ENDPOINT_WEBHOOK,
            path,
            None,
            deadline,
            not_found_ok=True,
            empty_ok=True,
        )

    async def _request(
        self,
        method: Method,
        endpoint: str,
        path: str,
        params: Mapping[str, int | str] | None,
        deadline: Deadline,
        *,
        body: Mapping[str, object] | None = None,
        not_found_ok: bool = False,
        empty_ok: bool = False,
        priority: int = PRIORITY_OTHER,
    ) -> Any:
        """The decoded JSON answer to one request (``None`` for RealtimeKit's "not found"
        if ``not_found_ok``, and for an empty 2xx body if ``empty_ok``); ``body`` is sent
        as JSON. Only the methods in :data:`RETRIED` are retried."""
        if isinstance(deadline, float | int):
            deadline = CycleDeadline(deadline, self._clock)
        attempt = 0
        while True:
            try:
                return await self._send(
                    method, endpoint, path, params, body, deadline, not_found_ok, empty_ok, priority
                )
            except ApiError as exc:
                if not exc.transient or method not in RETRIED or attempt >= self._retries:
                    raise
                delay = self._jitter() * self._backoff * (2**attempt)
                if deadline is not None and self._clock() + delay + self._min_time > deadline.at:
                    raise
                log.debug("retrying %s %s after %.2fs: %s", method, endpoint, delay, exc)
                await self._sleep(delay)
                attempt += 1

    async def _send(
        self,
        method: Method,
        endpoint: str,
        path: str,
        params: Mapping[str, int | str] | None,
        body: Mapping[str, object] | None,
        deadline: CycleDeadline | None,
        not_found_ok: bool,
        empty_ok: bool,
        priority: int,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._token.reveal()}", "Accept": "application/json"}
        slots = self._push_slots if priority < 0 else self._slots
        async with slots.hold(priority):
            # The budget is asked only once a connection slot is free, right before sending:
            # its log then holds send times, and a pause set by a 429 that arrived while
            # this request queued stops it from going out.
            # A slow API cannot stretch a cycle: a request never outlives its cycle's
            # deadline, and none is sent with less than _min_time left, where it could
            # only time out and waste the token's quota. Waiting for the budget does
            # stretch it: the deadline moves back by the time waited.
            if deadline is not None and self._clock() > deadline.at - self._min_time:
                raise ApiError(
                    "timeout",
                    "the poll cycle ran out of time before this request",
                    endpoint=endpoint,
                )
            try:
                if deadline is None:
                    await self.budget.acquire(priority=priority)
                else:
                    cycle = deadline
                    with cycle.waiting():
                        waited = await self.budget.acquire(
                            deadline=lambda: cycle.at - self._min_time, priority=priority
                        )
                    deadline.budget_bound |= waited > 0
            except BudgetExhausted as exc:
                raise ApiError("rate_limited", str(exc), endpoint=endpoint) from None
            started = self._clock()
            timeout = self._timeout_seconds
            if deadline is not None:
                timeout = min(timeout, deadline.at - started)
            try:
                async with self._session.request(
                    method,
                    self._base_url + path,
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                    proxy=self._proxy,
                ) as response:
                    status = response.status
                    response_headers = response.headers
                    try:
                        answer = await self._read(response, endpoint)
                    except ApiError:  # over the size limit, but it was still answered
                        self._answered(method, endpoint, str(status), started)
                        self._note_rate_limit(response_headers)
                        raise
            except TimeoutError:
                self._answered(method, endpoint, "timeout", started)
                raise ApiError(
                    "timeout", f"no answer within {timeout:g}s", endpoint=endpoint
                ) from None
            except aiohttp.ClientError as exc:
                self._answered(method, endpoint, "connection_error", started)
                raise ApiError("connection", _connection_text(exc), endpoint=endpoint) from None
        self._answered(method, endpoint, str(status), started)
        self._note_rate_limit(response_headers)
        if empty_ok and 200 <= status < 300 and not answer.strip():
            return None  # e.g. a 204 to a DELETE
        return self._interpret(endpoint, status, response_headers, answer, not_found_ok)

    def _answered(self, method: Method, endpoint: str, code: str, started: float) -> None:
        """One request sent, answered with ``code`` (an HTTP status, ``timeout`` or
        ``connection_error``): counted, observed, and a debug line that names the
        endpoint, never the URL (its query) or the headers (the token)."""
        seconds = self._clock() - started
        self.sent[endpoint] += 1
        self._observer.request(endpoint, code, seconds)
        log.debug("API request %s %s: %s in %.0f ms", method, endpoint, code, 1000 * seconds)

    async def _read(self, response: aiohttp.ClientResponse, endpoint: str) -> bytes:
        if response.content_length is not None and response.content_length > self._max_body:
            raise ApiError(
                "decode",
                f"body of {response.content_length} bytes is over the limit",
                endpoint=endpoint,
                status=response.status,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body:
                raise ApiError(
                    "decode",
                    f"body is over the limit of {self._max_body} bytes",
                    endpoint=endpoint,
                    status=response.status,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _note_rate_limit(self, headers: Mapping[str, str]) -> None:
        self._note_policy(headers.get("Ratelimit-Policy"))
        value = headers.get("Ratelimit")
        if not value:
            return
        remaining = _RATELIMIT_R.search(value)
        if remaining is None:
            return
        left = int(remaining.group(1))
        self._observer.rate_limit_remaining(left)
        if left <= 0:
            reset = _RATELIMIT_T.search(value)
            wait = float(reset.group(1)) if reset else DEFAULT_RETRY_AFTER
            self.budget.pause_for(min(MAX_PAUSE, wait))

    def _note_policy(self, value: str | None) -> None:
        """Follow the limit the API states, when it is below ``api.rate_limit``."""
        policy = stated_policy(value)
        if policy is None or policy == self._policy:
            return
        self._policy = policy
        requests, window = policy
        self._observer.rate_limit_policy(requests, window)
        share = max(1, requests // self._budget_share)
        if self.budget.learn(requests=share, window=window) and self.budget.from_policy:
            log.info(
                "the API's Ratelimit-Policy allows %d requests per %gs for the token, "
                "less than api.rate_limit: keeping to %d per %gs",
                requests,
                window,
                self.budget.requests,
                self.budget.window,
            )

    def _interpret(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        not_found_ok: bool,
    ) -> Any:
        if 200 <= status < 300:
            doc = _decoded(endpoint, decode.parse_json, body)
            if decode.is_failure(doc):
                _, message = decode.error_summary(doc)
                raise ApiError(
                    "http_error",
                    f"success is false: {self._unquoting(message) or 'no message'}",
                    endpoint=endpoint,
                    status=status,
                )
            return doc
        code, message, service_error = _error_text(body)
        if status == 404 and not_found_ok and service_error:
            # RealtimeKit's own "not found" envelope: no such (active) session. Any other
            # 404 (the gateway's envelope for a bad route, a proxy's HTML page) is an error,
            # or it would make live streams look stopped.
            return None
        message = self._unquoting(message)
        detail = f"{message} (code {code})" if code is not None else message or "no message"
        if status == 429:
            wait = retry_after(headers)
            self.budget.pause_for(wait)
            raise ApiError(
                "rate_limited",
                f"throttled, pausing {wait:g}s: {detail}",
                endpoint=endpoint,
                status=status,
                retry_after=wait,
            )
        if status in (401, 403):
            raise ApiError("auth", detail, endpoint=endpoint, status=status)
        raise ApiError(
            "http_error", detail, endpoint=endpoint, status=status, service=service_error
        )

    def _scrubbed(self, stream: Livestream) -> Livestream:
        """``stream`` without any exported field that quotes the token (a hostile or buggy
        API could put it there): such a name or meeting id goes, such a status is unknown."""
        token = self._token.reveal().casefold()
        if not token:
            return stream

        def quotes(value: str | None) -> bool:
            return value is not None and token in value.casefold()

        if not (quotes(stream.name) or quotes(stream.meeting_id) or quotes(stream.status)):
            return stream
        return dataclasses.replace(
            stream,
            name=None if quotes(stream.name) else stream.name,
            meeting_id=None if quotes(stream.meeting_id) else stream.meeting_id,
            status=UNKNOWN_STATUS if quotes(stream.status) else stream.status,
        )

    def _scrubbed_session(self, session: Session | None) -> Session | None:
        """``session`` with its error message withheld if it quotes the token (it is
        shown on the status page and logged)."""
        if session is None or session.err_message is None:
            return session
        message = self._unquoting(session.err_message)
        if message == session.err_message:
            return session
        return dataclasses.replace(session, err_message=message)

    def _scrubbed_webhook(self, hook: Webhook) -> Webhook:
        """``hook`` without any field that quotes the token (it is printed by the
        ``webhooks`` command): such a name goes, such a URL or event is withheld."""
        token = self._token.reveal().casefold()
        if not token:
            return hook

        def quotes(value: str | None) -> bool:
            return value is not None and token in value.casefold()

        if not (quotes(hook.name) or quotes(hook.url) or any(map(quotes, hook.events))):
            return hook
        return dataclasses.replace(
            hook,
            name=None if quotes(hook.name) else hook.name,
            url=WITHHELD if quotes(hook.url) else hook.url,
            events=tuple(WITHHELD if quotes(e) else e for e in hook.events),
        )

    def _unquoting(self, message: str) -> str:
        """An API's error message, withheld whole if it quotes the token: decode redacts
        long secret-like runs, which a short token escapes, and redacting just the token
        would show it by the gap it leaves."""
        token = self._token.reveal()
        if token and token.casefold() in message.casefold():
            return "message withheld: it quotes the API token"
        return message


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else ``Ratelimit``'s t."""
    return min(MAX_PAUSE, _retry_after(headers, now))


def _retry_after(headers: Mapping[str, str], now: float | None) -> float:
    value = (headers.get("Retry-After") or "").strip()
    if value:
        if _SECONDS.match(value):
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:  # "-0000" zone: UTC, not local time
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
    reset = _RATELIMIT_T.search(headers.get("Ratelimit") or "")
    return float(reset.group(1)) if reset else DEFAULT_RETRY_AFTER


def stated_policy(value: str | None) -> tuple[int, float] | None:
    """The limit a ``Ratelimit-Policy`` header states, as (requests, window seconds): of
    the policies it lists, the one with the fewest requests per second whose window is at
    most :data:`MAX_POLICY_WINDOW`; ``None`` if it states none that can be read."""
    best: tuple[int, float] | None = None
    for item in (value or "").split(","):
        q, w = _POLICY_Q.search(item), _POLICY_W.search(item)
        if q is None or w is None:
            continue
        requests, window = int(q.group(1)), float(w.group(1))
        if requests < 1 or not 0 < window <= MAX_POLICY_WINDOW:
            continue
        if best is None or requests / window < best[0] / best[1]:
            best = (requests, window)
    return best


def proxy_for(url: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY``, ...) sets for ``url``.

    Read here rather than by aiohttp's ``trust_env``, which would also apply ``~/.netrc``
    credentials and then refuse every request that carries our Authorization header.
    """
    parts = urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy  # "host:port", as curl and requests accept it
    return proxy or None


def _app_path(account_id: str, app_id: str) -> str:
    return f"/accounts/{_segment(account_id)}/realtime/kit/{_segment(app_id)}"


def _segment(text: str) -> str:
    """``text`` as one URL path segment. Callers pass only :func:`~exporter.model.addressable`
    texts: any other would change the route (the API would answer some other resource, or a
    gateway 404 that fails the app), so it is the caller's bug, a ValueError, not an
    :class:`ApiError`."""
    if not addressable(text):
        raise ValueError(f"{text!r} cannot be a URL path segment")
    return quote(text, safe="")


def _cut(
    seen: Mapping[str, Livestream],
    pages: int,
    skipped: int,
    total: int | None,
    received: int,
    per_page: int,
) -> Listing:
    """A listing read up to a page before its end: the entries left unread, as far as the
    paging block tells, and the page size to ask the rest with."""
    return Listing(
        livestreams=tuple(seen.values()),
        pages=pages,
        skipped=skipped,
        total=total,
        complete=False,
        unread=max(0, total - received) if total is not None else 0,
        per_page=per_page,
    )


def _listing_done(page: decode.ListingPage, received: int) -> bool:
    if not page.entries:
        return True
    if page.total_count is not None:
        # Counted from what came, not from end_offset: a server may compute that from the
        # per_page asked for rather than the entries it gave.
        return received >= page.total_count
    # No paging block: a short page proves nothing (the server may cap per_page), so go on
    # until an empty page or a page with nothing new.
    return False


def _decoded(endpoint: str, parse: Callable[[Any], Any], doc: Any) -> Any:
    try:
        return parse(doc)
    except decode.DecodeError as exc:
        raise ApiError("decode", str(exc), endpoint=endpoint) from None


def _error_text(body: bytes) -> tuple[int | None, str, bool]:
    """Code and message of an error body, and whether it is RealtimeKit's own envelope."""
    try:
        doc = decode.parse_json(body)
    except decode.DecodeError:
        return None, "body is not JSON", False
    code, message = decode.error_summary(doc)
    return code, message, decode.is_service_error(doc)


def _connection_text(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.strerror or type(exc).__name__})"
    return type(exc).__name__
