"""The snapshot part of /metrics, fast: the very bytes prometheus_client's encoder makes of
:func:`exporter.collector.families`, formatted straight from the collector's rows.

Why not prometheus_client's encoders: every new snapshot is rendered once per variant
served lately (:mod:`exporter.exposition`), after each poll cycle and, with webhooks,
after each push. Side by side in one run (``.venv/bin/python -m bench.render``; N =
10,000 livestreams, 500 live; CPU ms, medians of 5 rounds, 2 shared cores):

==================================================  =================  ===========
                                                    prometheus_client  this module
==================================================  =================  ===========
render, text                                        738                182 (4.0x)
render, OpenMetrics                                 1,066              190 (5.6x)
a new snapshot's first scrape, text                 771                188
a new snapshot's first scrape, OpenMetrics + gzip   1,216              305
==================================================  =================  ===========

The targets that need it (docs/scaling.md): with webhooks, a stop on /metrics within 2 s
at p99, its render included. In the webhook run at N = 10,000, pushes and poll cycles made
a new snapshot about every 3 s (194 confirmed changes and 44 cycles in 11 minutes). For
the variant Prometheus scrapes, prometheus_client's encoder would take 1.22 s a snapshot:
a stop's render, queued behind the one running, would be served up to 2.4 s after its
push, past the target (with a text reader as well, 2.0 s a snapshot, two thirds of the
gap); here 0.31 s. And CPU per poll cycle under 1.5 s: that render alone would take
1.22 s of it. It is not for memory: a render here peaks at 91 MB of Python allocations,
prometheus_client's at 78 MB.

How a family's lines look (its HELP and TYPE lines, metric and label names as the
negotiated escaping writes them, the order of its labels) is learned from the encoder
itself, which renders each family once without samples and once with one placeholder
sample. Only what varies per sample is formatted here: label values, escaped as both
formats escape them (each stream's key labels once, for all its families), and values, by
prometheus_client's own ``floatToGoString``. An encoder other than prometheus_client's
text or OpenMetrics one (or a ``choose_encoder`` partial of them) renders the families
itself, as does a known one if a family's placeholder sample shows a layout this module
cannot fill in. tests/unit/test_render.py checks the bytes against the encoders'.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from exporter.collector import families, gauge_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

    from exporter.collector import GaugeRows
    from exporter.model import Snapshot

    Encoder = Callable[[Collector], bytes]

# What each known encoder writes after the last family.
_TRAILERS: Final[dict[object, str]] = {generate_latest: "", generate_openmetrics: "# EOF\n"}
# The arguments choose_encoder binds; neither changes how a gauge sample is written.
_KEYWORDS: Final = frozenset({"escaping", "version"})
# The value of the placeholder sample, and how placeholder label values look.
_PROBE: Final = 0.5
_PLACEHOLDER: Final = re.compile("\x00([0-9]+)\x00")


def render_part(encoder: Encoder, snapshot: Snapshot | None) -> bytes:
    """The snapshot's families as ``encoder`` renders them on their own (for ``None``,
    no family: what the encoder renders for an empty registry)."""
    trailer = _trailer(encoder)
    if snapshot is None or trailer is None:
        return encoder(_Collector(() if snapshot is None else families(snapshot)))
    tables = gauge_rows(snapshot)
    layouts = [_layout(encoder, table, trailer) for table in tables]
    if None in layouts:
        return encoder(_Collector([table.metric() for table in tables]))
    escaped = _Escaped()
    keys: dict[tuple[str, ...], _Keys] = {}
    numbers = _Numbers()
    escape = escaped.__getitem__
    out: list[str] = []
    for table, layout in zip(tables, layouts, strict=True):
        assert layout is not None
        out.append(layout.header)
        joined = keys.setdefault(layout.seps, _Keys(layout.seps, escaped))
        line = layout.line.format
        # 0.0 and -0.0 are one key of ``numbers`` but are written apart.
        out += [
            line(
                joined[key],
                *map(escape, extra),
                numbers[value] if value or math.copysign(1.0, value) < 0 else _ZERO,
            )
            for key, extra, value in table.rows
        ]
    out.append(trailer)
    return "".join(out).encode()


def _trailer(encoder: Encoder) -> str | None:
    """What ``encoder`` writes after the last family, if it is one this module knows."""
    func: object = encoder
    if isinstance(encoder, functools.partial):
        if encoder.args or not encoder.keywords.keys() <= _KEYWORDS:
            return None
        func = encoder.func
    return _TRAILERS.get(func)


@dataclass(frozen=True, slots=True)
class _Layout:
    """How an encoder writes one family."""

    header: str  # the lines before the first sample
    seps: tuple[str, ...]  # what stands between the key labels' values
    # A sample line for str.format: {0} the key labels' values joined by ``seps``, then
    # the extra labels' values, then the value.
    line: str


def _layout(encoder: Encoder, table: GaugeRows, trailer: str) -> _Layout | None:
    """How ``encoder`` writes ``table``'s family, learned from a render without samples
    and one with a placeholder sample; ``None`` if that shows no line layout this module
    can fill in (one line per sample, the key labels' values side by side)."""
    placeholders = [f"\x00{i}\x00" for i in range(len(table.key) + len(table.extra))]
    row = (tuple(placeholders[: len(table.key)]), tuple(placeholders[len(table.key) :]), _PROBE)
    empty = encoder(_Collector([table.metric(())])).decode()
    full = encoder(_Collector([table.metric([row])])).decode()
    header = empty[: len(empty) - len(trailer)]
    end = _number(_PROBE) + "\n" + trailer
    if not (empty.endswith(trailer) and full.startswith(header) and full.endswith(end)):
        return None
    sample = full[len(header) : len(full) - len(end)]
    parts = _PLACEHOLDER.split(sample)
    texts, order = parts[::2], [int(i) for i in parts[1::2]]
    if "\n" in sample or sorted(order) != list(range(len(placeholders))):
        return None
    keys = len(table.key)
    start = order.index(0) if keys else 0
    if order[start : start + keys] != list(range(keys)):
        return None
    line = [_literal(texts[0])]
    at = 0
    while at < len(order):
        if order[at] == 0 and keys:
            line.append("{0}")
            at += keys
        else:
            line.append(f"{{{order[at] - keys + 1}}}")
            at += 1
        line.append(_literal(texts[at]))
    line.append(f"{{{len(table.extra) + 1}}}\n")
    return _Layout(header, tuple(texts[start + 1 : start + keys]), "".join(line))


def _number(value: float) -> str:
    """``value`` as prometheus_client writes it."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]  # untyped upstream
    return text


_ZERO: Final = _number(0.0)


def _literal(text: str) -> str:
    """``text`` as literal text of a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def _escape(value: str) -> str:
    """A label value as both formats write it between its quotes."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Escaped(dict[str, str]):
    """Label value -> :func:`_escape` of it, computed once."""

    def __missing__(self, value: str) -> str:
        text = self[value] = _escape(value)
        return text


class _Keys(dict[tuple[str, ...], str]):
    """Key labels' values -> their escaped values joined by ``seps``, computed once."""

    def __init__(self, seps: tuple[str, ...], escaped: _Escaped) -> None:
        super().__init__()
        self._seps = seps
        self._escaped = escaped

    def __missing__(self, key: tuple[str, ...]) -> str:
        escaped = self._escaped
        text = escaped[key[0]] if key else ""
        for sep, value in zip(self._seps, key[1:], strict=True):
            text += sep + escaped[value]
        self[key] = text
        return text


class _Numbers(dict[float, str]):
    """Value -> :func:`_number` of it, computed once."""

    def __missing__(self, value: float) -> str:
        text = self[value] = _number(value)
        return text


class _Collector:
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics
