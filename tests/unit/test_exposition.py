"""The /metrics exposition: the snapshot part is rendered once per snapshot and variant and
equals a fresh render; the own part is rendered per scrape; gzip bodies are one member,
which Prometheus reads whole (tests/system/test_exposition_prometheus.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import re
import threading
import zlib
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.client import ENDPOINTS, REASONS
from exporter.collector import SnapshotCollector
from exporter.connections import REASONS as CLOSE_REASONS
from exporter.exposition import MAX_VARIANTS, SERVED_FOR, Exposition
from exporter.negotiate import media_range
from exporter.render import render_part
from exporter.telemetry import ExporterMetrics
from tests.snapshots import ONE_APP, SNAPSHOTS, UNKNOWN_STATUSES, UNLISTED

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client.registry import Collector

    from exporter.model import Snapshot

    Encoder = Callable[[Collector], bytes]

TEXT = ""  # no Accept header: the text format
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
EOF = b"# EOF\n"


# -- helpers --------------------------------------------------------------------------
def encoder_for(accept: str) -> Encoder:
    """The encoder /metrics negotiates for ``accept`` (a fresh object per call, as there)."""
    return choose_encoder(media_range(accept))[0]


def fresh_part(accept: str, snapshot: Snapshot) -> bytes:
    """A fresh render of a registry holding only the snapshot's collector (OpenMetrics
    without its closing # EOF)."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshot))
    if accept == TEXT:
        return generate_latest(registry)
    body: bytes = generate_openmetrics(registry)
    assert body.endswith(EOF)
    return body[: -len(EOF)]


def frozen_own() -> CollectorRegistry:
    """An own part whose values stay put between renders."""
    own = CollectorRegistry()
    Counter("test_scrapes", "Scrapes.", ["code"], registry=own).labels("200").inc(3)
    Gauge("test_build_info", "Build.", ["version"], registry=own).labels("1.2.3").set(1)
    return own


def gunzip_one_member(body: bytes) -> bytes:
    """``body`` decompressed, checking it is exactly one gzip member."""
    assert body[:2] == b"\x1f\x8b"
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    data = decompressor.decompress(body)
    assert decompressor.eof and decompressor.unused_data == b"", "not exactly one member"
    assert gzip.decompress(body) == data
    return data


class Renders:
    """A render function that counts its calls, optionally held until ``gate`` is set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.snapshots: list[Snapshot | None] = []
        self.gate = gate
        self.fail = 0  # this many calls raise first

    def __call__(self, encoder: Encoder, snapshot: Snapshot | None) -> bytes:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.snapshots.append(snapshot)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("render failed")
        return render_part(encoder, snapshot)

    @property
    def count(self) -> int:
        return len(self.snapshots)


class Inline(concurrent.futures.Executor):
    """Runs each job at once, on the submitting thread: what is submitted has run."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class Source:
    """A snapshot source the test swaps, as the poller does."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __call__(self) -> Snapshot:
        return self.snapshot


async def body(exposition: Exposition, accept: str, *, gzipped: bool = False) -> bytes:
    data = await exposition.body(encoder_for(accept), gzipped=gzipped)
    return gunzip_one_member(data) if gzipped else data


# -- equal to a fresh render ----------------------------------------------------------
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS], ids=["text", "openmetrics"])
@pytest.mark.parametrize("name", list(SNAPSHOTS))
async def test_body_is_the_fresh_snapshot_part_then_the_own_part(
    name: str, accept: str, gzipped: bool
) -> None:
    """For every snapshot and variant the body is a fresh render of the snapshot's
    collector alone, then the own part (which ends an OpenMetrics body with # EOF); the
    second scrape, served from the cache, is the same."""
    snapshot = SNAPSHOTS[name]
    own = frozen_own()
    exposition = Exposition(own, lambda: snapshot)
    expected = fresh_part(accept, snapshot) + encoder_for(accept)(own)
    assert await body(exposition, accept, gzipped=gzipped) == expected
    assert await body(exposition, accept, gzipped=gzipped) == expected
    if accept == OPENMETRICS:
        assert expected.endswith(b"\n" + EOF) and expected.count(EOF) == 1


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=1.0.0; escaping=dots",
        "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
        "text/plain; version=1.0.0; escaping=values",
        "application/openmetrics-text",
    ],
)
async def test_other_negotiated_variants_render_as_their_encoder_does(accept: str) -> None:
    """Escaping schemes and versions from the Accept header reach the cached part too."""
    snapshot = SNAPSHOTS["unknown-statuses"]
    own = frozen_own()
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshot))
    registry.register(own)
    expected = encoder_for(accept)(registry)
    exposition = Exposition(own, lambda: snapshot)
    for gzipped in (False, True, False):
        assert await body(exposition, accept, gzipped=gzipped) == expected


def shape(families: Any) -> dict[str, tuple[str, frozenset[tuple[str, frozenset[Any]]]]]:
    return {
        f.name: (f.type, frozenset((s.name, frozenset(s.labels.items())) for s in f.samples))
        for f in families
    }


def values(families: Any) -> dict[tuple[str, frozenset[Any]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in families
        if not f.name.startswith(("process_", "python_gc_"))  # these change between renders
        for s in f.samples
    }


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
async def test_full_body_parses_to_the_families_of_the_whole_registry(gzipped: bool) -> None:
    """With the exporter's real own metrics (process ones included), a body parses, in
    either format, to the families and values of a fresh render of the whole registry."""
    snapshot = SNAPSHOTS["many-streams"]
    own = CollectorRegistry()
    metrics = ExporterMetrics(registry=own, endpoints=ENDPOINTS, reasons=REASONS)
    metrics.request("livestreams", "200", 0.2)
    metrics.rate_limit_remaining(1100)
    metrics.track_app("acc", "app-0")
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=own)
    whole = CollectorRegistry()
    whole.register(SnapshotCollector(lambda: snapshot))
    whole.register(own)
    exposition = Exposition(own, lambda: snapshot)

    got = (await body(exposition, TEXT, gzipped=gzipped)).decode()
    want = generate_latest(whole).decode()
    assert shape(parse_text(got)) == shape(parse_text(want))
    assert values(parse_text(got)) == values(parse_text(want))

    got = (await body(exposition, OPENMETRICS, gzipped=gzipped)).decode()
    want = generate_openmetrics(whole).decode()
    parsed = list(parse_openmetrics(got))  # strict: one # EOF, at the end; no family twice
    assert shape(parsed) == shape(parse_openmetrics(want))
    assert values(parsed) == values(parse_openmetrics(want))
    snapshot_names = {f.name for f in SnapshotCollector(lambda: snapshot).collect()}
    assert snapshot_names and not snapshot_names & {f.name for f in own.collect()}


# -- caching --------------------------------------------------------------------------
async def test_concurrent_scrapes_of_a_variant_share_one_render() -> None:
    """Scrapes that arrive while the render runs await it; there is one render per
    snapshot and variant, the gzip variant reuses the plain render, and a new snapshot
    is rendered anew."""
    gate = threading.Event()
    renders = Renders(gate)
    source = Source(ONE_APP)
    own = frozen_own()
    exposition = Exposition(own, source, render=renders)
    scrapes = [
        asyncio.ensure_future(body(exposition, accept, gzipped=gzipped))
        for accept in (OPENMETRICS, "application/openmetrics-text")  # the same encoder
        for gzipped in (False, True)
        for _ in range(5)
    ]
    await asyncio.sleep(0)  # every scrape has asked for its part
    gate.set()
    expected = fresh_part(OPENMETRICS, ONE_APP) + encoder_for(OPENMETRICS)(own)
    assert await asyncio.gather(*scrapes) == [expected] * len(scrapes)
    assert renders.snapshots == [ONE_APP]

    await body(exposition, OPENMETRICS, gzipped=True)
    assert renders.count == 1
    await body(exposition, TEXT)
    assert renders.count == 2  # another variant

    source.snapshot = UNLISTED
    gate.clear()
    await body(exposition, OPENMETRICS)  # the previous body stands in (see below)
    await body(exposition, TEXT)  # started, for the new snapshot, by the scrape above
    gate.set()
    while renders.count < 4:  # the two renders of the new snapshot, in their thread
        await asyncio.sleep(0.01)
    expected = fresh_part(OPENMETRICS, UNLISTED) + encoder_for(OPENMETRICS)(own)
    assert await body(exposition, OPENMETRICS) == expected
    assert renders.snapshots[2:] == [UNLISTED, UNLISTED]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
async def test_while_a_new_snapshot_renders_the_previous_body_is_served(gzipped: bool) -> None:
    """A scrape never waits for a render that the previous snapshot's part can stand in for:
    while the new part renders, scrapes get the old one; once it is ready, the new one, and
    the old one is let go. A variant never rendered before is waited for."""
    gate = threading.Event()
    gate.set()
    renders = Renders(gate)
    source = Source(ONE_APP)
    own = frozen_own()
    exposition = Exposition(own, source, render=renders)
    old = fresh_part(OPENMETRICS, ONE_APP) + encoder_for(OPENMETRICS)(own)
    new = fresh_part(OPENMETRICS, UNLISTED) + encoder_for(OPENMETRICS)(own)
    assert await body(exposition, OPENMETRICS, gzipped=gzipped) == old

    gate.clear()
    source.snapshot = UNLISTED
    exposition.published()
    for _ in range(3):
        scrape = body(exposition, OPENMETRICS, gzipped=gzipped)
        assert await asyncio.wait_for(scrape, 5) == old  # while the render is held
    text = asyncio.ensure_future(body(exposition, TEXT))  # nothing to stand in: it waits
    await asyncio.sleep(0.05)
    assert not text.done()
    gate.set()
    assert await asyncio.wait_for(text, 5) == fresh_part(TEXT, UNLISTED) + encoder_for(TEXT)(own)
    while True:
        got = await body(exposition, OPENMETRICS, gzipped=gzipped)
        if got == new:
            break
        assert got == old
        await asyncio.sleep(0.01)
    assert renders.snapshots == [ONE_APP, UNLISTED, UNLISTED]
    assert not exposition._previous.plain and not exposition._previous.deflated


async def test_the_own_part_is_rendered_per_scrape() -> None:
    """A counter of the own part moves between two scrapes while the snapshot part is
    served from the cache."""
    renders = Renders()
    own = CollectorRegistry()
    scrapes = Counter("test_scrapes", "Scrapes.", registry=own)
    exposition = Exposition(own, lambda: ONE_APP, render=renders)
    first = await body(exposition, TEXT, gzipped=True)
    scrapes.inc()
    second = await body(exposition, TEXT, gzipped=True)
    assert b"test_scrapes_total 0.0\n" in first and b"test_scrapes_total 1.0\n" in second
    part = fresh_part(TEXT, ONE_APP)
    assert first.startswith(part) and second.startswith(part)
    assert renders.count == 1


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS], ids=["text", "openmetrics"])
async def test_each_gzip_scrape_ends_its_own_copy_of_the_cached_stream(accept: str) -> None:
    """The cached start of a gzip body is shared, never changed: scrapes one after another
    and concurrently, each with other own values, each get one whole gzip member of the
    cached part and their own part, and an empty own part still ends the member."""
    snapshot = SNAPSHOTS["many-streams"]
    own = CollectorRegistry()
    scrapes = Counter("test_scrapes", "Scrapes.", registry=own)
    exposition = Exposition(own, lambda: snapshot)
    encoder = encoder_for(accept)
    first = await exposition.chunks(encoder, gzipped=True)
    starts = {id(first[0])}
    for n in range(1, 4):
        scrapes.inc()
        chunks = await exposition.chunks(encoder, gzipped=True)
        starts.add(id(chunks[0]))
        want = fresh_part(accept, snapshot) + encoder(own)
        assert gunzip_one_member(b"".join(chunks)) == want
        assert f"test_scrapes_total {n}.0\n".encode() in want
    together = await asyncio.gather(*(exposition.body(encoder, gzipped=True) for _ in range(8)))
    assert {gunzip_one_member(b) for b in together} == {fresh_part(accept, snapshot) + encoder(own)}
    assert len(starts) == 1
    assert b"test_scrapes_total 0.0\n" in gunzip_one_member(b"".join(first))

    empty = Exposition(CollectorRegistry(), lambda: snapshot)
    want = fresh_part(accept, snapshot) + (EOF if accept == OPENMETRICS else b"")
    assert gunzip_one_member(await empty.body(encoder, gzipped=True)) == want
    exposition.close()
    empty.close()


async def test_a_cancelled_scrape_does_not_cancel_the_shared_render() -> None:
    gate = threading.Event()
    renders = Renders(gate)
    exposition = Exposition(frozen_own(), lambda: ONE_APP, render=renders)
    gone = asyncio.ensure_future(body(exposition, OPENMETRICS, gzipped=True))
    waiting = asyncio.ensure_future(body(exposition, OPENMETRICS, gzipped=True))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    assert (await waiting).startswith(fresh_part(OPENMETRICS, ONE_APP))
    assert gone.cancelled() and renders.count == 1


async def test_a_failed_render_is_not_cached() -> None:
    """A render that raises fails that scrape (a 500); the next scrape renders again."""
    renders = Renders()
    renders.fail = 1
    exposition = Exposition(frozen_own(), lambda: ONE_APP, render=renders)
    with pytest.raises(RuntimeError, match="render failed"):
        await body(exposition, TEXT, gzipped=True)
    assert (await body(exposition, TEXT, gzipped=True)).startswith(fresh_part(TEXT, ONE_APP))
    assert renders.count == 2


def _text_encoder(n: int) -> Encoder:
    """An encoder of its own (a distinct function: a variant of its own) writing text."""

    def encode(collector: Collector) -> bytes:
        return generate_latest(collector)

    encode.__name__ = f"text_{n}"
    return encode


DISTINCT_ENCODERS = [_text_encoder(n) for n in range(MAX_VARIANTS + 1)]


async def test_versions_and_escapings_share_one_render_per_body() -> None:
    """Whatever version and escaping clients ask for (200 OpenMetrics versions, every
    escaping, text 0.0.4 and 1.0.0), a snapshot renders once per distinct body (text or
    OpenMetrics; names as they are, or escaped with dots, or with values), and each body
    is what prometheus_client writes for that Accept: a client cannot mint renders (200
    distinct versions once made 200 whole renders, 1.8 GB held by clients not reading)."""
    renders = Renders()
    own = frozen_own()
    exposition = Exposition(own, lambda: ONE_APP, render=renders)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: ONE_APP))
    registry.register(own)
    escapings = ("underscores", "dots", "values", "allow-utf-8")
    om, text = "application/openmetrics-text", "text/plain"
    accepts = [
        *(f"{om};version=1.0.{i};escaping={escapings[i % 4]}" for i in range(200)),
        f"{om};version=2.0.0",
        TEXT,
        *(f"{text};version=1.0.0;escaping={e}" for e in escapings),
    ]
    for accept in accepts:
        for gzipped in (False, True):
            assert await body(exposition, accept, gzipped=gzipped) == encoder_for(accept)(registry)
    assert renders.count == MAX_VARIANTS == 6
    exposition.close()


def test_every_name_the_exporter_exposes_is_a_legacy_one() -> None:
    """Why versions and escapings share a render: no metric or label name of the
    exporter needs escaping, and no family is a native histogram."""
    legacy = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
    registry = CollectorRegistry()
    for snapshot in SNAPSHOTS.values():

        def source(snapshot: Snapshot = snapshot) -> Snapshot:
            return snapshot

        registry.register(SnapshotCollector(source))
    ExporterMetrics(
        registry=registry, endpoints=ENDPOINTS, reasons=REASONS, close_reasons=CLOSE_REASONS
    )
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for family in registry.collect():
        assert legacy.fullmatch(family.name), family.name
        for sample in family.samples:
            assert legacy.fullmatch(sample.name), sample.name
            assert sample.native_histogram is None, sample.name
            for label in sample.labels:
                assert legacy.fullmatch(label) and not label.startswith("__"), label


async def test_variants_beyond_the_cap_are_rendered_per_scrape() -> None:
    """Only MAX_VARIANTS encoder variants are cached per snapshot; a further one is
    rendered again for every scrape that comes after the last render ended, correctly."""
    renders = Renders()
    own = frozen_own()
    exposition = Exposition(own, lambda: ONE_APP, render=renders)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: ONE_APP))
    registry.register(own)
    for _ in range(2):
        for encoder in DISTINCT_ENCODERS:
            for gzipped in (False, True):
                data = await exposition.body(encoder, gzipped=gzipped)
                assert (gunzip_one_member(data) if gzipped else data) == encoder(registry)
    # The first MAX_VARIANTS variants once each; the last one per scrape, gzip or not.
    assert renders.count == MAX_VARIANTS + 2 * 2


async def test_without_a_snapshot_source_the_body_is_the_registry_alone() -> None:
    """As create_app(registry=...) uses it: the whole registry rendered per scrape."""
    registry = frozen_own()
    exposition = Exposition(registry)
    for accept in (TEXT, OPENMETRICS):
        for gzipped in (False, True):
            assert await body(exposition, accept, gzipped=gzipped) == encoder_for(accept)(registry)


async def test_concurrent_scrapes_of_a_variant_beyond_the_cap_share_one_render() -> None:
    """However many scrapes of an uncached variant arrive while it renders, it renders
    once for all of them (plain and gzip alike), so that a flood of them queues no
    renders that a stopping process would have to run (300 once made SIGTERM take 20 s)."""
    gate = threading.Event()
    renders = Renders(gate)
    exposition = Exposition(frozen_own(), lambda: ONE_APP, render=renders)
    for encoder in DISTINCT_ENCODERS[:MAX_VARIANTS]:
        gate.set()
        await exposition.body(encoder, gzipped=False)
    assert renders.count == MAX_VARIANTS
    gate.clear()
    uncached = DISTINCT_ENCODERS[MAX_VARIANTS]
    scrapes = [
        asyncio.ensure_future(exposition.body(uncached, gzipped=i % 2 == 1)) for i in range(300)
    ]
    await asyncio.sleep(0)
    gate.set()
    bodies = await asyncio.gather(*scrapes)
    assert renders.count == MAX_VARIANTS + 1
    assert len({b for i, b in enumerate(bodies) if i % 2 == 0}) == 1
    exposition.close()


# -- rendering ahead ------------------------------------------------------------------
async def test_a_new_snapshot_renders_the_variants_served_lately() -> None:
    """published() starts rendering, for the new snapshot, the variants scraped within
    SERVED_FOR (and only those), so that the next scrape finds them ready, even when
    scrapes come less often than snapshots (a 1m scrape of a 30s poll)."""
    renders = Renders()
    source = Source(ONE_APP)
    now = [1000.0]
    exposition = Exposition(
        frozen_own(), source, render=renders, executor=Inline(), clock=lambda: now[0]
    )
    exposition.published()
    assert renders.count == 0  # nothing served yet: nothing to render ahead
    await body(exposition, OPENMETRICS, gzipped=True)
    assert renders.snapshots == [ONE_APP]

    source.snapshot = UNLISTED
    exposition.published()
    assert renders.snapshots == [ONE_APP, UNLISTED]  # before any scrape
    exposition.published()  # the same snapshot: nothing new
    assert renders.count == 2
    await body(exposition, OPENMETRICS, gzipped=True)
    await body(exposition, OPENMETRICS)
    assert renders.count == 2
    await body(exposition, TEXT)  # not served before: rendered on demand
    assert renders.snapshots[2:] == [UNLISTED]

    source.snapshot = UNKNOWN_STATUSES
    exposition.published()  # both variants were served
    assert renders.snapshots[3:] == [UNKNOWN_STATUSES, UNKNOWN_STATUSES]
    now[0] += 30
    source.snapshot = ONE_APP
    exposition.published()  # no scrape of the last snapshot, but served 30 s ago
    assert renders.snapshots[5:] == [ONE_APP, ONE_APP]
    await body(exposition, TEXT, gzipped=True)
    assert renders.count == 7  # found ready

    now[0] += SERVED_FOR + 1
    source.snapshot = UNLISTED
    exposition.published()  # nothing served for SERVED_FOR: nothing rendered ahead
    assert renders.count == 7


async def test_rendering_ahead_is_limited_to_what_can_be_cached() -> None:
    """Of many variants served lately, only the MAX_VARIANTS most recent are rendered
    ahead (the others could not be cached anyway)."""
    renders = Renders()
    source = Source(ONE_APP)
    now = [0.0]
    exposition = Exposition(
        frozen_own(), source, render=renders, executor=Inline(), clock=lambda: now[0]
    )
    for encoder in DISTINCT_ENCODERS:
        now[0] += 1
        await exposition.body(encoder, gzipped=False)
    first_snapshot = renders.count
    source.snapshot = UNLISTED
    exposition.published()
    assert renders.count - first_snapshot == MAX_VARIANTS


async def test_a_scrape_that_finds_a_new_snapshot_renders_the_other_served_variants() -> None:
    """Without published(), the first scrape after a new snapshot starts the others."""
    renders = Renders()
    source = Source(ONE_APP)
    exposition = Exposition(frozen_own(), source, render=renders, executor=Inline())
    await body(exposition, OPENMETRICS)
    await body(exposition, TEXT)
    source.snapshot = UNLISTED
    await body(exposition, TEXT)
    assert renders.snapshots == [ONE_APP, ONE_APP, UNLISTED, UNLISTED]
