"""The webhook receiver: RealtimeKit POSTs signed events here, on a listener of its own.

Each delivery is judged in this order, and answered at once (RealtimeKit gives a delivery
a few seconds, and retries a 5xx but never a 4xx):

1. a body over :data:`MAX_BODY` bytes: 413, read no further;
2. no signature, or one that is not Base64: 401;
3. no public key to check it with: 503, so that RealtimeKit tries again later;
4. a signature the key does not verify (nor a key fetched again, see
   :mod:`exporter.webhookkey`): 401; or 503 if the key could not be fetched again just
   now (a fetch failed, or one was made within the last seconds): it may be a rotated
   key's signature, and RealtimeKit retries a 5xx;
5. signed, but not the JSON object of an event: 400;
6. seen already (:mod:`exporter.dedup`): 200, nothing more;
7. a ``livestreaming.statusUpdate`` of a tracked stream: handed to the refresher as a
   hint (it asks the API, which has the last word), 200; any other verified event, or a
   stream not tracked here: 200, ignored.

Nothing is read from a body before its signature is verified, no request to the API
follows an unverified one, and no delivery writes a log line: the counters
(``realtimekit_exporter_webhook_deliveries_total``) say what came. Bodies carry the
stream key (``streamKey``): they are never logged or kept, only their SHA-256.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import HttpVersion11, web

from exporter import signature
from exporter.dedup import DeliveryWindow
from exporter.model import STATUS_UPDATE_EVENT, WEBHOOK_EVENTS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager

    from aiohttp.typedefs import Middleware
    from aiohttp.web_protocol import RequestHandler

    from exporter.signature import PublicKey
    from exporter.webhookkey import Recheck

MAX_BODY: Final = 64 * 1024
BODY_TIMEOUT: Final = 5.0  # seconds a body may take to arrive
MAX_ID_LENGTH: Final = 256  # longer header values and stream ids are not ids
STATUS_UPDATE: Final = STATUS_UPDATE_EVENT
EVENTS: Final = WEBHOOK_EVENTS
# The event label of deliveries whose body was not verified, and of verified ones whose
# event name is none of EVENTS.
UNVERIFIED: Final = "unverified"
OTHER: Final = "other"
OUTCOMES: Final = (
    "accepted",
    "duplicate",
    "bad_signature",
    "too_large",
    "malformed",
    "ignored",
    "unavailable",
)
# The listener runner's lingering_time: a body cut short (413, 408) is not read on after the
# answer (aiohttp would read and drop it for up to 10 s); the connection closes instead.
LINGERING_TIME: Final = 0.0
VERIFIED_OUTCOMES: Final = ("accepted", "duplicate", "malformed", "ignored")
# The header names RealtimeKit documents, then Dyte's, which some deliveries may still use.
SIGNATURE_HEADERS: Final = ("rtk-signature", "dyte-signature")
UUID_HEADERS: Final = ("rtk-uuid", "dyte-uuid")
WEBHOOK_ID_HEADERS: Final = ("rtk-webhook-id", "dyte-webhook-id")


class Keys(Protocol):
    async def current(self) -> PublicKey | None: ...

    async def after_failure(self, failed: PublicKey) -> Recheck: ...


class BodyGuard(Protocol):
    def reading(self, handler: RequestHandler) -> AbstractContextManager[None]:
        """While a body is read, its connection may be evicted like an idle one."""
        ...


class Hints(Protocol):
    def hint(self, livestream_id: str, status: str) -> bool:
        """Take a verified status change; False if the stream is not tracked here."""
        ...


class DeliveryObserver(Protocol):
    def webhook_delivery(self, event: str, outcome: str) -> None: ...

    def webhook_verified(self, at: float) -> None: ...


class Receiver:
    """Judges deliveries (see the module's docstring)."""

    def __init__(
        self,
        *,
        keys: Keys,
        hints: Hints,
        observer: DeliveryObserver | None = None,
        window: DeliveryWindow | None = None,
        clock: Callable[[], float] = time.time,
        guard: BodyGuard | None = None,
    ) -> None:
        """``guard`` (the listener's connection guard) is told while a body is read."""
        self._guard = guard
        self._keys = keys
        self._hints = hints
        self._observer = observer
        self._window = window if window is not None else DeliveryWindow()
        self._clock = clock

    def _count(self, event: str, outcome: str) -> None:
        if self._observer is not None:
            self._observer.webhook_delivery(event, outcome)

    async def handle(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return self._too_large()
        reading = self._guard.reading(request.protocol) if self._guard else nullcontext()
        try:
            with reading:
                async with asyncio.timeout(BODY_TIMEOUT):
                    body = await _read_body(request)
        except TimeoutError:
            # Not counted as a delivery: nothing came, or not in time. The connection goes.
            response = web.Response(status=408, text="the body did not arrive in time\n")
            response.force_close()
            return response
        if body is None:
            return self._too_large()
        sig = signature.decode_signature(_header(request, SIGNATURE_HEADERS))
        if sig is None:
            self._count(UNVERIFIED, "bad_signature")
            return web.Response(status=401, text="missing or malformed signature\n")
        key = await self._keys.current()
        if key is None:
            self._count(UNVERIFIED, "unavailable")
            return web.Response(status=503, text="the public key is not available yet\n")
        if not signature.verify(key, sig, body):
            fresh, checked = await self._keys.after_failure(key)
            if fresh is None or not signature.verify(fresh, sig, body):
                self._count(UNVERIFIED, "bad_signature")
                if not checked:
                    return web.Response(
                        status=503, text="bad signature; the key cannot be read again yet\n"
                    )
                return web.Response(status=401, text="bad signature\n")
        if self._observer is not None:
            self._observer.webhook_verified(self._clock())
        return self._verified(request, body)

    def _too_large(self) -> web.Response:
        self._count(UNVERIFIED, "too_large")
        response = web.Response(status=413, text=f"the body is over {MAX_BODY} bytes\n")
        response.force_close()  # the rest of the body is not read
        return response

    def _verified(self, request: web.Request, body: bytes) -> web.Response:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        event = doc.get("event") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not isinstance(event, str):
            self._count(OTHER, "malformed")
            return web.Response(status=400, text="not a JSON event object\n")
        label = event if event in EVENTS else OTHER
        delivery_id = _id(_header(request, UUID_HEADERS))
        webhook_id = _id(_header(request, WEBHOOK_ID_HEADERS))
        digest = DeliveryWindow.digest(body)
        if self._window.seen(delivery_id, webhook_id, digest):
            self._count(label, "duplicate")
            return web.Response(text="duplicate\n")
        stream: str | None = None
        status = ""
        if event == STATUS_UPDATE:
            named, said = doc.get("streamId"), doc.get("status")
            if not (_plausible(named) and _plausible(said)):
                self._count(label, "malformed")
                return web.Response(status=400, text="streamId and status must be strings\n")
            stream, status = str(named), str(said)
        self._window.remember(delivery_id, webhook_id, digest, stream=stream)
        if stream is None or not self._hints.hint(stream, status):
            self._count(label, "ignored")
            return web.Response(text="ignored\n")
        self._count(label, "accepted")
        return web.Response(text="accepted\n")


def create_receiver(
    receiver: Receiver, path: str, *, middlewares: Sequence[Middleware] = ()
) -> web.Application:
    """The webhook listener's application: POST ``path``, nothing else."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app.router.add_post(path, receiver.handle, expect_handler=_expect)
    return app


async def _expect(request: web.Request) -> None:
    """``Expect: 100-continue``: go on, unless the body is too large (the handler then
    answers 413 at once, and the client need not send it)."""
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="unknown Expect\n")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


async def _read_body(request: web.Request) -> bytes | None:
    """The body, or None once it is over :data:`MAX_BODY` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _header(request: web.Request, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            return value
    return None


def _id(value: str | None) -> str | None:
    """A delivery or webhook id from a header; None if absent or implausible."""
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_ID_LENGTH else None


def _plausible(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH
