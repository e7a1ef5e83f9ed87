"""Content negotiation for /metrics."""

from __future__ import annotations

import pytest

from exporter.negotiate import accepts_gzip, media_range

OM_1 = "application/openmetrics-text;version=1.0.0"
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", ""),
        ("*/*", ""),
        ("text/plain", "text/plain"),
        ("application/openmetrics-text", "application/openmetrics-text"),
        ("APPLICATION/OpenMetrics-Text", "application/openmetrics-text"),
        ("application/openmetrics-text;q=0, text/plain;q=1", "text/plain"),
        ("text/plain;q=1, application/openmetrics-text;q=0.1", "text/plain"),
        ("text/plain;q=0.5, application/openmetrics-text", "application/openmetrics-text"),
        ("application/openmetrics-text;q=0", ""),
        ("application/openmetrics-text;q=abc", ""),
        ("application/openmetrics-text;q=2", ""),
        (PROMETHEUS_3, "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"),
        (
            "application/openmetrics-text;version=0.0.1;q=0.9,"
            "application/openmetrics-text;version=1.0.0;q=0.8",
            "application/openmetrics-text;version=1.0.0",
        ),
        ("application/openmetrics-text;version=1.0.x, text/plain;q=0.1", "text/plain"),
        (
            "text/plain;version=banana;q=0.9, text/plain;version=0.0.4;q=0.5",
            "text/plain",
        ),
        ("application/openmetrics-text;version=1.0.7;escaping=dots", OM_1 + ";escaping=dots"),
        (
            "application/openmetrics-text;version=3.1.4",
            "application/openmetrics-text;version=2.0.0",
        ),
        ("application/openmetrics-text;version=1.0.0;escaping=bogus", OM_1),
        ("text/plain;version=1.2.3;escaping=values", "text/plain;version=1.0.0;escaping=values"),
    ],
    ids=[
        "none",
        "any",
        "text",
        "openmetrics",
        "case",
        "refused-om",
        "preferred-text",
        "default-q-1",
        "only-refused",
        "bad-q",
        "q-out-of-range",
        "prometheus-3",
        "old-openmetrics-skipped",
        "malformed-version-skipped",
        "malformed-text-version",
        "openmetrics-minor-versions-are-one",
        "openmetrics-2-and-later",
        "unknown-escaping-dropped",
        "text-1",
    ],
)
def test_media_range_picks_the_highest_quality_supported_range(accept: str, expected: str) -> None:
    """The supported range with the highest q wins; q=0 refuses; unknown ranges are ignored;
    the range comes back canonical: the version the exporter writes for its major version,
    a known escaping or none, no quality (so no client can mint encoders)."""
    assert media_range(accept) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0000", False),
        ("gzip;level=1;q=0", False),
        ("identity", False),
        ("", False),
    ],
    ids=[
        "gzip",
        "among-others",
        "case",
        "refused",
        "refused-zeros",
        "refused-after-param",
        "identity",
        "none",
    ],
)
def test_accepts_gzip_reads_quality(header: str, expected: bool) -> None:
    """gzip is used when named with a quality above zero."""
    assert accepts_gzip(header) is expected
