"""Which webhook deliveries were seen already: a bounded window that forgets by age.

RealtimeKit delivers at least once, in no set order, with no timestamp: a retry may come
again with the same delivery id (``rtk-uuid``), or, some say, with a new one and the same
body. So a delivery is a duplicate if its id was seen, or if the same webhook sent the
same body bytes and nothing else for that stream since. The second rule must not drop a
real repeat: a stream that stops, starts and stops again sends the first body again, but
a different body came between, and that made the first one new again.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

TTL: Final = 600.0  # seconds a delivery is remembered
CAPACITY: Final = 20_000  # entries of each kind kept at most; the oldest go first

_K = TypeVar("_K")


class DeliveryWindow:
    """Delivery ids and (webhook id, body digest) pairs seen within :data:`TTL`."""

    def __init__(
        self,
        *,
        ttl: float = TTL,
        capacity: int = CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._bodies: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        # The last body digest remembered for each (webhook id, stream).
        self._latest: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids) + len(self._bodies)

    @staticmethod
    def digest(body: bytes) -> bytes:
        return hashlib.sha256(body).digest()

    def seen(self, delivery_id: str | None, webhook_id: str | None, digest: bytes) -> bool:
        """Whether this delivery is one already remembered."""
        self._expire()
        if delivery_id is not None and delivery_id in self._ids:
            return True
        return (webhook_id or "", digest) in self._bodies

    def remember(
        self,
        delivery_id: str | None,
        webhook_id: str | None,
        digest: bytes,
        *,
        stream: str | None = None,
    ) -> None:
        """Remember a delivery taken in; ``stream``: the livestream it was about, whose
        earlier body (if different) is forgotten, so that it counts as new if it comes
        again."""
        now = self._clock()
        source = webhook_id or ""
        if delivery_id is not None:
            self._put(self._ids, delivery_id, now)
        self._put(self._bodies, (source, digest), now)
        if stream is not None:
            key = (source, stream)
            earlier = self._latest.pop(key, None)
            if earlier is not None and earlier != digest:
                self._bodies.pop((source, earlier), None)
            self._latest[key] = digest
            while len(self._latest) > self._capacity:
                self._latest.popitem(last=False)

    def _put(self, table: OrderedDict[_K, float], key: _K, now: float) -> None:
        table.pop(key, None)
        table[key] = now
        while len(table) > self._capacity:
            table.popitem(last=False)

    def _expire(self) -> None:
        horizon = self._clock() - self._ttl
        for table in (self._ids, self._bodies):
            while table and next(iter(table.values())) <= horizon:
                table.popitem(last=False)
