"""The warnings a configuration gets before its first poll (exporter.apitoken), at
start-up and from --config.check: what can be known then, the figure the planner will
spend, and what to change."""

from __future__ import annotations

import re
from typing import Any

import pytest

from exporter.apitoken import budget_warnings, config_warnings
from exporter.config import Config, loads
from exporter.config import Shard as ShardOf


def config(
    *,
    streams: int = 0,
    expect_live: int = 0,
    interval: str = "30s",
    rate: str = "1000/5m",
    apps: int = 1,
    shards: int = 1,
    credentials: str = "",
    more_apps: str = "",
) -> Config:
    """``apps`` apps with ``streams`` configured livestreams each, the first
    ``expect_live`` of them expected live (with none, the apps discover); then the
    ``more_apps`` lines, read with the ``credentials`` section given."""
    listed = "".join(
        f"      - {{id: s{i}{', expect_live: true' if i < expect_live else ''}}}\n"
        for i in range(streams)
    )
    text = (
        f"api: {{token: t0123456789, rate_limit: {rate}}}\npoll: {{interval: {interval}}}\n"
        f"limits: {{max_livestreams: 100000}}\n{credentials}apps:\n"
    )
    for a in range(apps):
        text += f"  - account_id: acc\n    app_id: app-{a}\n"
        text += f"    livestreams:\n{listed}" if streams else "    discover: true\n"
    return loads(text + more_apps, shard=ShardOf(0, shards))


def test_configured_streams_not_known_to_be_live_are_not_counted() -> None:
    """500 configured streams at 15 s: start-up no longer announces 10,020 requests per
    5 minutes as if every one were live; the first cycle's real plan says what it needs."""
    assert budget_warnings(config(streams=500, interval="15s")) == []


def test_streams_expected_live_are_counted_with_the_figure_the_planner_spends() -> None:
    """100 of them expected live: one session each and the listing, every cycle (101
    requests, 2020 per 5 minutes), and how to make it fit."""
    [warning] = budget_warnings(config(streams=500, expect_live=100, interval="15s"))
    assert warning.startswith(
        "100 configured livestreams are expected live (expect_live: true): reading their "
        "sessions every cycle needs about 101 requests a cycle with the listings, 2020 per "
        "5m at a poll.interval of 15s, but api.rate_limit 1000/5m allows 1000; "
    )
    # 2020 per 5 minutes is more than the API lets one token have: no rate_limit offered.
    assert warning.endswith(
        "To read them every cycle, raise poll.interval to at least 31s, or read some apps "
        "with another token (credentials; docs/scaling.md)"
    )


def test_listing_the_apps_alone_over_the_budget_says_the_interval_that_fits() -> None:
    """Every app is listed each cycle (one request at least): 20 apps every second cannot
    keep to 1000 per 5 minutes."""
    [warning] = budget_warnings(config(apps=20, interval="1s"))
    assert warning == (
        "listing 20 apps every cycle needs at least 20 requests a cycle, 6000 per 5m at a "
        "poll.interval of 1s, but api.rate_limit 1000/5m allows 1000: every cycle will wait "
        "for the budget and take longer than poll.interval; raise poll.interval to at "
        "least 7s, or read some apps with another token (credentials; docs/scaling.md)"
    )


def test_a_rate_limit_is_offered_when_the_api_allows_it() -> None:
    """When a larger budget within the API's limit would do, it is offered beside the
    interval."""
    [warning] = budget_warnings(config(interval="1s", rate="100/5m"))
    assert warning.endswith("raise poll.interval to at least 4s or api.rate_limit to 304/5m")


@pytest.mark.parametrize(
    ("rate", "lower"),
    [("2000/5m", "1200/5m"), ("1300/10m", "1200/10m"), ("500/2m", "400/2m")],
    ids=["over", "a longer window", "a shorter window bursts"],
)
def test_a_budget_above_the_apis_limit_says_how_low_to_go(rate: str, lower: str) -> None:
    """A budget that could let more through in the API's 5 minutes than it allows is
    named, with the most its window may hold."""
    [warning] = budget_warnings(config(rate=rate))
    assert warning.startswith(f"api.rate_limit {rate} is above the API's own limit of 1200 ")
    assert f"lower it to {lower} or less" in warning


def test_each_shard_is_judged_on_its_share() -> None:
    """With shards, each has its share of the budget and the streams it owns."""
    [warning] = budget_warnings(config(apps=4, interval="1s", rate="1200/5m", shards=2))
    assert "but api.rate_limit 1200/5m allows 600 to each of its 2 shards" in warning
    assert "raise poll.interval to at least 3s," in warning


@pytest.mark.parametrize(
    "kwargs",
    [
        {"streams": 500, "expect_live": 100, "interval": "15s"},
        {"apps": 20, "interval": "1s"},
        {"interval": "1s", "rate": "100/5m"},
        {"apps": 200, "interval": "1s"},
        {"apps": 4, "interval": "1s", "rate": "1200/5m", "shards": 2},
    ],
    ids=["expected live", "apps", "small budget", "many apps", "shards"],
)
def test_the_change_offered_is_enough(kwargs: dict[str, Any]) -> None:
    """Raising poll.interval (or rate_limit) as a warning says ends that warning."""
    [warning] = budget_warnings(config(**kwargs))
    interval = re.search(r"raise poll.interval to at least (\w+)", warning)
    assert interval is not None
    assert budget_warnings(config(**{**kwargs, "interval": interval[1]})) == []
    if rate := re.search(r"api.rate_limit to (\S+)", warning):
        assert budget_warnings(config(**{**kwargs, "rate": rate[1]})) == []


def test_each_credentials_warning_names_its_own_rate_limit() -> None:
    """config_warnings (start-up and --config.check) judges each credentials on its own
    budget and apps, naming its own rate_limit key, and names credentials no app uses."""
    cfg = config(
        interval="1s",
        credentials="credentials:\n"
        "  agency-b: {token: b0123456789, rate_limit: 60/5m}\n"
        "  spare: {token: c0123456789}\n",
        more_apps="  - {account_id: acc, app_id: b-app, discover: true, credentials: agency-b}\n",
    )
    warnings = config_warnings(cfg)
    assert len(warnings) == 2
    assert warnings[0].startswith("listing the app every cycle needs at least 1 request")
    assert "but credentials.agency-b.rate_limit 60/5m allows 60" in warnings[0]
    assert warnings[0].endswith("or credentials.agency-b.rate_limit to 304/5m")
    assert warnings[1] == (
        "credentials spare are not used by any app (apps choose them with credentials: spare)"
    )
