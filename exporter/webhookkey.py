"""RealtimeKit's webhook public key: fetched (or read from a file) at start, kept, and
fetched again when a signature fails, at most once per :data:`REFETCH_FLOOR` seconds.

Nothing documents how the key rotates; a delivery signed by a new key fails against the
old one, so a failure is the moment to look again. The floor keeps forged deliveries
from turning into a stream of requests to the key's server: whatever arrives, at most
one fetch per floor (one in flight at a time, shared by every caller that asks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

import aiohttp

from exporter.client import proxy_for
from exporter.config import MAX_KEY_FILE_BYTES, UnreadableFile, read_file
from exporter.signature import KeyError_, PublicKey, fingerprint, key_from_document, load_key

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

REFETCH_FLOOR: Final = 2.0  # seconds between two fetches after a failed signature
RETRY_FLOOR: Final = 10.0  # seconds between two fetches while no key is held
FETCH_TIMEOUT: Final = 10.0
MAX_DOCUMENT_BYTES: Final = 64 * 1024


def load_key_file(path: Path) -> PublicKey:
    """The public key in the PEM file at ``path`` (read bounded). Raises
    :class:`~exporter.config.UnreadableFile` or :class:`~exporter.signature.KeyError_`."""
    return load_key(read_file(path, limit=MAX_KEY_FILE_BYTES))


class Recheck(NamedTuple):
    key: PublicKey | None  # another key to try, if any
    checked: bool  # the key in force was read again just now (else: it may be stale)


class KeyObserver(Protocol):
    def webhook_key_fetch(self, *, ok: bool, loaded: bool) -> None: ...


class PublicKeys:
    """The key deliveries are checked against, from ``url`` or ``file`` (one of them)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        file: Path | None = None,
        session: aiohttp.ClientSession | None = None,
        observer: KeyObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        refetch_floor: float = REFETCH_FLOOR,
        retry_floor: float = RETRY_FLOOR,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        if (url is None) == (file is None):
            raise ValueError("the public key comes from a URL or a file, one of them")
        if url is not None and session is None:
            raise ValueError("fetching the public key needs a client session")
        self._url = url
        self._file = file
        self._session = session
        self._observer = observer
        self._monotonic = monotonic
        self._refetch_floor = refetch_floor
        self._retry_floor = retry_floor
        self._timeout = timeout
        self.key: PublicKey | None = None
        self._fetched_at = -float("inf")
        self._inflight: asyncio.Task[PublicKey | None] | None = None
        self._failing = False  # the last fetch failed (logged once until one works)

    @property
    def source(self) -> str:
        return self._url if self._url is not None else str(self._file)

    async def load(self) -> PublicKey | None:
        """Fetch the key now (at start); None if it could not be had (logged)."""
        return await self._fetch()

    async def current(self) -> PublicKey | None:
        """The key held; if none is, one more try when :data:`RETRY_FLOOR` allows."""
        if self.key is None and self._monotonic() - self._fetched_at >= self._retry_floor:
            return await self._fetch()
        return self.key

    async def after_failure(self, failed: PublicKey) -> Recheck:
        """After a signature ``failed`` to verify: a key other than ``failed`` to try it
        with (the key held, if another caller replaced it since, or a fresh fetch's if
        that gives a different one), or none, and whether the key is known to be current:
        not if :data:`REFETCH_FLOOR` held the fetch back, or it failed (the signature may
        be a rotated key's, to be tried again later)."""
        if self.key is not None and self.key is not failed:
            return Recheck(self.key, checked=True)
        if self._inflight is None and (self._monotonic() - self._fetched_at < self._refetch_floor):
            return Recheck(None, checked=False)
        key = await self._fetch()
        if key is None:
            return Recheck(None, checked=False)
        if key.public_numbers() == failed.public_numbers():
            return Recheck(None, checked=True)
        return Recheck(key, checked=True)

    async def close(self) -> None:
        """Cancel a fetch under way (the process is stopping)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _fetch(self) -> PublicKey | None:
        if self._inflight is None:
            self._fetched_at = self._monotonic()
            self._inflight = asyncio.ensure_future(self._fetch_once())
            self._inflight.add_done_callback(self._done)
        # Shielded: a caller that goes away (a client that hung up) does not cancel the
        # fetch the others wait for.
        return await asyncio.shield(self._inflight)

    def _done(self, task: asyncio.Task[PublicKey | None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_once(self) -> PublicKey | None:
        try:
            key = await (self._read_url() if self._url is not None else self._read_file())
        except KeyError_ as exc:
            if not self._failing:
                log.warning(
                    "cannot load the webhook public key from %s: %s; deliveries are "
                    "answered 503 (RealtimeKit retries them) until it loads",
                    self.source,
                    exc,
                )
            self._failing = True
            if self._observer is not None:
                self._observer.webhook_key_fetch(ok=False, loaded=self.key is not None)
            return None
        changed = self.key is None or key.public_numbers() != self.key.public_numbers()
        if changed or self._failing:
            log.info(
                "webhook public key %s loaded from %s",
                fingerprint(key),
                self.source,
                extra={"key": fingerprint(key)},
            )
        self._failing = False
        self.key = key
        if self._observer is not None:
            self._observer.webhook_key_fetch(ok=True, loaded=True)
        return key

    async def _read_file(self) -> PublicKey:
        assert self._file is not None
        try:
            return await asyncio.to_thread(load_key_file, self._file)
        except UnreadableFile as exc:
            raise KeyError_(f"the key file cannot be read: {exc}") from None

    async def _read_url(self) -> PublicKey:
        assert self._url is not None
        assert self._session is not None
        try:
            async with self._session.get(
                self._url,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
                proxy=proxy_for(self._url),
                headers={"Accept": "application/json"},
            ) as response:
                if response.status != 200:
                    raise KeyError_(f"the key document answered HTTP {response.status}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(16 * 1024):
                    size += len(chunk)
                    if size > MAX_DOCUMENT_BYTES:
                        raise KeyError_(
                            f"the key document is over {MAX_DOCUMENT_BYTES // 1024} KiB"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise KeyError_(f"no answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise KeyError_(f"connection failed ({type(exc).__name__})") from None
        return key_from_document(b"".join(chunks))
