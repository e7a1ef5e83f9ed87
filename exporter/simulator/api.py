"""The simulator's HTTP face: the RealtimeKit livestream endpoints and a control interface.

API routes live under ``/client/v4/accounts/{account_id}/realtime/kit/{app_id}`` and
answer as the real API's examples show, warts included: the listing's ``data`` is an array
with ``paging`` beside it, no active session is a 404 in RealtimeKit's envelope, a bad
token a 401 in the Cloudflare gateway's envelope, and every answer carries the
``Ratelimit`` headers of a per-token sliding window that blocks the token for a whole
window when it is overrun. Faults (:class:`~exporter.simulator.faults.Faults`) are rolled
per request; with ``variant_rate`` an answer takes one of the other shapes the docs
publish (see :data:`VARIANTS`), and with ``status_lag`` livestream objects show a status
that lags behind the session endpoints.

An app's livestream analytics (``.../{app_id}/analytics/livestreams/overall`` and
``/daywise``) add up the app's sessions as :meth:`~exporter.simulator.world.World.totals`
keeps them: every session it had, ended ones with their final values and live ones with
their values now, by the UTC day they started, seconds rounded down to integers.
``daywise`` needs ``start_time`` and ``end_time`` (Unix seconds) and gives a row for each
UTC day from the one to the other (whole days) on which sessions started; ``overall``
takes the same range, optional (none: all time). A missing or bad value is a 400 in
RealtimeKit's envelope; ``filters`` is ignored.

The simulator accepts several tokens (:mod:`exporter.simulator.tokens`), each with a name
and maybe limited to some accounts: a token it does not know gets 401, a known one asking
for an account it may not read 403, both in the gateway's envelope. Each token has its own
rate-limit window; the request log and the stats name the token a request carried.

Webhook registrations live under ``.../{app_id}/webhooks`` and go through the same gate;
the public key that verifies deliveries is served at ``/.well-known/webhooks.json`` (no
auth, no rate limit), as RealtimeKit serves it; delivery itself is
:class:`~exporter.simulator.webhooks.Deliveries`.

Control routes live under ``/-/simulator`` (no auth: bind the simulator to loopback) and
take and give JSON; see :func:`create_app` for the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web
from yarl import URL

from exporter.simulator.faults import Canned, Dice, FaultError, Faults
from exporter.simulator.ratelimit import RateLimiter
from exporter.simulator.tokens import DEFAULT_NAME, SimToken, TokenError, Tokens, check
from exporter.simulator.webhooks import (
    EVENTS,
    KEY_PATH,
    STATUS_EVENT,
    Deliveries,
    DeliverySettings,
    KeyPair,
    WebhookError,
    Webhooks,
)
from exporter.simulator.world import (
    FILTER_STATUSES,
    MAX_VIEWERS,
    Tally,
    World,
    WorldError,
    utc_day,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from exporter.simulator.webhooks import Webhook
    from exporter.simulator.world import SimSession, SimStream

    # A handler gets the request and the dice's pick of a variant shape (None: the
    # examples' shape).
    Handler = Callable[[web.Request, float | None], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/client/v4"
APP_PATH: Final = API_PREFIX + "/accounts/{account_id}/realtime/kit/{app_id}"
CONTROL: Final = "/-/simulator"
DEFAULT_PER_PAGE: Final = 20
LOG_SIZE: Final = 1000  # API requests SimulatorState.log keeps, the latest
# The most of a request's body the log keeps (a larger one is logged without it): with
# the query string and path (at most aiohttp's 8 KiB request line), the log holds at
# most about 25 MB, where 1,000 parsed bodies of 1 MiB each could take 25 GB.
LOG_BODY_BYTES: Final = 16 * 1024
MAX_ANSWERS: Final = 100  # fixed answers waiting at once (each may hold a body of 1 MiB)
MAX_PAGE_DIGITS: Final = 9  # page_no and per_page beyond 999,999,999 are refused
MAX_TIME_DIGITS: Final = 11  # Unix seconds of the analytics' range: up to the year 5138
# The other shapes the docs publish, by endpoint, that ``variant_rate`` switches to:
# - listing_object: the schema's listing, ``data`` an object holding ``livestreams`` and
#   ``paging``;
# - single_session: the schema's livestream by id, ``data.session`` (the latest session,
#   or null) and ``data.paging`` instead of the examples' ``data.sessions`` array;
# - null_session: no active session as a 200 with ``data.session`` null, not a 404 (only
#   where there is no active session: otherwise disabled_text);
# - disabled_text: ``disabled`` as the string "true"/"false", its declared type.
VARIANTS: Final = {
    "livestreams": ("listing_object", "disabled_text"),
    "livestream": ("single_session", "disabled_text"),
    "active_livestream_session": ("null_session", "disabled_text"),
}
# The API endpoints by the names the stats count them under (and answer_next takes).
API_ENDPOINTS: Final = (
    "livestreams",
    "livestream_session",
    "active_livestream_session",
    "livestream",
    "webhooks",
    "add_webhook",
    "webhook_events",
    "webhook",
    "edit_webhook",
    "replace_webhook",
    "delete_webhook",
    "livestream_analytics",
    "livestream_analytics_daywise",
)
INGEST_SERVER: Final = "rtmps://live.cloudflare.com:443/live/"
_EDGE_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>{code}: {text}</title></head>"
    "<body><h1>Error {code}</h1><p>{text}</p><p>cloudflare</p></body></html>"
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One request to the API, as it arrived (before any fault, hold or answer).

    The query string and body are kept as they came and decoded when read: decoded, a
    query or JSON body can take 25 times its size (a dict per ``{}``), and the log keeps
    LOG_SIZE requests whoever sends them."""

    endpoint: str  # as counted in the stats; "unrouted" for a path no route matches
    method: str
    path: str
    query_string: str  # as sent, still percent-encoded
    authorized: bool  # whether it carried a token the simulator accepts
    raw_body: bytes | None = None  # None: no body, or one over LOG_BODY_BYTES
    token_name: str | None = None  # the name of that token (never the token itself)

    @property
    def query(self) -> dict[str, str]:
        """The query's parameters (the first value of a repeated one)."""
        return dict(URL.build(query_string=self.query_string, encoded=True).query)

    @property
    def body(self) -> Any:
        """The body, decoded, if it is JSON of at most LOG_BODY_BYTES; else None."""
        if self.raw_body is None:
            return None
        try:
            return json.loads(self.raw_body)
        except (ValueError, RecursionError):  # as in _json
            return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "authorized": self.authorized,
            "token_name": self.token_name,
            "body": self.body,
        }


def _sent(
    name: str, request: web.Request, token: SimToken | None, body: bytes | None = None
) -> Sent:
    kept = body if body is not None and len(body) <= LOG_BODY_BYTES else None
    query = request.rel_url.raw_query_string
    token_name = None if token is None else token.name
    return Sent(name, request.method, request.path, query, token is not None, kept, token_name)


@dataclass(slots=True)
class _Scripted:
    endpoint: str
    app_id: str | None
    answer: Canned
    left: int | None  # None: until cleared


class SimulatorState:
    """Everything the handlers share; tests may change ``faults`` between requests."""

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
        """``token`` is accepted as the token named "default", which may read every
        account; ``tokens`` are accepted beside it (TokenError: a name twice, a value
        twice, more than MAX_TOKENS)."""
        if max_per_page < 1:
            raise ValueError("max_per_page must be at least 1")
        self.world = world
        self.tokens = Tokens([SimToken(DEFAULT_NAME, token), *tokens])
        self._released = asyncio.Event()
        self._closing = asyncio.Event()
        self.faults = faults or Faults()
        self.limiter = limiter or RateLimiter()
        # Cloudflare also allows 200 requests per second per client IP (None: that limit;
        # "off": none, for benchmarks from one address).
        self.ip_limiter: RateLimiter | None = None
        if ip_limiter is None:
            self.ip_limiter = RateLimiter(200, 1.0, block=False)
        elif ip_limiter != "off":
            self.ip_limiter = ip_limiter
        self.max_per_page = max_per_page
        self.dice = Dice(world.seed)
        self.requests: Counter[tuple[str, int]] = Counter()
        self.log: deque[Sent] = deque(maxlen=LOG_SIZE)
        self._script: list[_Scripted] = []
        self.traffic = Traffic(self.limiter.window)
        # By token name: what it sent (as traffic counts it), and its answers by status.
        self.token_traffic: dict[str, Traffic] = {}
        self.token_requests: dict[str, Counter[int]] = {}
        self.webhooks = Webhooks()
        self.deliveries = Deliveries(
            world,
            self.webhooks,
            render=status_update,
            faults=lambda: self.faults,
            settings=webhook_settings,
        )

    def __repr__(self) -> str:  # the token is not printed, even a simulated one
        return f"SimulatorState(apps={len(self.world.apps())}, faults={self.faults!r})"

    @property
    def token(self) -> str:
        """The token named "default" (the one given as ``token``)."""
        default = self.tokens.get(DEFAULT_NAME)
        return "" if default is None else default.value

    @token.setter
    def token(self, value: str) -> None:
        """Replace the default token (it keeps its accounts): the old one is refused."""
        default = self.tokens.get(DEFAULT_NAME)
        accounts = None if default is None else default.accounts
        self.tokens.add(SimToken(DEFAULT_NAME, value, accounts))

    def add_token(self, name: str, token: str, *, accounts: Iterable[str] | None = None) -> bool:
        """Accept ``token`` as ``name``, for ``accounts`` only (None: every account); an
        existing name gets the new token. True if it replaced one; TokenError if it cannot
        be added."""
        scope = None if accounts is None else frozenset(accounts)
        return self.tokens.add(SimToken(name, token, scope))

    def secrets(self) -> list[str]:
        """Every token accepted now: what must never show in logs, metrics or errors."""
        return self.tokens.values()

    def note_traffic(self, token: SimToken, now: float) -> None:
        """A request that counts against ``token``'s rate limit (and the busiest window)."""
        self.traffic.note(now)
        traffic = self.token_traffic.get(token.name)
        if traffic is None:
            traffic = self.token_traffic[token.name] = Traffic(self.limiter.window)
        traffic.note(now)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        if faults.hold and not self._closing.is_set():
            self._released.clear()
        else:
            self._released.set()

    async def released(self) -> None:
        """Return once the ``hold`` fault is off, or the simulator is closing."""
        await self._released.wait()

    async def delayed(self, seconds: float) -> None:
        """Wait ``seconds`` (the latency fault, up to a day), or until the simulator is
        closing: a delayed answer must not hold up its shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def close(self) -> None:
        """Answer at once every request the latency or hold fault keeps waiting, and every
        later one: the simulator is closing."""
        self._closing.set()
        self._released.set()

    def answer_next(
        self, endpoint: str, answer: Canned, *, times: int | None = 1, app_id: str | None = None
    ) -> None:
        """Give ``answer`` to the next ``times`` requests (None: every one until
        :meth:`clear_answers`) to the API ``endpoint`` (a name as in the stats), of any app
        or of ``app_id``; after the earlier answers given for that endpoint."""
        if endpoint not in API_ENDPOINTS:
            raise FaultError(f"unknown endpoint {endpoint!r}; known: {', '.join(API_ENDPOINTS)}")
        if times is not None and times < 1:
            raise FaultError("times must be at least 1")
        if len(self._script) >= MAX_ANSWERS:
            raise FaultError(f"{MAX_ANSWERS} answers are waiting already; clear them first")
        self._script.append(_Scripted(endpoint, app_id, answer, times))

    def clear_answers(self) -> None:
        """Forget every answer :meth:`answer_next` has not given yet."""
        self._script.clear()

    def next_answer(self, endpoint: str, app_id: str) -> Canned | None:
        """The answer given for this request, if one is due; counts it as given."""
        for i, scripted in enumerate(self._script):
            if scripted.endpoint == endpoint and scripted.app_id in (None, app_id):
                if scripted.left is not None:
                    scripted.left -= 1
                    if scripted.left == 0:
                        del self._script[i]
                return scripted.answer
        return None


STATE: Final = web.AppKey("state", SimulatorState)


class Traffic:
    """The most requests the token sent in any ``window`` seconds (a sliding log): what
    the API side counts against its limit, refused requests included."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.busiest = 0
        self.busiest_at: float | None = None  # when that window ended
        self._times: deque[float] = deque()

    def note(self, now: float) -> None:
        times = self._times
        times.append(now)
        while times[0] <= now - self.window:
            times.popleft()
        if len(times) > self.busiest:
            self.busiest, self.busiest_at = len(times), now


# -- bodies -------------------------------------------------------------------------
def iso(t: float) -> str:
    """RealtimeKit's timestamps: ISO 8601, milliseconds, ``Z``."""
    ms = round(t * 1000)
    seconds, ms = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def livestream_body(
    stream: SimStream, now: float, *, lag: float = 0.0, disabled_text: bool = False
) -> dict[str, Any]:
    """The livestream object, its status ``lag`` seconds behind (see SimStream.listed)."""
    status, updated_at = stream.listed(now, lag)
    disabled: bool | str = stream.disabled
    if disabled_text:
        disabled = "true" if stream.disabled else "false"
    return {
        "id": stream.id,
        "name": stream.name,
        "status": status,
        "meeting_id": stream.meeting_id,
        "disabled": disabled,
        "ingest_server": INGEST_SERVER,
        "stream_key": stream.stream_key,
        "playback_url": _playback_url(stream),
        "created_at": iso(stream.created_at),
        "updated_at": iso(updated_at),
    }


def _playback_url(stream: SimStream) -> str:
    return (
        f"https://customer-sim.cloudflarestream.com/{stream.id.replace('-', '')}"
        "/manifest/video.m3u8"
    )


def status_update(stream: SimStream) -> bytes:
    """The body of a ``livestreaming.statusUpdate`` delivery for the stream's current
    status: compact JSON in the documented key order, the stream key included (a secret
    the receiver must keep), ``meeting`` only for a stream that belongs to one."""
    body: dict[str, Any] = {
        "event": STATUS_EVENT,
        "streamId": stream.id,
        "status": stream.status,
        "manualIngest": False,
        "playbackUrl": _playback_url(stream),
        "ingestServer": INGEST_SERVER,
        "streamKey": stream.stream_key,
    }
    if stream.meeting_id is not None:
        body["meeting"] = {
            "id": stream.meeting_id,
            "title": stream.name or "Untitled meeting",
            "createdAt": iso(stream.created_at),
            # "LIVE" in every documented example, whatever the stream does.
            "status": "LIVE",
            "organizedBy": {"id": stream.app_id, "name": f"Simulated org of {stream.app_id}"},
        }
    return json.dumps(body, separators=(",", ":")).encode()


def webhook_body(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "name": hook.name,
        "url": hook.url,
        "events": list(hook.events),
        "enabled": hook.enabled,
        "created_at": iso(hook.created_at),
        "updated_at": iso(hook.updated_at),
    }


def _counter(value: float, *, as_string: bool) -> float | int | str:
    """A counter as the examples send it: an integer when integral (the placeholder is
    ``60``, not ``60.0``), else a float; or the same as a string."""
    number: float | int = int(value) if value.is_integer() else value
    return repr(number) if as_string else number


def session_body(session: SimSession, now: float, *, as_strings: bool) -> dict[str, Any]:
    ingest = _counter(session.ingest_seconds(now), as_string=as_strings)
    viewer = _counter(session.viewer_seconds(now), as_string=as_strings)
    live = session.stopped_time is None
    return {
        "id": session.id,
        "livestream_id": session.livestream_id,
        "err_message": session.err_message,
        "invoked_time": None if session.invoked_time is None else iso(session.invoked_time),
        "started_time": iso(session.started_time),
        "stopped_time": None if live else iso(session.stopped_time or 0.0),
        "created_at": iso(session.started_time),
        "updated_at": iso(now if live else session.updated_at),
        "ingest_seconds": ingest,
        "viewer_seconds": viewer,
    }


def _service_error(status: int, message: str) -> web.Response:
    """RealtimeKit's own error envelope."""
    body = {"success": False, "error": {"code": status, "message": message}}
    return web.json_response(body, status=status)


def _gateway_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The Cloudflare API gateway's envelope (auth, permissions, rate limit)."""
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
    body["result"] = None
    return web.json_response(body, status=status, headers=headers)


def _paging(start: int, count: int, total: int) -> dict[str, int]:
    return {"start_offset": start, "end_offset": start + count - 1, "total_count": total}


# -- the API ------------------------------------------------------------------------
def _api(
    name: str, handler: Handler, *, webhooks: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap an API handler in what every request goes through: faults, auth, rate limit;
    and count every answer, the simulator's own failures included. ``webhooks``: an
    endpoint that the fault ``webhooks_forbidden`` closes."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        token = _presented(state, request)
        try:
            body = await request.read() if request.body_exists else None
        except web.HTTPException as exc:  # a body over client_max_size: 413
            state.log.append(_sent(name, request, token))
            _count(state, name, token, exc.status)
            raise
        state.log.append(_sent(name, request, token, body))
        try:
            response = await _gatekeep(
                state, request, name, handler, token=token, webhooks=webhooks
            )
        except web.HTTPException as exc:
            _count(state, name, token, exc.status)
            raise
        except Exception:
            # A bug in the simulator: answered (and counted) as the 500 it is, so that a
            # benchmark's stats do not silently lose requests.
            log.exception("simulator error answering %s", request.path_qs)
            response = _service_error(500, "Internal Server Error (simulator)")
        _count(state, name, token, response.status)
        return response

    return wrapped


def _presented(state: SimulatorState, request: web.Request) -> SimToken | None:
    """The accepted token the request's ``Authorization: Bearer`` header carries, if any."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return state.tokens.identify(presented) if scheme == "Bearer" else None


def _count(state: SimulatorState, name: str, token: SimToken | None, status: int) -> None:
    """Count an answer by endpoint and status, and by the token the request carried."""
    state.requests[(name, status)] += 1
    if token is not None:
        state.token_requests.setdefault(token.name, Counter())[status] += 1


async def _gatekeep(
    state: SimulatorState,
    request: web.Request,
    name: str,
    handler: Handler,
    *,
    token: SimToken | None,
    webhooks: bool = False,
) -> web.StreamResponse:
    verdict = state.dice.roll(state.faults)
    if verdict.delay:
        await state.delayed(verdict.delay)
    await state.released()
    faults = state.faults
    if token is None or faults.rejects(token.name):
        return _gateway_error(401, 10000, "Authentication error")
    world = state.world
    now = world.now()
    if state.ip_limiter is not None:
        per_ip = state.ip_limiter.check(request.remote or "", now)
        if not per_ip.allowed:
            headers = {"Retry-After": str(per_ip.retry_after)}
            return _gateway_error(
                429, 971, "Please wait and consider throttling your request speed", headers
            )
    account_id = request.match_info["account_id"]
    if not world.has_account(account_id) or not token.may_read(account_id):
        return _gateway_error(403, 10000, "Authentication error")
    if webhooks and faults.webhooks_forbidden:  # a token without the webhook permission
        return _gateway_error(403, 10000, "Authentication error")
    # Each token has its own window, kept under its value: a replaced token starts afresh.
    if verdict.kind == "throttle":
        state.limiter.block(token.value, now, faults.throttle_seconds)
    state.note_traffic(token, now)
    decision = state.limiter.check(token.value, now)
    headers = {
        "Ratelimit": f'"default";r={decision.remaining};t={decision.reset}',
        "Ratelimit-Policy": state.limiter.policy(),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after)
        message = (
            f"More than {state.limiter.requests} requests per "
            f"{round(state.limiter.window)} seconds reached"
        )
        return _gateway_error(429, 971, message, headers)
    response: web.StreamResponse
    canned = state.next_answer(name, request.match_info["app_id"])
    if canned is not None:
        if canned.applied:
            await handler(request, None)
        response = _canned(canned)
    elif verdict.kind == "server_error":
        response = _server_error(verdict.status)
    elif verdict.kind == "malformed":
        response = _malformed(verdict.variant)
    elif not world.has_app(request.match_info["account_id"], request.match_info["app_id"]):
        response = _service_error(404, "App not found")
    else:
        response = await handler(request, verdict.shape)
    response.headers.update(headers)
    return response


def _canned(answer: Canned) -> web.Response:
    body = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
    return web.Response(
        status=answer.status,
        body=body,
        headers=answer.headers,
        content_type=answer.content_type,
    )


def _server_error(status: int) -> web.Response:
    if status in (502, 504):
        text = "Bad gateway" if status == 502 else "Gateway time-out"
        return web.Response(
            status=status, text=_EDGE_PAGE.format(code=status, text=text), content_type="text/html"
        )
    return _service_error(
        status, "Internal Server Error" if status == 500 else "Service Unavailable"
    )


def _malformed(variant: str) -> web.Response:
    if variant == "truncated":
        return web.Response(
            body=b'{"success": true, "data": [{"id": "', content_type="application/json"
        )
    if variant == "html":
        return web.Response(text="<html><body>Loading...</body></html>", content_type="text/html")
    if variant == "not_an_object":
        return web.json_response(["success", True])
    return web.json_response({"success": False, "error": {"code": 200, "message": "Try again"}})


class _BadQuery(Exception):
    pass


def _int_param(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    # "²" is a digit to isdigit; the length cap keeps int() below Python's digit limit.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_PAGE_DIGITS) or int(raw) < 1:
        raise _BadQuery(f"{key} must be a positive integer of at most {MAX_PAGE_DIGITS} digits")
    return int(raw)


def _page(items: Sequence[Any], first: int, count: int, *, newest_first: bool) -> list[Any]:
    """``items[first:first + count]`` of ``items`` or of its reverse, without copying it."""
    if not newest_first:
        return list(items[first : first + count])
    last = len(items) - 1
    return [items[last - i] for i in range(first, min(first + count, len(items)))]


def _variant(pick: float | None, options: tuple[str, ...]) -> str | None:
    """Which of ``options`` the dice's ``pick`` (0 <= pick < 1) chose; None: no variant."""
    if pick is None:
        return None
    return options[min(int(pick * len(options)), len(options) - 1)]


def _time_param(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _BadQuery(f"{key} must be an ISO 8601 date-time") from None
    if when.tzinfo is None:  # UTC, not the local time of wherever the simulator runs
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def _listing(request: web.Request, pick: float | None) -> web.StreamResponse:
    state = request.app[STATE]
    world = state.world
    streams = world.by_creation_time(request.match_info["account_id"], request.match_info["app_id"])
    assert streams is not None  # checked by _gatekeep
    try:
        page_no = _int_param(request, "page_no", 1)
        per_page = min(_int_param(request, "per_page", DEFAULT_PER_PAGE), state.max_per_page)
        start = _time_param(request, "start_time")
        end = _time_param(request, "end_time")
        status = request.query.get("status")
        if status is not None and status not in FILTER_STATUSES:
            raise _BadQuery(f"status must be one of {', '.join(FILTER_STATUSES)}")
        order = request.query.get("sort_order", "DSC")
        if order not in ("ASC", "DSC"):
            raise _BadQuery("sort_order must be ASC or DSC")
        exclude = request.query.get("exclude_meetings", "false")
        if exclude not in ("true", "false"):
            raise _BadQuery("exclude_meetings must be true or false")
    except _BadQuery as exc:
        return _service_error(400, str(exc))
    now = world.now()
    lag = state.faults.status_lag
    chosen: Sequence[SimStream] = streams
    if state.faults.ignore_status_filter:
        status = None
    if status is not None or exclude == "true" or start is not None or end is not None:
        chosen = [
            s
            for s in streams
            if (status is None or s.listed(now, lag)[0] == status)
            and (exclude == "false" or s.meeting_id is None)
            and (start is None or s.created_at >= start)
            and (end is None or s.created_at <= end)
        ]
    first = (page_no - 1) * per_page
    page = _page(chosen, first, per_page, newest_first=order == "DSC")
    variant = _variant(pick, VARIANTS["livestreams"])
    items = [
        livestream_body(s, now, lag=lag, disabled_text=variant == "disabled_text") for s in page
    ]
    paging = _paging(first + 1, len(page), len(chosen))
    if variant == "listing_object":
        return web.json_response(
            {"success": True, "data": {"livestreams": items, "paging": paging}}
        )
    return web.json_response({"success": True, "data": items, "paging": paging})


def _requested_stream(request: web.Request) -> SimStream | None:
    info = request.match_info
    return request.app[STATE].world.stream(
        info["account_id"], info["app_id"], info["livestream_id"]
    )


async def _active_session(request: web.Request, pick: float | None) -> web.StreamResponse:
    state = request.app[STATE]
    world = state.world
    stream = _requested_stream(request)
    if stream is None:
        return _service_error(404, "Livestream not found")
    now = world.now()
    session = stream.session
    # With a session, the only other shape is the livestream's ``disabled`` as text.
    options = VARIANTS["active_livestream_session"] if session is None else ("disabled_text",)
    variant = _variant(pick, options)
    livestream = livestream_body(
        stream, now, lag=state.faults.status_lag, disabled_text=variant == "disabled_text"
    )
    if session is None:
        if variant == "null_session":
            return web.json_response(
                {"success": True, "data": {"livestream": livestream, "session": None}}
            )
        return _service_error(404, f"No active session found for livestream {stream.id}")
    body = session_body(session, now, as_strings=state.faults.numbers_as_strings)
    return web.json_response({"success": True, "data": {"livestream": livestream, "session": body}})


async def _livestream(request: web.Request, pick: float | None) -> web.StreamResponse:
    state = request.app[STATE]
    world = state.world
    stream = _requested_stream(request)
    if stream is None:
        return _service_error(404, "Livestream not found")
    try:
        page_no = _int_param(request, "page_no", 1)
        per_page = min(_int_param(request, "per_page", DEFAULT_PER_PAGE), state.max_per_page)
    except _BadQuery as exc:
        return _service_error(400, str(exc))
    now = world.now()
    variant = _variant(pick, VARIANTS["livestream"])
    livestream = livestream_body(
        stream, now, lag=state.faults.status_lag, disabled_text=variant == "disabled_text"
    )
    as_strings = state.faults.numbers_as_strings
    if variant == "single_session":
        # The schema: one object, the latest session, with paging inside ``data``.
        latest = stream.sessions[-1] if stream.sessions else None
        return web.json_response(
            {
                "success": True,
                "data": {
                    "livestream": livestream,
                    "session": None
                    if latest is None
                    else session_body(latest, now, as_strings=as_strings),
                    "paging": _paging(1, int(latest is not None), len(stream.sessions)),
                },
            }
        )
    first = (page_no - 1) * per_page
    page = _page(stream.sessions, first, per_page, newest_first=True)
    return web.json_response(
        {
            "success": True,
            # The published examples: ``sessions`` is an array, ``paging`` at the top.
            "data": {
                "livestream": livestream,
                "sessions": [session_body(s, now, as_strings=as_strings) for s in page],
            },
            "paging": _paging(first + 1, len(page), len(stream.sessions)),
        }
    )


async def _session_by_id(request: web.Request, pick: float | None) -> web.StreamResponse:
    state = request.app[STATE]
    world = state.world
    session = world.session(
        request.match_info["account_id"],
        request.match_info["app_id"],
        request.match_info["session_id"],
    )
    if session is None:
        return _service_error(404, "Livestream session not found")
    body = session_body(session, world.now(), as_strings=state.faults.numbers_as_strings)
    return web.json_response({"success": True, "data": body})


# -- analytics ----------------------------------------------------------------------
def _unix_param(request: web.Request, key: str, *, required: bool) -> int | None:
    raw = request.query.get(key)
    if raw is None:
        if required:
            raise _BadQuery(f"{key} is required")
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_TIME_DIGITS):
        raise _BadQuery(
            f"{key} must be a Unix timestamp in seconds (at most {MAX_TIME_DIGITS} digits)"
        )
    return int(raw)


def _sessions_by_day(request: web.Request, *, required: bool) -> dict[str, Tally] | web.Response:
    """The app's sessions added up by the UTC day they started, on the days from the one
    of ``start_time`` to the one of ``end_time`` (None: no bound, unless ``required``);
    a 400 in RealtimeKit's envelope for a range that is missing or cannot be read."""
    try:
        start = _unix_param(request, "start_time", required=required)
        end = _unix_param(request, "end_time", required=required)
        if start is not None and end is not None and start > end:
            raise _BadQuery("start_time must not be after end_time")
    except _BadQuery as exc:
        return _service_error(400, str(exc))
    info = request.match_info
    return request.app[STATE].world.totals(
        info["account_id"],
        info["app_id"],
        first_day=None if start is None else utc_day(start),
        last_day=None if end is None else utc_day(end),
    )


def _totals_body(tally: Tally, *, as_strings: bool) -> dict[str, Any]:
    """Totals as the examples send them: integers (the sums rounded down)."""
    values = {
        "count": tally.count,
        "total_ingest_seconds": math.floor(tally.ingest_seconds),
        "total_viewer_seconds": math.floor(tally.viewer_seconds),
    }
    return {k: str(v) if as_strings else v for k, v in values.items()}


async def _analytics(request: web.Request, _: float | None) -> web.StreamResponse:
    """All the app's sessions added up; with ``start_time`` or ``end_time``, those that
    started on the UTC days from the one to the other (as daywise counts them)."""
    days = _sessions_by_day(request, required=False)
    if isinstance(days, web.Response):
        return days
    total = Tally()
    for tally in days.values():
        total.add(tally.count, tally.ingest_seconds, tally.viewer_seconds)
    as_strings = request.app[STATE].faults.numbers_as_strings
    return web.json_response({"success": True, "data": _totals_body(total, as_strings=as_strings)})


async def _analytics_daywise(request: web.Request, _: float | None) -> web.StreamResponse:
    """One row per UTC day from the day of ``start_time`` to the day of ``end_time`` (both
    required, Unix seconds) on which sessions of the app started, oldest first: whole days,
    whatever the time of day the range starts and ends at."""
    days = _sessions_by_day(request, required=True)
    if isinstance(days, web.Response):
        return days
    as_strings = request.app[STATE].faults.numbers_as_strings
    rows = [{"date": day, **_totals_body(t, as_strings=as_strings)} for day, t in days.items()]
    return web.json_response({"success": True, "data": rows})


# -- webhooks -----------------------------------------------------------------------
class _BadBody(Exception):
    pass


async def _api_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; _BadBody (a 400 in RealtimeKit's envelope) if not."""
    try:
        body = json.loads(await request.read()) if request.body_exists else None
    except (ValueError, RecursionError):  # as in _json
        raise _BadBody("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadBody("body must be a JSON object")
    return body


def _webhook_answer(hook: Webhook, status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": webhook_body(hook)}, status=status)


async def _list_webhooks(request: web.Request, _: float | None) -> web.StreamResponse:
    info = request.match_info
    hooks = request.app[STATE].webhooks.of_app(info["account_id"], info["app_id"])
    return web.json_response({"success": True, "data": [webhook_body(h) for h in hooks]})


async def _add_webhook(request: web.Request, _: float | None) -> web.StreamResponse:
    state = request.app[STATE]
    info = request.match_info
    try:
        body = await _api_json(request)
        hook = state.webhooks.add(info["account_id"], info["app_id"], body, now=state.world.now())
    except (_BadBody, WebhookError) as exc:
        return _service_error(400, str(exc))
    log.info("webhook %s registered for app %s", hook.id, hook.app_id)
    return _webhook_answer(hook, 201)


async def _webhook_events(request: web.Request, _: float | None) -> web.StreamResponse:
    return web.json_response({"success": True, "data": list(EVENTS)})


async def _one_webhook(request: web.Request, _: float | None) -> web.StreamResponse:
    """GET, PATCH, PUT or DELETE one webhook."""
    state = request.app[STATE]
    info = request.match_info
    hook = state.webhooks.get(info["account_id"], info["app_id"], info["webhook_id"])
    if hook is None:
        return _service_error(404, "Webhook not found")
    if request.method == "DELETE":
        state.webhooks.remove(hook)
    elif request.method in ("PATCH", "PUT"):
        try:
            body = await _api_json(request)
            state.webhooks.change(
                hook, body, replace=request.method == "PUT", now=state.world.now()
            )
        except (_BadBody, WebhookError) as exc:
            return _service_error(400, str(exc))
    return _webhook_answer(hook)


async def _key_document(request: web.Request) -> web.StreamResponse:
    """The public key, as ``https://api.realtime.cloudflare.com/.well-known/webhooks.json``
    serves it: no auth, no rate limit, not counted among the API requests."""
    state = request.app[STATE]
    if state.faults.key_document_unavailable:
        state.deliveries.key_requests["503"] += 1
        return _service_error(503, "Service Unavailable")
    state.deliveries.key_requests["200"] += 1
    pem = state.deliveries.key.public_pem.decode("ascii")
    return web.json_response({"success": True, "data": {"publicKey": pem}, "message": ""})


# -- control ------------------------------------------------------------------------
async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        # ValueError: not JSON, not UTF-8, or an integer beyond Python's digit limit;
        # RecursionError: nested too deeply.
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not JSON"}), content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}),
            content_type="application/json",
        )
    return body


def _control_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _stream_view(stream: SimStream, now: float) -> dict[str, Any]:
    session = stream.session or (stream.sessions[-1] if stream.sessions else None)
    return {
        "account_id": stream.account_id,
        "app_id": stream.app_id,
        "id": stream.id,
        "name": stream.name,
        "status": stream.status,
        "live": stream.session is not None,
        "manual": stream.manual,
        # Neither taken over nor cycling: it never changes by itself.
        "dormant": not stream.manual and stream.next_change is None,
        "next_change": stream.next_change,
        "session": None if session is None else session_body(session, now, as_strings=False),
    }


async def _control_list(request: web.Request) -> web.StreamResponse:
    """Every stream, or one app's (``account_id``, ``app_id``); every one at once unless
    ``per_page`` (and ``page_no``) ask for a page."""
    world = request.app[STATE].world
    account_id = request.query.get("account_id")
    app_id = request.query.get("app_id")
    try:
        page_no = _int_param(request, "page_no", 1)
        per_page = _int_param(request, "per_page", 0) or None
    except _BadQuery as exc:
        return _control_error(400, str(exc))
    now = world.now()
    apps = [
        (account, app)
        for account, app in world.apps()
        if account_id in (None, account) and app_id in (None, app)
    ]
    streams: list[SimStream] = []
    for account, app in apps:
        streams += world.streams(account, app) or []
    first = 0 if per_page is None else (page_no - 1) * per_page
    page = streams[first:] if per_page is None else streams[first : first + per_page]
    return web.json_response(
        {"livestreams": [_stream_view(s, now) for s in page], "total_count": len(streams)}
    )


async def _control_create(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await _json(request)
    apps = state.world.apps()
    account_id = body.get("account_id") or (apps[0][0] if apps else "sim-account")
    app_id = body.get("app_id") or (apps[0][1] if apps else "sim-app")
    try:
        for key in ("account_id", "app_id", "id", "name", "meeting_id"):
            if key in body and body[key] is not None and not isinstance(body[key], str):
                raise WorldError(f"{key} must be a string")
        if not isinstance(body.get("autopilot", False), bool):
            raise WorldError("autopilot must be true or false")
        stream = state.world.create(
            account_id,
            app_id,
            livestream_id=body.get("id"),
            name=body.get("name"),
            meeting_id=body.get("meeting_id"),
            manual=not body.get("autopilot", False),
        )
    except WorldError as exc:
        return _control_error(400, str(exc))
    return web.json_response(_stream_view(stream, state.world.now()), status=201)


async def _control_action(request: web.Request) -> web.StreamResponse:
    world = request.app[STATE].world
    livestream_id = request.match_info["livestream_id"]
    action = request.match_info["action"]
    body = await _json(request)
    try:
        if action == "live":
            viewers = body.get("viewers")
            if viewers is not None and (
                isinstance(viewers, bool)
                or not isinstance(viewers, int | float)
                or not 0 <= viewers <= MAX_VIEWERS  # NaN fails this too
            ):
                return _control_error(400, f"viewers must be a number from 0 to {MAX_VIEWERS:g}")
            world.go_live(livestream_id, viewers=viewers)
        elif action == "stop":
            status = body.get("status", "IDLE")
            if status not in ("IDLE", "OFFLINE"):
                return _control_error(400, "status must be IDLE or OFFLINE")
            world.stop(livestream_id, status=status)
        elif action == "error":
            world.fail(livestream_id, message=str(body.get("message", "Ingest failed")))
        elif action == "status":
            status = body.get("status")
            if not isinstance(status, str) or not 0 < len(status) <= 64:
                return _control_error(400, "status must be a string of 1 to 64 characters")
            world.set_status(livestream_id, status)
        elif action == "counters":
            counters = {k: body.get(k) for k in ("ingest_seconds", "viewer_seconds")}
            if any(
                v is not None
                and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1e15)
                for v in counters.values()
            ):
                return _control_error(400, "counters must be numbers from 0 to 1e15")
            world.set_counters(livestream_id, **counters)
        elif action == "stall":
            world.stall(livestream_id, stalled=True)
        elif action == "unstall":
            world.stall(livestream_id, stalled=False)
        elif action == "autopilot":
            world.resume(livestream_id)
        else:
            return _control_error(404, f"unknown action {action!r}")
    except WorldError as exc:
        status = 404 if str(exc).startswith("no livestream") else 409
        return _control_error(status, str(exc))
    return web.json_response(_stream_view(world.find(livestream_id), world.now()))


async def _control_delete(request: web.Request) -> web.StreamResponse:
    try:
        request.app[STATE].world.delete(request.match_info["livestream_id"])
    except WorldError as exc:
        return _control_error(404, str(exc))
    return web.Response(status=204)


async def _control_faults(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if request.method == "PUT":
        changes = await _json(request)
        name = changes.get("token")
        if "token" in changes and (not isinstance(name, str) or state.tokens.get(name) is None):
            return _control_error(400, "token must be the name of an accepted token")
        try:
            state.faults = state.faults.update(changes)
        except FaultError as exc:
            return _control_error(400, str(exc))
    return web.json_response(state.faults.as_dict())


_CANNED_KEYS: Final = ("status", "body", "headers", "content_type", "applied")


async def _control_answers(request: web.Request) -> web.StreamResponse:
    """POST: answer the next request(s) to an endpoint with a fixed answer; DELETE: forget
    the answers not given yet."""
    state = request.app[STATE]
    if request.method == "DELETE":
        state.clear_answers()
        return web.Response(status=204)
    body = await _json(request)
    unknown = sorted(set(body) - {"endpoint", "times", "app_id", "text", *_CANNED_KEYS})
    status, times, headers = body.get("status"), body.get("times", 1), body.get("headers", {})
    if unknown:
        return _control_error(400, f"unknown key(s) {', '.join(unknown)}")
    text, app_id = body.get("text"), body.get("app_id")
    content_type, applied = body.get("content_type", "application/json"), body.get("applied")
    # A 1xx is no answer (the client waits on for one), and a header that is not a token
    # and a plain value, or that frames the body, breaks the answer or the connection.
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        return _control_error(400, "status must be an HTTP status code from 200 to 599")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
        return _control_error(400, "times must be a whole number, or null for every request")
    if not isinstance(headers, dict) or not all(
        _HEADER_NAME.fullmatch(k) and k.lower() not in _FRAMING and _plain(v)
        for k, v in headers.items()
    ):
        return _control_error(
            400,
            "headers must map names to plain strings (no Content-Type, Content-Length "
            "or Transfer-Encoding)",
        )
    if not _plain(content_type) or not content_type:
        return _control_error(400, "content_type must be a plain string")
    if text is not None and not isinstance(text, str):
        return _control_error(400, "text must be a string")
    if app_id is not None and not isinstance(app_id, str):
        return _control_error(400, "app_id must be a string, or null for every app")
    if applied is not None and not isinstance(applied, bool):
        return _control_error(400, "applied must be true or false")
    answer = Canned(
        status=status,
        # As bytes now: decoded JSON may take 25 times the size of its text.
        raw=text.encode() if text is not None else json.dumps(body.get("body")).encode(),
        headers=headers,
        content_type=content_type,
        applied=applied is True,
    )
    try:
        state.answer_next(str(body.get("endpoint")), answer, times=times, app_id=app_id)
    except FaultError as exc:
        return _control_error(400, str(exc))
    return web.json_response({"endpoint": body.get("endpoint"), "times": times}, status=201)


_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FRAMING: Final = frozenset({"content-type", "content-length", "transfer-encoding"})


def _plain(value: object) -> bool:
    """A header value with no control character (a line break would end the header)."""
    return isinstance(value, str) and not any(ord(c) < 32 or ord(c) == 127 for c in value)


async def _control_requests(request: web.Request) -> web.StreamResponse:
    """The latest API requests, oldest first (the last LOG_SIZE)."""
    return web.json_response({"requests": [s.as_dict() for s in request.app[STATE].log]})


@web.middleware
async def _unrouted(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count and log a request that no route takes (404 or 405), as it is answered."""
    refused = request.match_info.http_exception
    if refused is not None:
        state = request.app[STATE]
        token = _presented(state, request)
        state.log.append(_sent("unrouted", request, token))
        _count(state, "unrouted", token, refused.status)
    return await handler(request)


async def _control_throttle(request: web.Request) -> web.StreamResponse:
    """Block the token named ``token`` (default: every token) now for ``seconds``, as if
    something else had spent its budget."""
    state = request.app[STATE]
    body = await _json(request)
    seconds = body.get("seconds", state.faults.throttle_seconds)
    unknown = sorted(set(body) - {"seconds", "token"})
    if unknown:
        return _control_error(400, f"unknown key(s) {', '.join(unknown)}")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds <= 86400  # also refuses NaN and Infinity
    ):
        return _control_error(400, "seconds must be a number between 0 and 86400")
    name = body.get("token")
    targets = list(state.tokens)
    if name is not None:
        target = state.tokens.get(name) if isinstance(name, str) else None
        if target is None:
            return _control_error(400, "token must be the name of an accepted token")
        targets = [target]
    now = state.world.now()
    for target in targets:
        state.limiter.block(target.value, now, float(seconds))
    answer: dict[str, Any] = {"blocked_for": seconds}
    if name is not None:
        answer["token"] = name
    return web.json_response(answer)


async def _control_tokens(request: web.Request) -> web.StreamResponse:
    """GET: the accepted tokens by name, with their accounts (never a token's value).
    POST ``{"name", "token", "accounts"}``: accept a token, or replace the token of that
    name (201 if added, 200 if replaced)."""
    state = request.app[STATE]
    if request.method == "POST":
        body = await _json(request)
        unknown = sorted(set(body) - {"name", "token", "accounts"})
        if unknown:
            return _control_error(400, f"unknown key(s) {', '.join(unknown)}")
        try:
            token = check(body.get("name"), body.get("token"), body.get("accounts"))
            replaced = state.tokens.add(token)
        except TokenError as exc:
            return _control_error(400, str(exc))
        log.info("simulator token %s %s", token.name, "replaced" if replaced else "added")
        return web.json_response(
            {**token.as_dict(), "replaced": replaced}, status=200 if replaced else 201
        )
    return web.json_response({"tokens": [t.as_dict() for t in state.tokens]})


async def _control_stats(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    by_endpoint: dict[str, dict[str, int]] = {}
    for (endpoint, status), count in sorted(state.requests.items()):
        by_endpoint.setdefault(endpoint, {})[str(status)] = count
    stats: dict[str, Any] = {
        "requests": by_endpoint,
        "total": sum(state.requests.values()),
        "busiest_window": _busiest(state.traffic),
        "tokens": {
            name: {
                "requests": {str(k): v for k, v in sorted(counts.items())},
                "total": sum(counts.values()),
                "busiest_window": _busiest(
                    state.token_traffic.get(name) or Traffic(state.limiter.window)
                ),
            }
            for name, counts in sorted(state.token_requests.items())
        },
    }
    if state.deliveries.used():  # absent until webhooks are used, as before they existed
        stats["webhooks"] = state.deliveries.stats()
    return web.json_response(stats)


def _busiest(traffic: Traffic) -> dict[str, Any]:
    return {"window_s": traffic.window, "requests": traffic.busiest, "ended_at": traffic.busiest_at}


async def _control_webhooks(request: web.Request) -> web.StreamResponse:
    """Every app's webhooks, and the delivery stats."""
    state = request.app[STATE]
    hooks = [
        {"account_id": h.account_id, "app_id": h.app_id, **webhook_body(h)}
        for h in state.webhooks.all()
    ]
    return web.json_response({"webhooks": hooks, "stats": state.deliveries.stats()})


async def _control_rotate_key(request: web.Request) -> web.StreamResponse:
    """A new key pair: deliveries are signed with it, and the key document serves it."""
    deliveries = request.app[STATE].deliveries
    pair = await asyncio.to_thread(KeyPair.generate)  # about 30 ms of CPU, off the loop
    deliveries.rotate_key(pair)
    log.info("webhook signing key rotated")
    return web.json_response({"publicKey": pair.public_pem.decode("ascii")})


def create_app(state: SimulatorState) -> web.Application:
    """The simulator's aiohttp app. Control routes:

    - ``GET /-/simulator/livestreams``: every stream, its status and session (query:
      ``account_id``, ``app_id``, ``page_no``, ``per_page``; default every stream);
    - ``POST /-/simulator/livestreams``: create one (JSON: account_id, app_id, id, name,
      meeting_id, autopilot), OFFLINE and under manual control unless autopilot is true;
    - ``POST /-/simulator/livestreams/{id}/{action}`` with action ``live`` (``viewers``),
      ``stop`` (``status``: IDLE or OFFLINE), ``error`` (``message``), ``status``
      (``status``: any text, sessions untouched), ``stall``,
      ``unstall``, ``autopilot`` (hand back to the lifecycle) or ``counters``
      (``ingest_seconds``, ``viewer_seconds``: the session's counters from now on);
    - ``DELETE /-/simulator/livestreams/{id}``;
    - ``GET`` and ``PUT /-/simulator/faults`` (a partial JSON object of Faults fields;
      ``{"reject_token": bool, "token": NAME}`` rejects, or accepts again, one token);
    - ``POST /-/simulator/answers``: answer the next request(s) to an API endpoint
      (``endpoint``, a name as in the stats) with ``status`` (200 to 599), and ``body``
      (JSON) or ``text``; also ``headers`` (none that frames the body), ``content_type``,
      ``times`` (default 1; null: every one), ``app_id`` (only that app's), ``applied``
      (carry the request out, lose its answer); at most MAX_ANSWERS wait at once;
      ``DELETE`` forgets the answers not given yet;
    - ``GET /-/simulator/requests``: the latest API requests as they arrived (bodies of
      at most LOG_BODY_BYTES), each with ``authorized`` (it carried an accepted token)
      and ``token_name`` (that token's name, or null; never the token);
    - ``POST /-/simulator/throttle`` (``seconds``; ``token``: a token's name, default
      every token): block the token(s) now;
    - ``GET /-/simulator/tokens``: the accepted tokens' names and accounts; ``POST`` with
      ``name``, ``token`` and ``accounts`` (a list of account ids, or null for every
      account) accepts a token, or gives that name a new one (at most MAX_TOKENS);
    - ``GET /-/simulator/stats``: API requests by endpoint and status, the most all
      tokens sent in any rate-limit window (``busiest_window``), the same by token name
      (``tokens``: ``requests`` by status, ``total``, ``busiest_window``), and once
      webhooks are used (registered, key fetched or rotated) their delivery counts
      (``webhooks``);
    - ``GET /-/simulator/webhooks``: every app's webhooks and the delivery counts;
    - ``POST /-/simulator/webhooks/rotate-key``: sign with a new key pair from now on,
      and serve it at ``/.well-known/webhooks.json``.
    """
    app = web.Application(middlewares=[_unrouted])
    app[STATE] = state
    streams = APP_PATH + "/livestreams"
    app.router.add_get(streams, _api("livestreams", _listing))
    app.router.add_get(
        streams + "/sessions/{session_id}", _api("livestream_session", _session_by_id)
    )
    app.router.add_get(
        streams + "/{livestream_id}/active-livestream-session",
        _api("active_livestream_session", _active_session),
    )
    app.router.add_get(streams + "/{livestream_id}", _api("livestream", _livestream))
    analytics = APP_PATH + "/analytics/livestreams"
    app.router.add_get(analytics + "/overall", _api("livestream_analytics", _analytics))
    app.router.add_get(
        analytics + "/daywise", _api("livestream_analytics_daywise", _analytics_daywise)
    )
    hooks = APP_PATH + "/webhooks"
    app.router.add_get(hooks, _api("webhooks", _list_webhooks, webhooks=True))
    app.router.add_post(hooks, _api("add_webhook", _add_webhook, webhooks=True))
    # Before {webhook_id}, which "all" would match.
    app.router.add_get(hooks + "/all", _api("webhook_events", _webhook_events, webhooks=True))
    one = hooks + "/{webhook_id}"
    for method, name in (
        ("GET", "webhook"),
        ("PATCH", "edit_webhook"),
        ("PUT", "replace_webhook"),
        ("DELETE", "delete_webhook"),
    ):
        app.router.add_route(method, one, _api(name, _one_webhook, webhooks=True))
    app.router.add_get(KEY_PATH, _key_document)
    for method, path, control in (
        ("GET", "/livestreams", _control_list),
        ("POST", "/livestreams", _control_create),
        ("POST", "/livestreams/{livestream_id}/{action}", _control_action),
        ("DELETE", "/livestreams/{livestream_id}", _control_delete),
        ("GET", "/faults", _control_faults),
        ("PUT", "/faults", _control_faults),
        ("POST", "/answers", _control_answers),
        ("DELETE", "/answers", _control_answers),
        ("GET", "/requests", _control_requests),
        ("POST", "/throttle", _control_throttle),
        ("GET", "/tokens", _control_tokens),
        ("POST", "/tokens", _control_tokens),
        ("GET", "/stats", _control_stats),
        ("GET", "/webhooks", _control_webhooks),
        ("POST", "/webhooks/rotate-key", _control_rotate_key),
    ):
        app.router.add_route(method, CONTROL + path, control)
    return app
