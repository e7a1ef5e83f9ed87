"""The exporter's own metrics."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, generate_latest

from exporter import __version__
from exporter.telemetry import ExporterMetrics
from tests import REPO

DEFAULT = {"credentials": "default"}


def make() -> tuple[ExporterMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ExporterMetrics(
        registry=registry, endpoints=("livestreams",), reasons=("auth", "timeout")
    )
    return metrics, registry


def test_rate_limit_remaining_appears_once_seen() -> None:
    """No Ratelimit header seen, no series; then the last value seen."""
    metrics, registry = make()
    name = "realtimekit_exporter_rate_limit_remaining"
    assert registry.get_sample_value(name, DEFAULT) is None
    metrics.rate_limit_remaining(17)
    metrics.rate_limit_remaining(12)
    assert registry.get_sample_value(name, DEFAULT) == 12


def test_tracked_app_errors_start_at_zero_and_count() -> None:
    """Every reason of a tracked app is exported at 0, so rate() sees the first error."""
    metrics, registry = make()
    metrics.track_app("acc", "app")
    labels = {"account_id": "acc", "app_id": "app"}
    name = "realtimekit_exporter_poll_errors_total"
    assert registry.get_sample_value(name, {**labels, "reason": "auth"}) == 0
    metrics.poll_error("acc", "app", "timeout")
    assert registry.get_sample_value(name, {**labels, "reason": "timeout"}) == 1


def test_requests_cycles_and_build_info() -> None:
    """Requests count by endpoint and code; durations land in histograms; no _created series."""
    metrics, registry = make()
    metrics.request("livestreams", "200", 0.2)
    metrics.request("livestreams", "timeout", 10.0)
    metrics.cycle(1.5)
    get = registry.get_sample_value
    name = "realtimekit_exporter_api_requests_total"
    assert get(name, {**DEFAULT, "api_endpoint": "livestreams", "code": "200"}) == 1
    assert get(name, {**DEFAULT, "api_endpoint": "livestreams", "code": "timeout"}) == 1
    duration = "realtimekit_exporter_api_request_duration_seconds_count"
    assert get(duration, {"api_endpoint": "livestreams"}) == 2
    assert get("realtimekit_exporter_poll_duration_seconds_sum", DEFAULT) == 1.5
    info = {"version": __version__, "python_version": platform.python_version()}
    assert get("realtimekit_exporter_build_info", info) == 1
    assert b"_created" not in generate_latest(registry)


def test_rate_limited_requests_start_at_zero_per_endpoint() -> None:
    """code="429" exists at 0 for every API endpoint from the start, so increase() sees the
    first 429; other codes appear when they happen."""
    metrics, registry = make()
    name = "realtimekit_exporter_api_requests_total"
    ours = {"credentials": "agency-b", "api_endpoint": "livestreams"}
    assert registry.get_sample_value(name, {**ours, "code": "429"}) is None
    metrics.credentials("agency-b")
    assert registry.get_sample_value(name, {**ours, "code": "429"}) == 0
    assert registry.get_sample_value(name, {**ours, "code": "200"}) is None


def test_each_credentials_count_apart_and_leave_whole() -> None:
    """Two credentials' requests, budgets, plans and rate limits are series of their own;
    forgetting one removes all of its series and none of the other's."""
    metrics, registry = make()
    a, b = metrics.credentials("a"), metrics.credentials("b")
    a.request("livestreams", "200", 0.1)
    b.request("livestreams", "429", 0.1)
    a.watch_budget(lambda: 7, lambda: (100, 300.0))
    b.watch_budget(lambda: 9, lambda: (50, 60.0))
    a.rate_limit_remaining(3)
    b.rate_limit_remaining(4)
    b.plan(counter_period=30.0, listing_period=60.0, lanes=True)
    b.cycle(2.0, waited_for_budget=True)
    get = registry.get_sample_value
    requests = "realtimekit_exporter_api_requests_total"
    assert get(requests, {"credentials": "a", "api_endpoint": "livestreams", "code": "200"}) == 1
    assert get(requests, {"credentials": "b", "api_endpoint": "livestreams", "code": "429"}) == 1
    assert get(requests, {"credentials": "a", "api_endpoint": "livestreams", "code": "429"}) == 0
    assert get("realtimekit_exporter_request_budget_available", {"credentials": "a"}) == 7
    assert get("realtimekit_exporter_request_budget_requests", {"credentials": "b"}) == 50
    assert get("realtimekit_exporter_rate_limit_remaining", {"credentials": "b"}) == 4
    assert get("realtimekit_exporter_poll_lanes", {"credentials": "b"}) == 1
    assert get("realtimekit_exporter_poll_budget_exhausted_total", {"credentials": "b"}) == 1
    assert get("realtimekit_exporter_poll_budget_exhausted_total", {"credentials": "a"}) == 0
    metrics.forget_credentials("b")
    text = generate_latest(registry).decode()
    assert 'credentials="b"' not in text
    assert get("realtimekit_exporter_request_budget_available", {"credentials": "a"}) == 7
    assert get("realtimekit_exporter_rate_limit_remaining", {"credentials": "a"}) == 3


def test_http_connections_and_refusals_are_counted() -> None:
    """Open connections are a gauge; connections the server closes itself count by reason,
    every reason present at 0 from the start; auth overloads count."""
    registry = CollectorRegistry()
    metrics = ExporterMetrics(
        registry=registry, endpoints=(), reasons=(), close_reasons=("evicted", "refused")
    )
    get = registry.get_sample_value
    closed = "realtimekit_exporter_http_connections_closed_total"
    assert get(closed, {"reason": "refused"}) == 0
    metrics.connections_open(3)
    metrics.connection_closed("evicted")
    metrics.auth_overloaded()
    assert get("realtimekit_exporter_http_connections") == 3
    assert get(closed, {"reason": "evicted"}) == 1
    assert get("realtimekit_exporter_http_auth_overloaded_total") == 1


def test_every_metric_of_the_exporter_is_documented() -> None:
    """Each realtimekit_ family the exporter registers has a row in docs/metrics.md."""
    doc = (REPO / "docs" / "metrics.md").read_text()
    _, registry = make()
    names = {metric.name for metric in registry.collect()}
    names.discard("realtimekit_exporter_rate_limit_remaining")  # only once a header is seen
    assert "realtimekit_exporter_rate_limit_remaining" in doc
    for name in names:
        exposed = name + "_total" if f"`{name}_total`" in doc else name
        assert f"`{exposed}`" in doc, name
