"""The body of /metrics: the snapshot's families rendered once per snapshot, the exporter's
own metrics rendered per scrape, joined::

    snapshot part (cached per snapshot and variant) + own part (rendered per scrape)

Why not prometheus_client's plain path, the whole registry through the negotiated encoder
and gzip on every scrape (``bench/baseline.py``)? Side by side in one run
(``.venv/bin/python -m bench.render``, N = 10,000 livestreams, 500 live, 2 shared cores;
server CPU ms per scrape, medians of 5 rounds):

=============================================  ==========  ===========
scrape of                                      plain path  this module
=============================================  ==========  ===========
text                                           738         0.9
OpenMetrics + gzip (what Prometheus asks for)  1,202       1.9
... with the whole body gzipped per scrape                 119
=============================================  ==========  ===========

A new snapshot costs a render per variant served lately: 188 ms for text, 305 ms for
OpenMetrics + gzip (:mod:`exporter.render` says why it renders, not prometheus_client).
The targets this is for (bench/README.md, docs/scaling.md): /metrics p99 at least 20 times
faster than the plain path at N = 10,000; CPU per poll cycle under 1.5 s; with webhooks, a
stop on /metrics within 2 s at p99, the render after the new snapshot included. Each
piece, and its reason:

- **The snapshot part is cached per snapshot and variant** (the 20x target). A variant is
  what the negotiated encoder makes of the families (the text format, or OpenMetrics with
  its escaping and version), plain or gzip. The parts share no family, so the text body
  is their concatenation; in OpenMetrics the cached part goes without its ``# EOF``, which
  the own part, last, supplies.
- **Its gzip start is cached too**: gzip of the whole body per scrape (119 ms) would be
  only 10 times faster than the plain path. A gzip body is one gzip member (RFC 1952):
  the cached part is kept as zlib's output up to a sync flush (byte-aligned, not final)
  with the compressor's state (a quarter MB); each scrape continues a copy of that state
  (``zlib.Compress.copy``, made for data that share a prefix) with the own part and
  finishes the member, zlib writing the CRC-32 and length. Two gzip members in a row
  would be valid too, but curl, for one, reads only the first.
- **The own metrics are rendered per scrape** (1.2 ms text, 1.8 ms OpenMetrics), not with
  the snapshot, though that would cache the whole body and need no continued stream: they
  would then be as old as the last snapshot, published after each poll cycle (every
  ``poll.interval``, 30 s by default, longer when a cycle waits for the budget) and
  within 50 ms of a webhook's push, and frozen while a cycle hangs. ``process_*`` and
  ``python_gc_*`` (read when collected), the budget gauges (computed when collected) and
  the HTTP, webhook and connection counters are read at scrape time wherever
  prometheus_client serves them; Prometheus stamps each sample with the scrape's time,
  so ``rate()`` over a few scrapes would see steps, and a stalled poller would show a
  healthy process whose metrics stand still. The snapshot's families say they are
  cached; these do not.
- **A new snapshot is rendered ahead, and the previous bytes stand in meanwhile**: a
  scrape that waits for a render pays it (188-305 ms, 4 times faster than the plain
  path: not the 20x at p99), and one that triggers it would show a stop a scrape interval
  late. So when the snapshot changes (:meth:`Exposition.published` or the next scrape
  says so), the previous snapshot's parts are dropped and the variants served within
  the last :data:`SERVED_FOR` seconds are rendered again at once, in the background, so
  that the next scrape finds them ready, however many poll cycles pass between scrapes;
  until each is ready, the previous snapshot's bytes of it are served. A variant not
  served that recently is rendered on demand.

Renders run off the event loop, in daemon threads (:mod:`exporter.workers`: a stopping
process waits for none of them, and drops those queued). Concurrent scrapes of a variant
await one render, also of a variant beyond :data:`MAX_VARIANTS` (rendered for the scrapes
waiting, then dropped), and a cancelled scrape does not cancel it.
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from exporter.render import render_part
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from concurrent.futures import Executor

    from prometheus_client.registry import Collector

    from exporter.model import Snapshot

    # An encoder as prometheus_client's choose_encoder returns it.
    Encoder = Callable[[Collector], bytes]
    Render = Callable[[Encoder, Snapshot | None], bytes]

T = TypeVar("T")

EOF: Final = b"# EOF\n"
GZIP_LEVEL: Final = 6
# Encoder variants cached per snapshot (each plain, and gzip if asked for): every body
# a negotiated Accept can ask for (:func:`_variant`: text or OpenMetrics, each with names
# as they are, escaped with "dots", or with "values"), so that whatever clients send,
# they share at most this many renders. A scrape of any further variant (another
# encoder: only tests pass one) renders the whole exposition, as if there were no cache.
MAX_VARIANTS: Final = 6
# A variant served within this many seconds is rendered ahead for each new snapshot: longer
# than any usual scrape interval, so a 1m or 2m scrape of a 30s poll finds its bytes ready.
SERVED_FOR: Final = 600.0
# zlib writes a gzip member (RFC 1952: header, deflate data, CRC-32 and length).
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS


class Exposition:
    """Renders /metrics bodies for ``own`` (a collector, rendered per scrape) and the
    snapshot ``snapshot`` returns (rendered once per snapshot and variant; without it the
    body is ``own`` alone).

    Use it on one event loop only, and :meth:`close` it. Renders run in ``executor``
    (default: daemon threads of its own); ``render`` renders the snapshot part. Both are
    there for tests to count and order renders."""

    def __init__(
        self,
        own: Collector,
        snapshot: Callable[[], Snapshot] | None = None,
        *,
        render: Render = render_part,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._own = own
        self._source = snapshot
        self._render = render
        # Snapshot parts render one at a time, in a thread of their own: concurrent renders
        # would only share the GIL, and each holds a whole body in memory. Own parts are
        # small and render beside them.
        self._executor = executor or DaemonExecutor(1, name="exposition")
        self._own_executor = executor or DaemonExecutor(1, name="exposition-own")
        self._clock = clock
        self._generation = _Generation(None)
        # The generation before the current one: its finished parts stand in for the
        # current one's while those render, and each goes once its successor is ready.
        self._previous = _Generation(None)
        # Variants served lately (only cached ones: at most MAX_VARIANTS keys), with when.
        self._served: dict[tuple[Hashable, bool], tuple[Encoder, float]] = {}

    async def body(self, encoder: Encoder, *, gzipped: bool) -> bytes:
        """The whole exposition as ``encoder`` renders it, gzip-compressed if ``gzipped``."""
        return b"".join(await self.chunks(encoder, gzipped=gzipped))

    async def chunks(self, encoder: Encoder, *, gzipped: bool) -> list[bytes]:
        """:meth:`body` as chunks to send in turn (joining them would copy the cached part).

        While the current snapshot's part of this variant is still rendering, the previous
        snapshot's, if ready, is served: a scrape never waits for a render that an earlier
        snapshot's bytes can stand in for (they are one poll cycle older, as the data would
        be had the poll ended a moment later)."""
        generation = self._current()
        key = _variant(encoder)
        loop = asyncio.get_running_loop()
        if gzipped:
            start = self._deflated(generation, key, encoder)
            if key in generation.deflated:
                self._served[key, True] = (encoder, self._clock())
            start = _ready_or(start, self._previous.deflated.get(key))
            deflated = await asyncio.shield(start)
            end = await loop.run_in_executor(
                self._own_executor, _own_end, self._own, encoder, deflated
            )
            return [deflated.data, end]
        part = self._plain(generation, key, encoder)
        if key in generation.plain:
            self._served[key, False] = (encoder, self._clock())
        plain = await asyncio.shield(_ready_or(part, self._previous.plain.get(key)))
        own = await loop.run_in_executor(self._own_executor, encoder, self._own)
        return [plain, own]

    def close(self) -> None:
        """Drop the renders not started yet; never waits for the one running."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._own_executor.shutdown(wait=False, cancel_futures=True)

    def published(self) -> None:
        """Say, on the event loop, that the source may hold a new snapshot: if so, the
        variants served lately (within :data:`SERVED_FOR`) start rendering for it now."""
        self._current()

    def _current(self) -> _Generation:
        snapshot = None if self._source is None else self._source()
        previous = self._generation
        if snapshot is previous.snapshot:
            return previous
        current = self._generation = _Generation(snapshot)
        self._previous = previous
        now = self._clock()
        keys: set[Hashable] = set()
        recent = sorted(self._served.items(), key=lambda item: item[1][1], reverse=True)
        for variant, (encoder, at) in recent:
            key, gzipped = variant
            # Only what this generation can cache is worth rendering ahead.
            if now - at > SERVED_FOR or (key not in keys and len(keys) == MAX_VARIANTS):
                del self._served[variant]
                continue
            keys.add(key)
            if gzipped:
                self._deflated(current, key, encoder)
            else:
                self._plain(current, key, encoder)
        return current

    def _plain(
        self, generation: _Generation, key: Hashable, encoder: Encoder
    ) -> asyncio.Future[bytes]:
        part = generation.plain.get(key) or _unfinished(generation.rendering.get(key))
        if part is None:
            loop = asyncio.get_running_loop()
            snapshot = generation.snapshot
            part = loop.run_in_executor(self._executor, self._render_part, encoder, snapshot)
            room = len(generation.plain) < MAX_VARIANTS
            _keep(generation.plain if room else generation.rendering, key, part)
            if not room:  # shared by the scrapes that wait for it, then let go
                part.add_done_callback(functools.partial(_forget, generation.rendering, key))
            part.add_done_callback(functools.partial(self._succeeded, generation, key, False))
        return part

    def _deflated(
        self, generation: _Generation, key: Hashable, encoder: Encoder
    ) -> asyncio.Future[_Deflated]:
        part = generation.deflated.get(key) or _unfinished(generation.deflating.get(key))
        if part is None:
            part = asyncio.ensure_future(self._deflate(self._plain(generation, key, encoder)))
            # Cached with its plain part only, so MAX_VARIANTS bounds both.
            room = key in generation.plain
            _keep(generation.deflated if room else generation.deflating, key, part)
            if not room:
                part.add_done_callback(functools.partial(_forget, generation.deflating, key))
            part.add_done_callback(functools.partial(self._succeeded, generation, key, True))
        return part

    def _succeeded(
        self, generation: _Generation, key: Hashable, gzipped: bool, part: asyncio.Future[Any]
    ) -> None:
        """A current part is ready: the previous generation's stand-in can go."""
        if generation is self._generation and not part.cancelled() and not part.exception():
            (self._previous.deflated if gzipped else self._previous.plain).pop(key, None)

    async def _deflate(self, plain: asyncio.Future[bytes]) -> _Deflated:
        data = await asyncio.shield(plain)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _deflate_start, data)

    def _render_part(self, encoder: Encoder, snapshot: Snapshot | None) -> bytes:
        data = self._render(encoder, snapshot)
        # OpenMetrics' closing line comes with the own part. In the text format no line
        # can be "# EOF" (comments there are HELP and TYPE lines only).
        if data == EOF or data.endswith(b"\n" + EOF):
            return data[: -len(EOF)]
        return data


@dataclass(eq=False)
class _Generation:
    """The parts rendered, or being rendered, for one snapshot."""

    snapshot: Snapshot | None
    plain: dict[Hashable, asyncio.Future[bytes]] = field(default_factory=dict)
    deflated: dict[Hashable, asyncio.Future[_Deflated]] = field(default_factory=dict)
    # Variants beyond MAX_VARIANTS, while they render: each is rendered once for all the
    # scrapes that ask meanwhile, however many ask, and kept no longer.
    rendering: dict[Hashable, asyncio.Future[bytes]] = field(default_factory=dict)
    deflating: dict[Hashable, asyncio.Future[_Deflated]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Deflated:
    """The start of a gzip member, and zlib's state after it."""

    data: bytes  # header, then the snapshot part's deflate data ending in a sync flush
    compressor: zlib._Compress  # never used but to copy: each copy ends one body


def _variant(encoder: Encoder) -> Hashable:
    """What makes two encoders render different bytes: their function (text or
    OpenMetrics) and their escaping scheme, with "allow-utf-8" and "underscores" one (both
    leave legacy names as they are). choose_encoder also binds a version, which changes no
    byte here: it only decides whether native histograms are written, and there are none;
    every name is a legacy one (tests/unit/test_exposition.py checks both). Keyed by all it
    binds, every client could mint variants, each a whole render held in memory; so
    there are :data:`MAX_VARIANTS`."""
    if isinstance(encoder, functools.partial):
        if encoder.args:
            return encoder
        func, escaping = encoder.func, encoder.keywords.get("escaping", "underscores")
    else:
        func, escaping = encoder, "underscores"
    return (func, "underscores" if escaping == "allow-utf-8" else escaping)


def _keep(cache: dict[Hashable, asyncio.Future[T]], key: Hashable, part: asyncio.Future[T]) -> None:
    """Cache ``part`` under ``key``. A part that fails is forgotten (the next scrape tries
    again); its exception reaches the scrapes awaiting it, and asyncio logs nothing if
    none is left (all cancelled)."""
    cache[key] = part
    part.add_done_callback(functools.partial(_settled, cache, key))


def _settled(
    cache: dict[Hashable, asyncio.Future[Any]], key: Hashable, part: asyncio.Future[Any]
) -> None:
    failed = part.cancelled() or part.exception() is not None
    if failed and cache.get(key) is part:
        del cache[key]


def _unfinished(part: asyncio.Future[T] | None) -> asyncio.Future[T] | None:
    return part if part is not None and not part.done() else None


def _forget(
    cache: dict[Hashable, asyncio.Future[Any]], key: Hashable, part: asyncio.Future[Any]
) -> None:
    if cache.get(key) is part:
        del cache[key]


def _deflate_start(data: bytes) -> _Deflated:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return _Deflated(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH), compressor)


def _own_end(own: Collector, encoder: Encoder, start: _Deflated) -> bytes:
    """The rest of the gzip member ``start`` begins: ``own`` rendered now, compressed by a
    copy of ``start``'s compressor, then the trailer (zlib's CRC-32 and length of all)."""
    compressor = start.compressor.copy()
    return compressor.compress(encoder(own)) + compressor.flush()


def _ready_or(part: asyncio.Future[T], stand_in: asyncio.Future[T] | None) -> asyncio.Future[T]:
    """``part``, or while it is not done, ``stand_in`` if that is done and succeeded."""
    if part.done() or stand_in is None or not stand_in.done():
        return part
    if stand_in.cancelled() or stand_in.exception() is not None:
        return part
    return stand_in
