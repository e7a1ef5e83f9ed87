"""The fast render of the snapshot part is byte for byte what prometheus_client's encoder
makes of the snapshot's families, for every variant choose_encoder negotiates; encoders it
does not know render the families themselves; and a cached /metrics body equals a fresh
render of the whole registry.

The property tests are derandomized and bounded, so the file always runs the same way in
a few seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter import render
from exporter.client import ENDPOINTS, REASONS
from exporter.collector import GaugeRows, SnapshotCollector, families
from exporter.exposition import Exposition
from exporter.model import (
    EMPTY_SNAPSHOT,
    KNOWN_STATUSES,
    UNKNOWN_STATUS,
    AppState,
    Livestream,
    Session,
    Snapshot,
    StreamState,
    Unlisted,
)
from exporter.render import render_part
from exporter.telemetry import ExporterMetrics
from tests.snapshots import SNAPSHOTS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    Encoder = Callable[[Collector], bytes]

ESCAPINGS = ("underscores", "dots", "values", "allow-utf-8")
# Accept headers for every encoder variant choose_encoder returns.
ACCEPTS = (
    "",
    "text/plain; version=0.0.4",
    *(f"text/plain; version=1.0.0; escaping={e}" for e in ESCAPINGS),
    "application/openmetrics-text",
    *(f"application/openmetrics-text; version=1.0.0; escaping={e}" for e in ESCAPINGS),
    "application/openmetrics-text; version=2.0.0; escaping=allow-utf-8",
)
TEXT = ""
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def encoder_for(accept: str) -> Encoder:
    return choose_encoder(accept)[0]


def encoded(encoder: Encoder, snapshot: Snapshot) -> bytes:
    """What ``encoder`` makes of a registry holding the snapshot's collector alone."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshot))
    return encoder(registry)


class Metrics:
    """A collector of fixed families."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self.metrics


# -- generated snapshots --------------------------------------------------------------
# Label values: anything but lone surrogates (which no encoder can write), with the
# characters the formats escape, and braces and a placeholder-like text, made likely.
texts = st.text(
    st.sampled_from(['"', "\\", "\n", "{", "}", "#", " ", "\x00", "0", "ü", "🎥"])
    | st.characters(codec="utf-8"),
    max_size=6,
)
numbers = st.sampled_from(
    (0.0, -0.0, 1.0, 0.5, 116.11599994199997, 1e9, 1.7e9 + 0.25, 1e22, 5e-324)
) | st.floats(allow_nan=True, allow_infinity=True)
maybe_numbers = st.none() | numbers
statuses = st.sampled_from((*KNOWN_STATUSES, UNKNOWN_STATUS, "PAUSED")) | texts
sessions = st.builds(
    Session,
    id=texts,
    started_time=maybe_numbers,
    stopped_time=maybe_numbers,
    err_message=st.none() | texts,
    ingest_seconds=maybe_numbers,
    viewer_seconds=maybe_numbers,
    ended=st.booleans(),
)
streams = st.builds(
    StreamState,
    livestream=st.builds(
        Livestream,
        id=texts,
        status=statuses,
        name=st.none() | texts,
        meeting_id=st.none() | texts,
        disabled=st.none() | st.booleans(),
    ),
    live=st.booleans(),
    session=st.none() | sessions,
    last_update=numbers,
    expected_live=st.none() | st.booleans(),
)
apps = st.builds(
    AppState,
    account_id=texts,
    app_id=texts,
    up=st.booleans(),
    last_success=maybe_numbers,
    streams=st.lists(streams, max_size=4).map(tuple),
    unlisted=st.lists(
        st.builds(Unlisted, id=texts, expected_live=st.none() | st.booleans()), max_size=3
    ).map(tuple),
)
snapshots = st.builds(Snapshot, apps=st.lists(apps, max_size=3).map(tuple), app_level=st.booleans())
BOUNDED = settings(
    derandomize=True,
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@BOUNDED
@given(snapshot=snapshots)
def test_fast_render_equals_the_encoder_for_every_variant(snapshot: Snapshot) -> None:
    """Quotes, backslashes, newlines, unicode and empty strings in every label; missing
    values; unknown statuses; unlisted streams; shards; zeros of either sign, tiny, huge,
    infinite and NaN values: the bytes are the encoder's, in every negotiable variant."""
    for accept in ACCEPTS:
        encoder = encoder_for(accept)
        assert render_part(encoder, snapshot) == encoded(encoder, snapshot), accept


@pytest.mark.parametrize("name", list(SNAPSHOTS))
@pytest.mark.parametrize("accept", ACCEPTS)
def test_fast_render_equals_the_encoder_for_the_exposition_snapshots(
    name: str, accept: str
) -> None:
    """The hand-made snapshots of test_exposition (300 streams in one), on shard 0 and on
    another shard."""
    encoder = encoder_for(accept)
    snapshot = SNAPSHOTS[name]
    assert render_part(encoder, snapshot) == encoded(encoder, snapshot)
    shard = dataclasses.replace(snapshot, app_level=False)
    assert render_part(encoder, shard) == encoded(encoder, shard)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_known_variants_take_the_fast_path(accept: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """For every negotiable variant no whole family goes through prometheus_client: the
    encoder renders only each family's placeholder sample."""
    encoder = encoder_for(accept)
    snapshot = SNAPSHOTS["unknown-statuses"]
    expected = encoded(encoder, snapshot)
    whole: list[str] = []
    metric = GaugeRows.metric

    def spy(self: GaugeRows, rows: Iterable[Any] | None = None) -> Any:
        if rows is None:
            whole.append(self.name)
        return metric(self, rows)

    monkeypatch.setattr(GaugeRows, "metric", spy)
    assert render_part(encoder, snapshot) == expected
    assert whole == []


# -- other encoders and layouts -------------------------------------------------------
def test_an_unknown_encoder_renders_the_families_itself() -> None:
    """An encoder that is not prometheus_client's gets one collector of the snapshot's
    families, once, and its bytes are the part; without a snapshot, no family."""
    calls: list[list[Any]] = []

    def encoder(collector: Collector) -> bytes:
        calls.append(list(collector.collect()))
        return b"rendered by the encoder\n"

    snapshot = SNAPSHOTS["one-app"]
    assert render_part(encoder, snapshot) == b"rendered by the encoder\n"
    assert calls == [families(snapshot)]
    assert render_part(encoder, None) == b"rendered by the encoder\n"
    assert calls[1:] == [[]]


def test_a_wrapped_encoder_renders_exactly_what_it_wraps() -> None:
    snapshot = SNAPSHOTS["unknown-statuses"]
    for accept in (TEXT, OPENMETRICS):
        known = encoder_for(accept)

        def wrapped(collector: Collector, known: Encoder = known) -> bytes:
            return known(collector)

        assert render_part(wrapped, snapshot) == encoded(known, snapshot)


def test_partials_binding_anything_else_are_left_to_the_encoder() -> None:
    """Only the escaping and version choose_encoder binds are understood."""
    snapshot = SNAPSHOTS["one-app"]
    # The registry bound first is what it renders; the collector becomes the escaping.
    bound = functools.partial(generate_latest, CollectorRegistry())
    assert render_part(bound, snapshot) == b""
    # The point is an argument the encoder does not take.
    odd = functools.partial(generate_openmetrics, version="1.0.0", unknown=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown"):
        render_part(odd, snapshot)


# Family and label names, legacy or not (dots, unicode, leading digits, braces, quotes),
# distinct within a family; help texts with what HELP lines escape.
names = st.text(st.sampled_from('ab_:.é9 {}"\\'), min_size=1, max_size=5)


@st.composite
def tables(draw: st.DrawFn) -> GaugeRows:
    labels = draw(st.lists(names, unique=True, max_size=4))
    split = draw(st.integers(0, len(labels)))
    rows = draw(
        st.lists(
            st.tuples(st.lists(texts, min_size=len(labels), max_size=len(labels)), numbers),
            max_size=3,
        )
    )
    return GaugeRows(
        draw(names),
        draw(texts),
        tuple(labels[:split]),
        tuple(labels[split:]),
        [(tuple(values[:split]), tuple(values[split:]), value) for values, value in rows],
    )


@BOUNDED
@given(tables=st.lists(tables(), max_size=3))
def test_any_family_layout_renders_as_the_encoder_does(tables: list[GaugeRows]) -> None:
    """Beyond the collector's families: any names, any split of the labels into key and
    extra (key labels that sort after extra ones, or around them, which the fast path
    leaves to the encoder), and no labels at all."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "gauge_rows", lambda snapshot: tables)
        for accept in ACCEPTS:
            encoder = encoder_for(accept)
            expected = encoder(Metrics(table.metric() for table in tables))
            assert render_part(encoder, EMPTY_SNAPSHOT) == expected, accept


def test_a_lone_surrogate_fails_as_the_encoder_fails() -> None:
    """A label value no encoding can write fails the render (a 500) either way."""
    app = AppState("acc", "\ud800", True, 1.0)
    snapshot = Snapshot(apps=(app,))
    for accept in (TEXT, OPENMETRICS):
        with pytest.raises(UnicodeEncodeError):
            encoded(encoder_for(accept), snapshot)
        with pytest.raises(UnicodeEncodeError):
            render_part(encoder_for(accept), snapshot)


# -- the cached body ------------------------------------------------------------------
SHARD = dataclasses.replace(SNAPSHOTS["one-app"], app_level=False)


def own_metrics() -> CollectorRegistry:
    """The exporter's own metrics (without the process ones, which change per render)."""
    own = CollectorRegistry(auto_describe=False)
    metrics = ExporterMetrics(registry=own, endpoints=ENDPOINTS, reasons=REASONS)
    metrics.request("livestreams", "200", 0.2)
    metrics.request("livestreams", "429", 1.5)
    metrics.rate_limit_remaining(1100)
    metrics.cycle(2.5)
    metrics.track_app("acc", "app-0")
    metrics.poll_error("acc", "app-0", "timeout")
    return own


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    ("accept", "generate"),
    [(TEXT, generate_latest), (OPENMETRICS, generate_openmetrics)],
    ids=["text", "openmetrics"],
)
@pytest.mark.parametrize("name", [*SNAPSHOTS, "shard"])
async def test_the_cached_body_is_a_fresh_render_of_the_whole_registry(
    name: str, accept: str, generate: Encoder, gzipped: bool
) -> None:
    """The body, rendered and then served from the cache, is the bytes prometheus_client
    renders for a registry holding the snapshot's collector and the own metrics."""
    snapshot = SNAPSHOTS.get(name, SHARD)
    own = own_metrics()
    whole = CollectorRegistry(auto_describe=False)
    whole.register(SnapshotCollector(lambda: snapshot))
    whole.register(own)
    exposition = Exposition(own, lambda: snapshot)
    expected = generate(whole)
    for _ in range(2):
        body = await exposition.body(encoder_for(accept), gzipped=gzipped)
        assert (gzip.decompress(body) if gzipped else body) == expected
