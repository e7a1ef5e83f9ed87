"""The exporter's own metrics: API requests, poll cycles, errors, rate limit, build.

These change between polls, so they live apart from the snapshot collector; each is
registered in the registry the caller passes in (never the global one in tests).
"""

from __future__ import annotations

import contextlib
import platform
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from exporter import __version__
from exporter.config import DEFAULT_CREDENTIALS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

# Counters here carry no ``*_created`` series: they double the exposition for no use.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ExporterMetrics:
    """Counters and histograms the client and poller update as they work."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        endpoints: Iterable[str],
        reasons: Iterable[str],
        close_reasons: Iterable[str] = (),
    ) -> None:
        """``reasons``: why a poll fails; ``close_reasons``: why the HTTP server closes a
        connection itself. Their series exist from the start, at zero."""
        self._reasons = tuple(reasons)
        self.api_requests = Counter(
            "realtimekit_exporter_api_requests",
            "Requests sent to the RealtimeKit API, by endpoint and HTTP status "
            "(or timeout/connection_error), and the credentials they were sent with.",
            ["credentials", "api_endpoint", "code"],
            registry=registry,
        )
        self.api_duration = Histogram(
            "realtimekit_exporter_api_request_duration_seconds",
            "Duration of requests to the RealtimeKit API.",
            ["api_endpoint"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self._endpoints = tuple(endpoints)
        for endpoint in self._endpoints:
            self.api_duration.labels(endpoint)
        self.poll_duration = Histogram(
            "realtimekit_exporter_poll_duration_seconds",
            "Duration of whole poll cycles over every app read with the credentials.",
            ["credentials"],
            buckets=_CYCLE_BUCKETS,
            registry=registry,
        )
        self.budget_exhausted = Counter(
            "realtimekit_exporter_poll_budget_exhausted",
            "Poll cycles in which requests had to wait for the request budget "
            "(api.rate_limit): the cycle then runs longer than poll.interval instead of "
            "going over the limit.",
            ["credentials"],
            registry=registry,
        )
        self.budget_available = Gauge(
            "realtimekit_exporter_request_budget_available",
            "Requests the exporter's request budget (api.rate_limit, divided among shards) "
            "would grant right now; 0 while the API has paused the token.",
            ["credentials"],
            registry=registry,
        )
        self.budget_requests = Gauge(
            "realtimekit_exporter_request_budget_requests",
            "Requests per realtimekit_exporter_request_budget_window_seconds the exporter "
            "keeps to: api.rate_limit or the API's Ratelimit-Policy, whichever is less, "
            "divided among shards.",
            ["credentials"],
            registry=registry,
        )
        self.budget_window = Gauge(
            "realtimekit_exporter_request_budget_window_seconds",
            "The window of realtimekit_exporter_request_budget_requests.",
            ["credentials"],
            registry=registry,
        )
        self.policy_requests = Gauge(
            "realtimekit_exporter_rate_limit_policy_requests",
            "Requests per window the API states for the token (Ratelimit-Policy q); 0 "
            "until a response carried the header.",
            ["credentials"],
            registry=registry,
        )
        self.policy_window = Gauge(
            "realtimekit_exporter_rate_limit_policy_window_seconds",
            "The window the API states for the token (Ratelimit-Policy w); 0 until known.",
            ["credentials"],
            registry=registry,
        )
        self.counter_period = Gauge(
            "realtimekit_exporter_session_refresh_period_seconds",
            "Planned seconds between two refreshes of one live stream's session counters "
            "(poll.interval while the budget refreshes them all every cycle; +Inf if it "
            "has no room for any).",
            ["credentials"],
            registry=registry,
        )
        self.listing_period = Gauge(
            "realtimekit_exporter_full_listing_period_seconds",
            "Planned seconds between two full listings (names, new and deleted streams); "
            "statuses of LIVE streams are read every poll.interval.",
            ["credentials"],
            registry=registry,
        )
        self.lanes = Gauge(
            "realtimekit_exporter_poll_lanes",
            "1 while the budget cannot afford the full listing and every session each "
            "cycle, so the status is read every cycle and counters in turn; else 0.",
            ["credentials"],
            registry=registry,
        )
        self.poll_errors = Counter(
            "realtimekit_exporter_poll_errors",
            "Failed API calls while polling an app, by reason "
            "(auth, rate_limited, timeout, connection, http_error, decode).",
            ["account_id", "app_id", "reason"],
            registry=registry,
        )
        build = Gauge(
            "realtimekit_exporter_build_info",
            "Version of the exporter and of Python; always 1.",
            ["version", "python_version"],
            registry=registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self.reload_ok = Gauge(
            "realtimekit_exporter_config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or was rejected (0; the "
            "configuration in force before it stays).",
            registry=registry,
        )
        self.reload_time = Gauge(
            "realtimekit_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (at start or by a reload), "
            "as Unix time.",
            registry=registry,
        )
        self.http_connections = Gauge(
            "realtimekit_exporter_http_connections",
            "Connections open to the exporter's HTTP server (scrapes, probes, browsers).",
            registry=registry,
        )
        self.http_closed = Counter(
            "realtimekit_exporter_http_connections_closed",
            "Connections the exporter closed itself, by reason: header_timeout (no "
            "complete request in time), write_timeout (the client stopped reading), "
            "evicted (room for a new one at the connection limit), refused (at the limit "
            "with every connection in a request).",
            ["reason"],
            registry=registry,
        )
        for reason in close_reasons:
            self.http_closed.labels(reason)
        self.auth_rejected = Counter(
            "realtimekit_exporter_http_auth_overloaded",
            "Requests answered 503 at once because the queue of password checks was full.",
            registry=registry,
        )
        self._remaining: dict[str, int] = {}
        self._views: dict[str, CredentialMetrics] = {}
        self._registry = registry
        self.webhooks: WebhookMetrics | None = None
        registry.register(_RateLimitCollector(self))

    def enable_webhooks(
        self,
        *,
        events: Iterable[str],
        unverified: Iterable[tuple[str, str]],
        outcomes: Iterable[str],
        results: Iterable[str],
    ) -> WebhookMetrics:
        """Create the webhook receiver's families (only when it is configured): the
        series of ``events`` x ``outcomes`` and the ``unverified`` (event, outcome)
        pairs start at zero."""
        if self.webhooks is None:
            self.webhooks = WebhookMetrics(self._registry)
            for event in events:
                for outcome in outcomes:
                    self.webhooks.deliveries.labels(event, outcome)
            for event, outcome in unverified:
                self.webhooks.deliveries.labels(event, outcome)
            for result in results:
                self.webhooks.refreshes.labels(result)
            for ok in ("ok", "failed"):
                self.webhooks.key_fetches.labels(ok)
        return self.webhooks

    def webhook_delivery(self, event: str, outcome: str) -> None:
        if self.webhooks is not None:
            self.webhooks.deliveries.labels(event, outcome).inc()

    def webhook_verified(self, at: float) -> None:
        if self.webhooks is not None:
            self.webhooks.last_delivery.set(at)

    def webhook_refresh(self, result: str) -> None:
        if self.webhooks is not None:
            self.webhooks.refreshes.labels(result).inc()

    def webhook_unannounced(self, count: int) -> None:
        if self.webhooks is not None:
            self.webhooks.unannounced.inc(count)

    def webhook_key_fetch(self, *, ok: bool, loaded: bool) -> None:
        if self.webhooks is not None:
            self.webhooks.key_fetches.labels("ok" if ok else "failed").inc()
            self.webhooks.key_loaded.set(1 if loaded else 0)

    def connections_open(self, count: int) -> None:
        self.http_connections.set(count)

    def connection_closed(self, reason: str) -> None:
        self.http_closed.labels(reason).inc()

    def auth_overloaded(self) -> None:
        self.auth_rejected.inc()

    def config_loaded(self, *, ok: bool, at: float) -> None:
        """A configuration was loaded (``ok``, at Unix time ``at``) or rejected."""
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(at)

    def poll_error(self, account_id: str, app_id: str, reason: str) -> None:
        self.poll_errors.labels(account_id, app_id, reason).inc()

    def track_app(self, account_id: str, app_id: str) -> None:
        """Create the app's error series at zero so ``rate()`` sees the first error."""
        for reason in self._reasons:
            self.poll_errors.labels(account_id, app_id, reason)

    def untrack_app(self, account_id: str, app_id: str) -> None:
        """Drop the error series of an app no longer polled (a reload removed it)."""
        for reason in self._reasons:
            with contextlib.suppress(KeyError):
                self.poll_errors.remove(account_id, app_id, reason)

    def credentials(self, name: str) -> CredentialMetrics:
        """The metrics of the credentials ``name`` (their ``credentials`` label), which
        their client and poller report to; the first call creates their series."""
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = CredentialMetrics(self, name)
            for endpoint in self._endpoints:
                # Present from the start, so that increase() sees the first 429 (an alert
                # on rate limiting needs no special case for a series that is new).
                self.api_requests.labels(name, endpoint, "429")
            self.budget_exhausted.labels(name)
            self.poll_duration.labels(name)
        return view

    def forget_credentials(self, name: str) -> None:
        """Drop every series of the credentials ``name`` (a reload removed them); what
        their client and poller still report while they wind down is not counted."""
        view = self._views.pop(name, None)
        if view is not None:
            view.retired = True
        self._remaining.pop(name, None)
        for family in (
            self.api_requests,
            self.poll_duration,
            self.budget_exhausted,
            self.budget_available,
            self.budget_requests,
            self.budget_window,
            self.policy_requests,
            self.policy_window,
            self.counter_period,
            self.listing_period,
            self.lanes,
        ):
            _remove_where(family, 0, name)

    # What a client or poller given the metrics themselves reports: the default
    # credentials' (a process with one token, and the tests).
    def request(self, endpoint: str, code: str, seconds: float) -> None:
        self.credentials(DEFAULT_CREDENTIALS).request(endpoint, code, seconds)

    def rate_limit_remaining(self, remaining: int) -> None:
        self.credentials(DEFAULT_CREDENTIALS).rate_limit_remaining(remaining)

    def rate_limit_policy(self, requests: int, window: float) -> None:
        self.credentials(DEFAULT_CREDENTIALS).rate_limit_policy(requests, window)

    def plan(self, *, counter_period: float, listing_period: float, lanes: bool) -> None:
        self.credentials(DEFAULT_CREDENTIALS).plan(
            counter_period=counter_period, listing_period=listing_period, lanes=lanes
        )

    def cycle(self, seconds: float, *, waited_for_budget: bool = False) -> None:
        self.credentials(DEFAULT_CREDENTIALS).cycle(seconds, waited_for_budget=waited_for_budget)

    def watch_budget(
        self, available: Callable[[], int], in_force: Callable[[], tuple[int, float]]
    ) -> None:
        self.credentials(DEFAULT_CREDENTIALS).watch_budget(available, in_force)

    @property
    def remaining(self) -> Mapping[str, int]:
        """The last ``Ratelimit`` remaining seen, by credentials."""
        return self._remaining


class CredentialMetrics:
    """What one credentials' client and poller report: the families of
    :class:`ExporterMetrics` that carry a ``credentials`` label, at its name."""

    def __init__(self, metrics: ExporterMetrics, name: str) -> None:
        self._metrics = metrics
        self.name = name
        self.retired = False  # forgotten: reports change nothing (a series would come back)

    def request(self, endpoint: str, code: str, seconds: float) -> None:
        if self.retired:
            return
        self._metrics.api_requests.labels(self.name, endpoint, code).inc()
        self._metrics.api_duration.labels(endpoint).observe(max(0.0, seconds))

    def rate_limit_remaining(self, remaining: int) -> None:
        if not self.retired:
            self._metrics._remaining[self.name] = remaining

    def rate_limit_policy(self, requests: int, window: float) -> None:
        if self.retired:
            return
        self._metrics.policy_requests.labels(self.name).set(requests)
        self._metrics.policy_window.labels(self.name).set(window)

    def plan(self, *, counter_period: float, listing_period: float, lanes: bool) -> None:
        """The poll plan of the next cycle (exporter.lanes)."""
        if self.retired:
            return
        self._metrics.counter_period.labels(self.name).set(counter_period)
        self._metrics.listing_period.labels(self.name).set(listing_period)
        self._metrics.lanes.labels(self.name).set(1 if lanes else 0)

    def cycle(self, seconds: float, *, waited_for_budget: bool = False) -> None:
        if self.retired:
            return
        self._metrics.poll_duration.labels(self.name).observe(max(0.0, seconds))
        if waited_for_budget:
            self._metrics.budget_exhausted.labels(self.name).inc()

    def watch_budget(
        self, available: Callable[[], int], in_force: Callable[[], tuple[int, float]]
    ) -> None:
        """Export ``available()`` (the requests the budget grants now) and ``in_force()``
        (its requests per window) on every scrape."""
        if self.retired:
            return
        self._metrics.budget_available.labels(self.name).set_function(available)
        self._metrics.budget_requests.labels(self.name).set_function(lambda: in_force()[0])
        self._metrics.budget_window.labels(self.name).set_function(lambda: in_force()[1])

    def poll_error(self, account_id: str, app_id: str, reason: str) -> None:
        if not self.retired:
            self._metrics.poll_error(account_id, app_id, reason)

    def track_app(self, account_id: str, app_id: str) -> None:
        if not self.retired:
            self._metrics.track_app(account_id, app_id)

    def untrack_app(self, account_id: str, app_id: str) -> None:
        self._metrics.untrack_app(account_id, app_id)


def _remove_where(family: Counter | Gauge | Histogram, index: int, value: str) -> None:
    """Remove the children of ``family`` whose label at ``index`` is ``value``."""
    for labels in list(family._metrics):  # no public listing of children upstream
        if labels[index] == value:
            with contextlib.suppress(KeyError):
                family.remove(*labels)


class WebhookMetrics:
    """The webhook receiver's families (:meth:`ExporterMetrics.enable_webhooks`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "realtimekit_exporter_webhook_deliveries",
            'Webhook deliveries received, by event ("unverified" when the body could '
            'not be trusted, "other" for an event name not known) and outcome: '
            "accepted (a status change of a tracked stream, refreshed through the API), "
            "duplicate, bad_signature, too_large, malformed, ignored (another event, or a "
            "stream not tracked here), unavailable (no public key to verify with: 503).",
            ["event", "outcome"],
            registry=registry,
        )
        self.last_delivery = Gauge(
            "realtimekit_exporter_webhook_last_delivery_timestamp_seconds",
            "When the last delivery with a valid signature came, as Unix time; 0 until one.",
            registry=registry,
        )
        self.unannounced = Counter(
            "realtimekit_exporter_webhook_unannounced_changes",
            "Livestreams polling found going live or not live that no verified webhook "
            "announced within two minutes: a broken or missing subscription shows here.",
            registry=registry,
        )
        self.refreshes = Counter(
            "realtimekit_exporter_webhook_refreshes",
            "Targeted API refreshes of one stream that status webhooks set off, by result: "
            "agreed (the API confirmed the change), disagreed (not even after rechecks), "
            "failed (a request failed; polling is the safety net), throttled (refreshes had "
            "spent their share of the budget's window).",
            ["result"],
            registry=registry,
        )
        self.key_fetches = Counter(
            "realtimekit_exporter_webhook_public_key_fetches",
            "Fetches (or reads) of the webhook public key, by result.",
            ["result"],
            registry=registry,
        )
        self.key_loaded = Gauge(
            "realtimekit_exporter_webhook_public_key_loaded",
            "1 while a webhook public key is held to verify deliveries with, else 0.",
            registry=registry,
        )


class _RateLimitCollector:
    """``realtimekit_exporter_rate_limit_remaining``, for each credentials once a
    ``Ratelimit`` header was seen."""

    def __init__(self, metrics: ExporterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        remaining = dict(self._metrics.remaining)
        if not remaining:
            return
        family = GaugeMetricFamily(
            "realtimekit_exporter_rate_limit_remaining",
            "Requests left in the token's current rate-limit window, from the last "
            "Ratelimit response header, by credentials.",
            labels=["credentials"],
        )
        for name, value in sorted(remaining.items()):
            family.add_metric([name], value)
        yield family
