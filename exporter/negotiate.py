"""HTTP content negotiation for /metrics: which exposition format, and whether to gzip.

prometheus_client's ``choose_encoder`` takes the first OpenMetrics range it sees, even one
with ``q=0``, and compares media types case-sensitively. This module picks the preferred
range by quality first and hands only that range on, in a canonical form: the version
is the one of its major version this exporter writes (OpenMetrics 1.0.0 or 2.0.0, text
1.0.0), the escaping one of the four known schemes or none. ``choose_encoder`` copies
both into the encoder and the Content-Type, so a client could otherwise mint a new
encoder, and with it a render of the whole exposition, with every version string.
"""

from __future__ import annotations

from typing import Final

OPENMETRICS: Final = "application/openmetrics-text"
TEXT: Final = "text/plain"
_SUPPORTED: Final = (OPENMETRICS, TEXT)
ESCAPINGS: Final = frozenset({"allow-utf-8", "underscores", "dots", "values"})


def media_range(accept: str) -> str:
    """The supported range of ``accept`` with the highest quality (first wins a tie),
    media type lower-cased, parameters kept; ``""`` (plain text) if none is acceptable."""
    best = ""
    best_q = 0.0
    for element in accept.split(","):
        media_type, _, params = element.partition(";")
        media_type = media_type.strip().lower()
        if media_type not in _SUPPORTED or not _servable(media_type, params):
            continue
        q = _quality(params)
        if q > best_q:
            best, best_q = _canonical(media_type, params), q
    return best


def _canonical(media_type: str, params: str) -> str:
    """The range as the exporter serves it: its version and escaping, canonical (the
    quality has done its part)."""
    out = [media_type]
    version = _param(params, "version")
    if version is not None:
        major = int(version.split(".")[0])
        if media_type == OPENMETRICS:
            out.append("version=2.0.0" if major >= 2 else "version=1.0.0")
        elif major >= 1:
            out.append("version=1.0.0")
    escaping = _param(params, "escaping")
    if escaping in ESCAPINGS:
        out.append(f"escaping={escaping}")
    return ";".join(out)


def accepts_gzip(accept_encoding: str) -> bool:
    """True when ``Accept-Encoding`` names gzip with a quality above zero."""
    for element in accept_encoding.split(","):
        coding, _, params = element.partition(";")
        if coding.strip().lower() == "gzip":
            return _quality(params) > 0
    return False


def _servable(media_type: str, params: str) -> bool:
    """Whether prometheus_client can serve the range's version: OpenMetrics from 1.0.0 on,
    text in any well-formed version. A range it cannot serve must not win, or the reply
    would fall back to plain text although a servable range was offered too."""
    version = _param(params, "version")
    if version is None:
        return True
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return False
    return media_type != OPENMETRICS or tuple(int(p) for p in parts) >= (1, 0, 0)


def _param(params: str, wanted: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == wanted:
            return value.strip()
    return None


def _quality(params: str) -> float:
    value = _param(params, "q")
    if value is None:
        return 1.0
    try:
        q = float(value)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0
