"""Webhooks of the simulated API: the registrations, the signing key, and delivery.

RealtimeKit signs each delivery with RSA PKCS#1 v1.5 / SHA-256 over the exact body bytes
(Base64 in ``rtk-signature``) and serves the public key as a PEM SPKI document at
``/.well-known/webhooks.json``; it retries a delivery on a 5xx or a network error, never
on another non-2xx answer. :class:`Deliveries` does the same for every status change of a
livestream, towards every enabled webhook of the stream's app that subscribed to
``livestreaming.statusUpdate``, with the webhook faults of
:class:`~exporter.simulator.faults.Faults` rolled per delivery.

Webhooks are only ever registered with a loopback URL (:func:`check_webhook`): a
simulator delivers nowhere but to this machine.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from yarl import URL

from exporter.model import STATUS_UPDATE_EVENT, WEBHOOK_EVENTS
from exporter.simulator.faults import DeliveryDice

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from exporter.simulator.faults import DeliveryVerdict, Faults, Signature
    from exporter.simulator.world import SimStream, World

log = logging.getLogger(__name__)

EVENTS: Final = WEBHOOK_EVENTS
STATUS_EVENT: Final = STATUS_UPDATE_EVENT
KEY_PATH: Final = "/.well-known/webhooks.json"
FIELDS: Final = ("name", "url", "events", "enabled")
REQUIRED: Final = ("name", "url", "events")
MAX_WEBHOOKS: Final = 100  # per app: what one test could want, and a bound on memory
MAX_NAME: Final = 255
MAX_URL: Final = 2048
KEY_BITS: Final = 2048

# pending: waiting or being sent; delivered: a 2xx; failed: another answer below 500 (not
# retried); exhausted: 5xx or network errors on every attempt; dropped: the drop fault;
# overflowed: too many deliveries under way; cancelled: the simulator closed first.
Outcome = Literal[
    "pending", "delivered", "failed", "exhausted", "dropped", "overflowed", "cancelled"
]
OUTCOMES: Final[tuple[Outcome, ...]] = (
    "pending",
    "delivered",
    "failed",
    "exhausted",
    "dropped",
    "overflowed",
    "cancelled",
)


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


class KeyPair:
    """An RSA key pair that signs as RealtimeKit does."""

    def __init__(self, private: rsa.RSAPrivateKey) -> None:
        self._private = private
        self.public_pem: bytes = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return "KeyPair(...)"

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh pair (about 30 ms of CPU)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS))

    def sign(self, body: bytes) -> str:
        """``rtk-signature``: Base64 of the PKCS#1 v1.5 SHA-256 signature of ``body``."""
        signature = self._private.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")


# -- registrations ----------------------------------------------------------------------
class WebhookError(ValueError):
    """A registration that is not valid; the message says every reason."""


@dataclass(slots=True)
class Webhook:
    id: str
    account_id: str
    app_id: str
    name: str
    url: str
    events: tuple[str, ...]
    enabled: bool
    created_at: float
    updated_at: float


def check_url(value: object) -> str:
    """``value`` if it is an http(s) URL of a loopback host; else WebhookError."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise WebhookError(f"url must be an http or https URL of at most {MAX_URL} characters")
    try:
        url = URL(value)
        host, _ = url.host, url.port  # yarl checks the port when asked for it
    except ValueError:
        raise WebhookError("url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not host:
        raise WebhookError("url must be an absolute http or https URL")
    if not is_loopback(host):
        raise WebhookError(
            f"url host {host!r} is not a loopback address: the simulator delivers webhooks "
            "only to 127.0.0.0/8, ::1 or localhost, never beyond this machine"
        )
    return value


def check_webhook(body: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """The fields of a registration (``partial``: any of them, as PATCH takes), checked;
    raises WebhookError naming every problem."""
    problems: list[str] = []
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    if partial and not body:
        problems.append(f"give at least one of {', '.join(FIELDS)}")
    if not partial:
        missing = [key for key in REQUIRED if key not in body]
        if missing:
            problems.append(f"{', '.join(missing)} required")
    clean: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if isinstance(name, str) and name.strip() and len(name) <= MAX_NAME:
            clean["name"] = name
        else:
            problems.append(f"name must be a non-empty string of at most {MAX_NAME} characters")
    if "url" in body:
        try:
            clean["url"] = check_url(body["url"])
        except WebhookError as exc:
            problems.append(str(exc))
    if "events" in body:
        events = body["events"]
        if (
            isinstance(events, list)
            and events
            and all(isinstance(e, str) and e in EVENTS for e in events)
        ):
            clean["events"] = tuple(dict.fromkeys(events))  # once each, in the given order
        else:
            problems.append(f"events must be a non-empty list of: {', '.join(EVENTS)}")
    if "enabled" in body:
        if isinstance(body["enabled"], bool):
            clean["enabled"] = body["enabled"]
        else:
            problems.append("enabled must be true or false")
    if problems:
        raise WebhookError("; ".join(problems))
    return clean


class Webhooks:
    """Every app's registered webhooks, in registration order."""

    def __init__(self) -> None:
        self._apps: dict[tuple[str, str], dict[str, Webhook]] = {}
        self.ever = False  # whether one was ever registered

    def __len__(self) -> int:
        return sum(len(hooks) for hooks in self._apps.values())

    def all(self) -> list[Webhook]:
        return [hook for hooks in self._apps.values() for hook in hooks.values()]

    def of_app(self, account_id: str, app_id: str) -> list[Webhook]:
        return list(self._apps.get((account_id, app_id), {}).values())

    def get(self, account_id: str, app_id: str, webhook_id: str) -> Webhook | None:
        return self._apps.get((account_id, app_id), {}).get(webhook_id)

    def subscribed(self, account_id: str, app_id: str, event: str) -> list[Webhook]:
        """The app's enabled webhooks that take ``event``."""
        hooks = self._apps.get((account_id, app_id))
        if not hooks:
            return []
        return [h for h in hooks.values() if h.enabled and event in h.events]

    def add(self, account_id: str, app_id: str, body: Mapping[str, Any], *, now: float) -> Webhook:
        """Register ``body`` (name, url, events, enabled?); raises WebhookError."""
        clean = check_webhook(body, partial=False)
        hooks = self._apps.setdefault((account_id, app_id), {})
        if len(hooks) >= MAX_WEBHOOKS:
            raise WebhookError(f"an app has at most {MAX_WEBHOOKS} webhooks")
        hook = Webhook(
            id=str(uuid.uuid4()),
            account_id=account_id,
            app_id=app_id,
            name=clean["name"],
            url=clean["url"],
            events=clean["events"],
            enabled=clean.get("enabled", True),
            created_at=now,
            updated_at=now,
        )
        hooks[hook.id] = hook
        self.ever = True
        return hook

    def change(
        self, hook: Webhook, body: Mapping[str, Any], *, replace: bool, now: float
    ) -> Webhook:
        """Edit ``hook`` (PATCH), or replace its fields (PUT: ``enabled`` back to true
        unless given); raises WebhookError and then changes nothing."""
        clean = check_webhook(body, partial=not replace)
        if replace:
            clean.setdefault("enabled", True)
        for key, value in clean.items():
            setattr(hook, key, value)
        hook.updated_at = now
        return hook

    def remove(self, hook: Webhook) -> None:
        self._apps.get((hook.account_id, hook.app_id), {}).pop(hook.id, None)


# -- delivery ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How deliveries are made. RealtimeKit documents none of these numbers; the
    defaults are Dyte's (a 3 s timeout, up to 5 retries) with a doubling delay."""

    retry_delay: float = 1.0  # before the first retry; doubling for each next one
    retries: int = 5  # attempts after the first, on a 5xx or a network error
    timeout: float = 3.0  # per attempt
    tick: float = 0.1  # how often the world is advanced while a webhook is registered
    concurrency: int = 64  # requests in flight at once
    backlog: int = 1024  # deliveries under way (waiting or sending) before overflowing
    duplicate_gap: float = 0.1  # between a delivery and its duplicate
    log_size: int = 100_000  # records kept in Deliveries.log (oldest dropped first)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.concurrency < 1 or self.backlog < 1 or self.log_size < 1:
            raise ValueError("retries must be >= 0; concurrency, backlog, log_size >= 1")
        if min(self.retry_delay, self.timeout, self.tick, self.duplicate_gap) < 0:
            raise ValueError("delays must not be negative")


@dataclass(slots=True)
class DeliveryRecord:
    """One delivery, for tests and benchmarks; times are world times (World.clock)."""

    uuid: str  # rtk-uuid
    webhook_id: str
    url: str
    event: str
    stream_id: str
    status: str  # the new status
    changed_at: float  # when the status changed
    first_attempt_at: float | None = None
    delivered_at: float | None = None  # when a 2xx came back
    attempts: int = 0  # the duplicate not included
    outcome: Outcome = "pending"
    response: int | None = None  # the last attempt's HTTP status; None: a network error
    signature: Signature = "valid"  # "none": unsigned; "wrong_key": another pair's
    reordered: bool = False  # held back by the reorder fault
    duplicated: bool = False  # sent a second time, same uuid and bytes, once delivered
    delay: float = 0.0  # waited before the first attempt (faults)


class Deliveries:
    """Delivers status changes to the registered webhooks, in background tasks.

    ``render`` makes the body of a stream's status update; ``faults`` gives the current
    faults. :meth:`start` needs a running event loop; :meth:`close` cancels and awaits
    every task. Changes that happen while not started are not delivered."""

    def __init__(
        self,
        world: World,
        webhooks: Webhooks,
        *,
        render: Callable[[SimStream], bytes],
        faults: Callable[[], Faults],
        settings: DeliverySettings | None = None,
    ) -> None:
        self.settings = settings or DeliverySettings()
        # Made when first needed (about 30 ms each): most simulators never sign anything.
        self._key: KeyPair | None = None
        self.log: deque[DeliveryRecord] = deque(maxlen=self.settings.log_size)
        self.counts: Counter[str] = Counter()  # deliveries, attempted, retried, outcomes...
        self.responses: Counter[str] = Counter()  # attempts by HTTP status, or "error"
        self.key_requests: Counter[str] = Counter()  # the key document's answers
        self._world = world
        self._webhooks = webhooks
        self._render = render
        self._faults = faults
        self._dice = DeliveryDice(world.seed)
        self._wrong_key: KeyPair | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ticker: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Deliveries(webhooks={len(self._webhooks)}, under_way={len(self._tasks)})"

    @property
    def under_way(self) -> int:
        """Deliveries waiting, being sent or being retried."""
        return len(self._tasks)

    async def settled(self) -> None:
        """Return once no delivery is under way (at once if none is)."""
        await self._idle.wait()

    @property
    def key(self) -> KeyPair:
        """The pair deliveries are signed with, and whose public half is served."""
        if self._key is None:
            self._key = KeyPair.generate()
        return self._key

    def rotate_key(self, pair: KeyPair | None = None) -> KeyPair:
        """Sign with a new pair (``pair``, or a fresh one) from now on, and serve it."""
        self._key = pair or KeyPair.generate()
        self.counts["key_rotations"] += 1
        return self._key

    def wrong_key(self) -> KeyPair:
        """A pair the key document never serves (made when first needed)."""
        if self._wrong_key is None:
            self._wrong_key = KeyPair.generate()
        return self._wrong_key

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._http is not None:
            return
        s = self.settings
        self._http = aiohttp.ClientSession(
            # The environment's proxies must not carry deliveries off this machine.
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=s.timeout),
            connector=aiohttp.TCPConnector(limit=s.concurrency),
            headers={"User-Agent": "realtimekit-simulator"},
        )
        self._slots = asyncio.Semaphore(s.concurrency)
        self._unsubscribe = self._world.on_status(self._changed)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        """Stop delivering: cancel every task and wait for them."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks: list[asyncio.Task[None]] = list(self._tasks)
        if self._ticker is not None:
            tasks.append(self._ticker)
            self._ticker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _tick(self) -> None:
        """Advance the world now and then, so that the autopilot's changes are delivered
        without API traffic (World.now applies them lazily)."""
        while True:
            await asyncio.sleep(self.settings.tick)
            if len(self._webhooks):
                self._world.now()

    # -- delivering --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "registered": len(self._webhooks),
            "deliveries": counts["deliveries"],
            "attempted": counts["attempted"],
            "retried": counts["retried"],
            "duplicated": counts["duplicated"],
            "outcomes": {
                outcome: len(self._tasks) if outcome == "pending" else counts[outcome]
                for outcome in OUTCOMES
            },
            "responses": dict(sorted(self.responses.items())),
            "key_rotations": counts["key_rotations"],
            "key_document": dict(sorted(self.key_requests.items())),
        }

    def used(self) -> bool:
        """Whether webhooks were ever registered, or the key asked for or rotated."""
        return self._webhooks.ever or bool(self.key_requests) or bool(self.counts)

    def _changed(self, stream: SimStream, previous: str, at: float) -> None:
        if self._http is None:
            return
        hooks = self._webhooks.subscribed(stream.account_id, stream.app_id, STATUS_EVENT)
        if not hooks:
            return
        body = self._render(stream)
        loop = asyncio.get_running_loop()
        for hook in hooks:
            verdict = self._dice.roll(self._faults())
            record = DeliveryRecord(
                uuid=str(uuid.uuid4()),
                webhook_id=hook.id,
                url=hook.url,
                event=STATUS_EVENT,
                stream_id=stream.id,
                status=stream.status,
                changed_at=at,
                signature=verdict.signature,
                reordered=verdict.reordered,
                duplicated=verdict.duplicate,
                delay=verdict.delay,
            )
            self.log.append(record)
            self.counts["deliveries"] += 1
            if verdict.drop:
                self._finish(record, "dropped")
            elif len(self._tasks) >= self.settings.backlog:
                log.warning("webhook backlog full (%d): a delivery is lost", len(self._tasks))
                self._finish(record, "overflowed")
            else:
                task = loop.create_task(self._deliver(record, body, verdict))
                self._tasks.add(task)
                self._idle.clear()
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a webhook delivery failed in the simulator", exc_info=task.exception())

    def _finish(self, record: DeliveryRecord, outcome: Outcome) -> None:
        record.outcome = outcome
        self.counts[outcome] += 1

    async def _deliver(self, record: DeliveryRecord, body: bytes, verdict: DeliveryVerdict) -> None:
        try:
            if verdict.delay > 0:
                await asyncio.sleep(verdict.delay)
            record.first_attempt_at = self._world.clock()
            wait = self.settings.retry_delay
            for attempt in range(self.settings.retries + 1):
                if attempt:
                    await asyncio.sleep(wait)
                    wait *= 2
                    self.counts["retried"] += 1
                answer = await self._post(record, body)
                record.attempts += 1
                record.response = answer
                if answer is not None and 200 <= answer < 300:
                    record.delivered_at = self._world.clock()
                    self._finish(record, "delivered")
                    break
                if answer is not None and answer < 500:
                    self._finish(record, "failed")
                    return
            else:
                self._finish(record, "exhausted")
                return
            if verdict.duplicate:
                await asyncio.sleep(self.settings.duplicate_gap)
                self.counts["duplicated"] += 1
                await self._post(record, body)
        except asyncio.CancelledError:
            if record.outcome == "pending":
                self._finish(record, "cancelled")
            raise

    async def _post(self, record: DeliveryRecord, body: bytes) -> int | None:
        """One attempt: the HTTP status, or None for a network error or a timeout."""
        assert self._http is not None
        assert self._slots is not None
        headers = {
            "Content-Type": "application/json",
            "rtk-uuid": record.uuid,
            "rtk-webhook-id": record.webhook_id,
        }
        if record.signature == "valid":
            headers["rtk-signature"] = self.key.sign(body)
        elif record.signature == "wrong_key":
            headers["rtk-signature"] = self.wrong_key().sign(body)
        self.counts["attempted"] += 1
        async with self._slots:
            try:
                # No redirects: a 3xx is a failed delivery, and a redirect could lead off
                # this machine.
                async with self._http.post(
                    record.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("webhook delivery %s to %s: %r", record.uuid, record.url, exc)
                self.responses["error"] += 1
                return None
        self.responses[str(status)] += 1
        return status
