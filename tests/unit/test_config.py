"""Tests for exporter.config: YAML text -> frozen Config, or one ConfigError listing every problem.

Every test parses with ``loads(text, environ=..., base_dir=tmp_path)`` (or ``load(path,
environ=...)``), so the real environment and working directory never matter. Whole-document
cases live in ``tests/testdata/config/``; the exact expected problems live here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from exporter.config import (
    DEFAULT_BASE_URL,
    MAX_CONFIG_FILE_BYTES,
    MAX_TOKEN_FILE_BYTES,
    ApiConfig,
    AppConfig,
    Config,
    ConfigError,
    Credentials,
    LivestreamConfig,
    PollConfig,
    RateLimit,
    Secret,
    Shard,
    UnreadableFile,
    WebhooksConfig,
    YamlError,
    load,
    loads,
    parse_yaml,
    read_file,
)
from exporter.config.yamldoc import MAX_YAML_DEPTH, MAX_YAML_INT_LENGTH
from tests import REPO, TESTDATA
from tests.files import dev_zero, directory, fifo, sized, unix_socket

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

CONFIGS = TESTDATA / "config"
EXAMPLE = REPO / "config.example.yaml"

ENV_TOKEN = "env-token"
ENVIRON = {"CLOUDFLARE_API_TOKEN": ENV_TOKEN}
SECRET = "s3cr3t-TOKEN-value"
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
NO_TOKEN = "api: no API token: set api.token, api.token_file or CLOUDFLARE_API_TOKEN"
DURATION_FORM = "write a number and a unit (ms, s, m, h, d, w or y), such as 30s, 5m or 1d"
BAD_DURATION = f"'soon' is not a duration above zero: {DURATION_FORM}"


def bad_duration(shown: str) -> str:
    """The one problem of a duration written as ``shown``."""
    return f"{shown} is not a duration above zero: {DURATION_FORM}"


BAD_ID = "must be non-empty and use only letters, digits, '-', '_' and '.'"
BAD_RATE = "must look like 1000/5m (requests per window)"
ONE_TOKEN = "must be one token with no spaces or line breaks"
OMIT: Any = object()  # as a value in render(app=...): leave the key out


def render(
    *,
    api: Mapping[Any, Any] | None = None,
    poll: Mapping[str, Any] | None = None,
    app: Mapping[str, Any] | None = None,
) -> str:
    """A YAML document: one valid app (``app`` keys merged over it), plus any api/poll keys.

    ``api`` may have keys that are not strings: the loader must reject those too.
    """
    one_app: dict[str, Any] = {
        "account_id": ACCOUNT,
        "app_id": "app-main",
        "livestreams": [{"id": "stream-1"}],
    }
    one_app.update(app or {})
    one_app = {k: v for k, v in one_app.items() if v is not OMIT}
    document: dict[str, Any] = {"apps": [one_app]}
    if api is not None:
        document["api"] = dict(api)
    if poll is not None:
        document["poll"] = dict(poll)
    return yaml.safe_dump(document, sort_keys=False)


def parse(text: str, base_dir: Path, environ: Mapping[str, str] = ENVIRON) -> Config:
    return loads(text, environ=environ, base_dir=base_dir)


def problems_of(text: str, base_dir: Path, environ: Mapping[str, str] = ENVIRON) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, environ=environ, base_dir=base_dir)
    return caught.value.problems


# --- whole documents -------------------------------------------------------------------------


def test_full_config_parses_into_expected_dataclasses(tmp_path: Path) -> None:
    """Every key of a full document lands in the matching field, durations in seconds."""
    text = (CONFIGS / "valid_full.yml").read_text()
    config = parse(text, tmp_path, environ={"CLOUDFLARE_API_TOKEN": SECRET})
    assert config == Config(
        api=ApiConfig(
            token=Secret(SECRET),
            base_url="https://cf-proxy.internal:8443/client/v4",
            token_file=None,
            timeout=2.5,
            max_concurrency=4,
            rate_limit=RateLimit(1000, 300.0),
        ),
        poll=PollConfig(interval=15.0, max_staleness=600.0, analytics_interval=300.0),
        apps=(
            AppConfig(
                account_id=ACCOUNT,
                app_id="app-main",
                discover=False,
                livestreams=(
                    LivestreamConfig("9fb22eea-3392-42ad-b884-1129a4f517d2", expect_live=True),
                    LivestreamConfig("0c3bd1f5-9f0e-4a1c-bb0e-3a0b5f1f2d11", expect_live=False),
                    LivestreamConfig("5d6e7f80-1a2b-4c3d-8e9f-a0b1c2d3e4f5", expect_live=None),
                ),
            ),
            AppConfig(account_id=ACCOUNT, app_id="app-events", discover=True, livestreams=()),
        ),
        source="config",
    )
    assert config.api.token.reveal() == SECRET
    assert config.apps[0].key == (ACCOUNT, "app-main")
    assert config.apps[0].expectations() == {
        "9fb22eea-3392-42ad-b884-1129a4f517d2": True,
        "0c3bd1f5-9f0e-4a1c-bb0e-3a0b5f1f2d11": False,
        "5d6e7f80-1a2b-4c3d-8e9f-a0b1c2d3e4f5": None,
    }


def test_omitted_keys_take_their_defaults(tmp_path: Path) -> None:
    """A document with only the required keys gets every documented default."""
    config = parse((CONFIGS / "valid_minimal.yml").read_text(), tmp_path)
    assert config.api == ApiConfig(
        token=Secret(ENV_TOKEN),
        base_url="https://api.cloudflare.com/client/v4",
        token_file=None,
        timeout=10.0,
        max_concurrency=8,
        rate_limit=RateLimit(1000, 300.0),
    )
    assert config.poll == PollConfig(interval=30.0, max_staleness=300.0, analytics_interval=300.0)
    assert config.apps == (
        AppConfig(
            account_id=ACCOUNT,
            app_id="app-main",
            discover=False,
            livestreams=(LivestreamConfig("9fb22eea-3392-42ad-b884-1129a4f517d2", None),),
        ),
    )


@pytest.mark.parametrize(
    ("target", "attribute"),
    [
        ("config", "poll"),
        ("api", "timeout"),
        ("poll", "interval"),
        ("app", "discover"),
        ("livestream", "expect_live"),
        ("rate_limit", "requests"),
    ],
    ids=["Config", "ApiConfig", "PollConfig", "AppConfig", "LivestreamConfig", "RateLimit"],
)
def test_parsed_config_is_frozen(tmp_path: Path, target: str, attribute: str) -> None:
    """No part of a parsed Config can be reassigned after validation."""
    config = parse((CONFIGS / "valid_full.yml").read_text(), tmp_path)
    objects = {
        "config": config,
        "api": config.api,
        "poll": config.poll,
        "app": config.apps[0],
        "livestream": config.apps[0].livestreams[0],
        "rate_limit": config.api.rate_limit,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(objects[target], attribute, None)
    assert isinstance(config.apps, tuple)
    assert isinstance(config.apps[0].livestreams, tuple)


FILE_CASES: dict[str, tuple[str, dict[str, str], list[str]]] = {
    "many mistakes at once": (
        "invalid_many.yml",
        ENVIRON,
        [
            "listen: unknown key (allowed: api, apps, credentials, limits, poll, webhooks)",
            "api.retries: unknown key (allowed: base_url, max_concurrency, rate_limit, timeout, "
            "token, token_file)",
            f"api.timeout: {BAD_DURATION}",
            "poll.max_staleness: 30s is shorter than poll.interval (1m)",
            f"apps[0].app_id: {BAD_ID}",
            "apps[1].livestreams[1].id: duplicate livestream id in this app",
            "apps[2]: lists no livestreams and discover is false: nothing to poll",
            "apps[3]: duplicate of an earlier app (same account_id and app_id)",
        ],
    ),
    "wrong types and shapes": (
        "invalid_types.yml",
        ENVIRON,
        [
            "api.base_url: must be an http:// or https:// URL",
            "api.max_concurrency: must be a whole number from 1 to 1000",
            f"api.rate_limit: {BAD_RATE}",
            "poll: must be a mapping",
            "apps[0].account_id: must be a string (got int); quote it",
            "apps[0].discover: must be true or false",
            "apps[1].app_id: must be at most 32 characters",
            "apps[1].livestreams[0]: must be a mapping with an id",
            "apps[1].livestreams[1].name: unknown key (allowed: expect_live, id)",
            "apps[1].livestreams[1].expect_live: must be true or false",
            "apps[2]: must be a mapping",
        ],
    ),
    "YAML syntax error": (
        "invalid_yaml_syntax.yml",
        ENVIRON,
        ["not valid YAML at line 3, column 15"],
    ),
    "duplicate key": (
        "invalid_duplicate_key.yml",
        ENVIRON,
        ["duplicate key timeout at line 3, column 3"],
    ),
    "top level is a list": (
        "invalid_top_level_list.yml",
        ENVIRON,
        ["(top level): must be a mapping"],
    ),
    "empty document": ("empty.yml", {}, [NO_TOKEN, "apps: at least one app is required"]),
}


@pytest.mark.parametrize(
    ("filename", "environ", "expected"), FILE_CASES.values(), ids=list(FILE_CASES)
)
def test_invalid_documents_report_every_problem_at_once(
    tmp_path: Path, filename: str, environ: dict[str, str], expected: list[str]
) -> None:
    """A bad document raises one ConfigError whose problems are exactly the expected list."""
    text = (CONFIGS / filename).read_text()
    with pytest.raises(ConfigError) as caught:
        loads(text, environ=environ, source=filename, base_dir=tmp_path)
    assert caught.value.problems == expected
    assert caught.value.source == filename
    noun = "problem" if len(expected) == 1 else "problems"
    assert str(caught.value) == f"{filename}: {len(expected)} {noun}: " + "; ".join(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [NO_TOKEN, "apps: at least one app is required"]),
        ("# only a comment\n", [NO_TOKEN, "apps: at least one app is required"]),
        ("---\n", [NO_TOKEN, "apps: at least one app is required"]),
        ("- a\n- b\n", ["(top level): must be a mapping"]),
        ("just a string\n", ["(top level): must be a mapping"]),
        ("42\n", ["(top level): must be a mapping"]),
        ("apps: [\n", ["not valid YAML at line 2, column 1"]),
        ("api: {timeout: 5s}\n---\napps: []\n", ["not valid YAML at line 2, column 1"]),
    ],
    ids=[
        "empty",
        "comment only",
        "bare document marker",
        "list",
        "string",
        "number",
        "unclosed flow sequence",
        "two documents",
    ],
)
def test_degenerate_documents(tmp_path: Path, text: str, expected: list[str]) -> None:
    """Empty, non-mapping and unparsable documents give these exact problems."""
    assert problems_of(text, tmp_path, environ={}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apps: []\nsurprise: 1\n",
            [
                "surprise: unknown key (allowed: api, apps, credentials, limits, poll, webhooks)",
                "apps: must be a non-empty list",
            ],
        ),
        (
            render(api={"tokn": "x"}),
            [
                "api.tokn: unknown key (allowed: base_url, max_concurrency, rate_limit, timeout, "
                "token, token_file)"
            ],
        ),
        (
            render(poll={"every": "30s"}),
            [
                "poll.every: unknown key (allowed: analytics_interval, full_listing_interval, "
                "interval, max_staleness)"
            ],
        ),
        (
            render(app={"name": "main"}),
            [
                "apps[0].name: unknown key (allowed: account_id, app_id, credentials, discover, "
                "livestreams)"
            ],
        ),
        (
            render(app={"livestreams": [{"id": "a", "expect": True}]}),
            ["apps[0].livestreams[0].expect: unknown key (allowed: expect_live, id)"],
        ),
        (
            render(app={"livestreams": [{"id": "a", 7: True}]}),
            [
                "apps[0].livestreams[0].<unknown key of 1 characters>: unknown key "
                "(allowed: expect_live, id)"
            ],
        ),
    ],
    ids=["top level", "api", "poll", "app", "livestream", "non-string key"],
)
def test_unknown_keys_are_errors_at_every_level(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    """A key outside the schema is reported with its path and the allowed keys."""
    assert problems_of(text, tmp_path) == expected


API_KEYS = "allowed: base_url, max_concurrency, rate_limit, timeout, token, token_file"
TOKEN_LIKE_KEY = "Zx9aQ3vL7mK2pR8sT4wY6uB1nC5dE0fG-hJ_kM2q"  # 40 characters, like an API token


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("tokn", "tokn"),
        ("_private.x-y", "_private.x-y"),
        ("k" * 24, "k" * 24),
        ("k" * 25, "<unknown key of 25 characters>"),
        (TOKEN_LIKE_KEY, "<unknown key of 40 characters>"),
        ("to\nken", "<unknown key of 6 characters>"),
        ("tok en", "<unknown key of 6 characters>"),
        ("9lives", "<unknown key of 6 characters>"),
        ("t\u00f6ken", "<unknown key of 5 characters>"),
        (12345, "<unknown key of 5 characters>"),
    ],
    ids=[
        "plain",
        "underscore-dot-dash",
        "24-characters",
        "25-characters",
        "token-like",
        "newline",
        "space",
        "leading-digit",
        "non-ascii",
        "number",
    ],
)
def test_unknown_key_is_named_only_when_short_and_plain(
    tmp_path: Path, key: object, shown: str
) -> None:
    """An unknown key is shown only if it matches [A-Za-z_][A-Za-z0-9_.-]{0,23}, else described."""
    assert problems_of(render(api={key: "x"}), tmp_path) == [
        f"api.{shown}: unknown key ({API_KEYS})"
    ]


@pytest.mark.parametrize(
    "key",
    [TOKEN_LIKE_KEY, "leak\nme", "line\rbreak", "bell\x07"],
    ids=["token-like", "newline", "carriage-return", "control-character"],
)
def test_unknown_key_that_may_be_a_secret_or_break_the_line_is_not_echoed(
    tmp_path: Path, key: str
) -> None:
    """A long or control-character key appears in no error text, which stays on one line."""
    with pytest.raises(ConfigError) as caught:
        loads(render(api={key: "x"}), environ=ENVIRON, base_dir=tmp_path)
    err = caught.value
    for text in (str(err), repr(err), *err.problems, *(str(a) for a in err.args)):
        assert key not in text
    assert "\n" not in str(err)
    assert "\r" not in str(err)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "api:\n  timeout: 5s\napi:\n  timeout: 10s\n",
            ["duplicate key api at line 3, column 1"],
        ),
        (
            render(app={"livestreams": [{"id": "a"}]}) + "apps: []\n",
            ["duplicate key apps at line 6, column 1"],
        ),
    ],
    ids=["api twice", "apps twice"],
)
def test_repeated_keys_are_errors_not_silently_overridden(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    """A key given twice in one mapping is a problem instead of the last one winning."""
    assert problems_of(text, tmp_path) == expected


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """A key after a YAML merge (<<) overrides the merged one and is not a duplicate."""
    text = (
        "apps:\n"
        "  - &main\n"
        f"    account_id: '{ACCOUNT}'\n"
        "    app_id: app-main\n"
        "    discover: true\n"
        "  - <<: *main\n"
        "    app_id: app-events\n"
    )
    config = parse(text, tmp_path)
    assert [app.key for app in config.apps] == [(ACCOUNT, "app-main"), (ACCOUNT, "app-events")]
    assert config.apps[1].discover is True


# --- durations -------------------------------------------------------------------------------

GOOD_DURATIONS: dict[str, tuple[object, float]] = {
    "500ms": ("500ms", 0.5),
    "30s": ("30s", 30.0),
    "5m": ("5m", 300.0),
    "1h": ("1h", 3600.0),
    "a day": ("1d", 86400.0),
    "a week": ("1w", 7 * 86400.0),
    "a year is 365 days": ("1y", 365 * 86400.0),
    "units combined, longest first": ("1h30m", 5400.0),
    "combined with a space": ("1d 12h", 129600.0),
    "2.5s": ("2.5s", 2.5),
    "1.5m": ("1.5m", 90.0),
    "space before unit": ("10 s", 10.0),
    "plain int": (15, 15.0),
    "plain float": (0.5, 0.5),
    "quoted plain number": ("15", 15.0),
    "from environment": ("${TIMEOUT}", 7.0),
}


@pytest.mark.parametrize(("value", "seconds"), GOOD_DURATIONS.values(), ids=list(GOOD_DURATIONS))
def test_durations_parse_to_seconds(tmp_path: Path, value: object, seconds: float) -> None:
    """Durations take Prometheus's units (ms, s, m, h, d, w, y), combined longest first,
    and plain numbers of seconds."""
    config = parse(render(api={"timeout": value}), tmp_path, environ={**ENVIRON, "TIMEOUT": "7s"})
    assert config.api.timeout == seconds


BAD_DURATIONS: dict[str, tuple[object, str]] = {
    "zero with unit": ("0s", "'0s'"),
    "zero plain": (0, "0"),
    "zero ms": ("0ms", "'0ms'"),
    "negative": ("-5s", "'-5s'"),
    "negative plain": (-1, "-1"),
    "word": ("abc", "'abc'"),
    "unknown unit": ("5x", "'5x'"),
    "boolean": (True, "true"),
    "null": (None, "an empty value"),
    "list": (["30s"], "a list"),
    "units out of order": ("1m1h", "'1m1h'"),
    "a unit twice": ("1m1m", "'1m1m'"),
    "empty": ("", "''"),
    "NaN": (float("nan"), "nan"),
    "infinity": (float("inf"), "inf"),
    "huge integer": (10**400, "the number written"),
    "huge number with unit": ("9" * 400 + "s", "the value written (401 characters)"),
    "trailing newline": ("30s\nx", "the value written (5 characters)"),
}


@pytest.mark.parametrize(("value", "shown"), BAD_DURATIONS.values(), ids=list(BAD_DURATIONS))
def test_bad_durations_are_reported_with_their_path(
    tmp_path: Path, value: object, shown: str
) -> None:
    """A bad duration gives exactly one problem naming the key and what was written, in
    the same words whether it is not a duration, zero or negative."""
    problems = problems_of(render(api={"timeout": value}), tmp_path)
    assert problems == [f"api.timeout: {bad_duration(shown)}"]


def test_a_long_value_where_a_duration_goes_is_not_quoted(tmp_path: Path) -> None:
    """A token pasted where a duration goes is described, never quoted."""
    problems = problems_of(render(api={"timeout": SECRET + "-" + SECRET}), tmp_path)
    assert problems == [f"api.timeout: {bad_duration('the value written (37 characters)')}"]
    assert SECRET not in problems[0]


@pytest.mark.parametrize(
    ("poll", "expected"),
    [
        ({"interval": "1m", "max_staleness": "1m"}, []),
        (
            {"interval": "1m", "max_staleness": "59s"},
            ["poll.max_staleness: 59s is shorter than poll.interval (1m)"],
        ),
        (
            {"max_staleness": "10s"},
            ["poll.max_staleness: 10s is shorter than the poll interval (30s, the default)"],
        ),
        ({"interval": "10m", "max_staleness": "soon"}, [f"poll.max_staleness: {BAD_DURATION}"]),
        ({"interval": "soon", "max_staleness": "10s"}, [f"poll.interval: {BAD_DURATION}"]),
    ],
    ids=[
        "equal is fine",
        "shorter",
        "shorter than default interval",
        "bad staleness is not also compared",
        "bad interval is not also compared",
    ],
)
def test_max_staleness_must_cover_the_interval(
    tmp_path: Path, poll: dict[str, object], expected: list[str]
) -> None:
    """poll.max_staleness below poll.interval is a problem, judged only on valid values;
    the problem names poll.interval only when it is written."""
    text = render(poll=poll)
    if expected:
        assert problems_of(text, tmp_path) == expected
    else:
        assert parse(text, tmp_path).poll == PollConfig(
            interval=60.0, max_staleness=60.0, analytics_interval=300.0
        )


@pytest.mark.parametrize(
    ("interval", "staleness"),
    [("10s", 300.0), ("2m30s", 300.0), ("10m", 1200.0), ("1d", 172800.0)],
    ids=["short", "at the turn", "long", "a day"],
)
def test_the_default_max_staleness_follows_a_long_interval(
    tmp_path: Path, interval: str, staleness: float
) -> None:
    """poll.interval alone is never a problem: an unwritten poll.max_staleness is 5m, or
    twice the interval when that is longer (one failed poll never drops the values)."""
    config = parse(render(poll={"interval": interval}), tmp_path)
    assert config.poll.max_staleness == staleness


# --- rate limit and concurrency --------------------------------------------------------------

GOOD_RATES: dict[str, tuple[str, RateLimit, str]] = {
    "spec example": ("1000/5m", RateLimit(1000, 300.0), "1000/5m"),
    "per second": ("10/1s", RateLimit(10, 1.0), "10/1s"),
    "plain seconds window": ("1200/300", RateLimit(1200, 300.0), "1200/5m"),
    "spaces": (" 60 / 1m ", RateLimit(60, 60.0), "60/1m"),
    "sub-second window": ("1/500ms", RateLimit(1, 0.5), "1/500ms"),
    "odd window": ("100/90s", RateLimit(100, 90.0), "100/90s"),
    "a day": ("20000/1d", RateLimit(20000, 86400.0), "20000/1d"),
}


@pytest.mark.parametrize(("value", "expected", "shown"), GOOD_RATES.values(), ids=list(GOOD_RATES))
def test_rate_limit_parses(tmp_path: Path, value: str, expected: RateLimit, shown: str) -> None:
    """api.rate_limit REQUESTS/WINDOW becomes a RateLimit and prints back in short form."""
    config = parse(render(api={"rate_limit": value}), tmp_path)
    assert config.api.rate_limit == expected
    assert str(config.api.rate_limit) == shown


BAD_RATES: dict[str, tuple[object, str]] = {
    "no window": ("1000", BAD_RATE),
    "number": (1000, BAD_RATE),
    "word count": ("lots/5m", BAD_RATE),
    "float count": ("1.5/5m", BAD_RATE),
    "empty count": ("/5m", BAD_RATE),
    "null": (None, BAD_RATE),
    "zero count": ("0/5m", "the request count must be at least 1"),
    "negative count": ("-5/5m", "the request count must be at least 1"),
    "zero window": ("1000/0s", f"the window {bad_duration(repr('0s'))}"),
    "bad window unit": ("1000/5x", f"the window {bad_duration(repr('5x'))}"),
    "empty window": ("1000/", f"the window {bad_duration(repr(''))}"),
    "two slashes": ("1000/5m/1", f"the window {bad_duration(repr('5m/1'))}"),
}


@pytest.mark.parametrize(("value", "problem"), BAD_RATES.values(), ids=list(BAD_RATES))
def test_bad_rate_limits_are_reported(tmp_path: Path, value: object, problem: str) -> None:
    """A malformed api.rate_limit gives one problem saying which part is wrong."""
    assert problems_of(render(api={"rate_limit": value}), tmp_path) == [
        f"api.rate_limit: {problem}"
    ]


@pytest.mark.parametrize(
    "value",
    [0, -1, True, "8", 2.5, None],
    ids=["zero", "negative", "bool", "string", "float", "null"],
)
def test_max_concurrency_must_be_a_positive_whole_number(tmp_path: Path, value: object) -> None:
    """api.max_concurrency accepts only integers of at least 1."""
    assert problems_of(render(api={"max_concurrency": value}), tmp_path) == [
        "api.max_concurrency: must be a whole number from 1 to 1000"
    ]


# --- environment expansion -------------------------------------------------------------------

EXPANSIONS: dict[str, tuple[dict[str, Any], dict[str, str], str, object]] = {
    "token": ({"api": {"token": "${CF_TOKEN}"}}, {"CF_TOKEN": "from-env"}, "token", "from-env"),
    "part of base_url": (
        {"api": {"base_url": "https://${HOST}:8443/v4"}},
        {"HOST": "proxy.internal"},
        "base_url",
        "https://proxy.internal:8443/v4",
    ),
    "account_id": (
        {"app": {"account_id": "${ACCOUNT}"}},
        {"ACCOUNT": "acc-1"},
        "account_id",
        "acc-1",
    ),
    "two variables": (
        {"app": {"app_id": "${A}-${B}"}},
        {"A": "app", "B": "main"},
        "app_id",
        "app-main",
    ),
    "livestream id": (
        {"app": {"livestreams": [{"id": "stream-${N}"}]}},
        {"N": "7"},
        "livestream_id",
        "stream-7",
    ),
    "duration": ({"poll": {"interval": "${EVERY}"}}, {"EVERY": "1m"}, "interval", 60.0),
    "rate limit": (
        {"api": {"rate_limit": "${RATE}/5m"}},
        {"RATE": "600"},
        "rate_limit",
        RateLimit(600, 300.0),
    ),
    "$$ escapes a dollar": ({"api": {"token": "pa$$word"}}, {}, "token", "pa$word"),
    "$${VAR} stays literal": (
        {"api": {"token": "x$${CF_TOKEN}"}},
        {"CF_TOKEN": "no"},
        "token",
        "x${CF_TOKEN}",
    ),
    "lone $ kept": ({"api": {"token": "a$b"}}, {}, "token", "a$b"),
    "empty variable is still set": (
        {"app": {"app_id": "app${EMPTY}"}},
        {"EMPTY": ""},
        "app_id",
        "app",
    ),
}


@pytest.mark.parametrize(
    ("sections", "environ", "field_name", "expected"), EXPANSIONS.values(), ids=list(EXPANSIONS)
)
def test_variables_expand_in_any_string(
    tmp_path: Path,
    sections: dict[str, Any],
    environ: dict[str, str],
    field_name: str,
    expected: object,
) -> None:
    """${VAR} takes its value from environ in any string value; $$ is a literal dollar."""
    config = parse(render(**sections), tmp_path, environ={**ENVIRON, **environ})
    values = {
        "token": config.api.token.reveal(),
        "base_url": config.api.base_url,
        "rate_limit": config.api.rate_limit,
        "interval": config.poll.interval,
        "account_id": config.apps[0].account_id,
        "app_id": config.apps[0].app_id,
        "livestream_id": config.apps[0].livestreams[0].id,
    }
    assert values[field_name] == expected


UNSET: dict[str, tuple[dict[str, Any], list[str]]] = {
    "token": ({"api": {"token": "${NOPE}"}}, ["api.token: environment variable NOPE is not set"]),
    "base_url": (
        {"api": {"base_url": "https://${NOPE}/v4"}},
        ["api.base_url: environment variable NOPE is not set"],
    ),
    "token_file": (
        {"api": {"token_file": "${NOPE}/token"}},
        ["api.token_file: environment variable NOPE is not set"],
    ),
    "duration": (
        {"api": {"timeout": "${NOPE}"}},
        ["api.timeout: environment variable NOPE is not set"],
    ),
    "rate limit": (
        {"api": {"rate_limit": "${NOPE}/5m"}},
        ["api.rate_limit: environment variable NOPE is not set"],
    ),
    "account_id": (
        {"app": {"account_id": "${NOPE}"}},
        ["apps[0].account_id: environment variable NOPE is not set"],
    ),
    "livestream id": (
        {"app": {"livestreams": [{"id": "${NOPE}"}]}},
        ["apps[0].livestreams[0].id: environment variable NOPE is not set"],
    ),
    "same variable twice": (
        {"app": {"app_id": "${NOPE}-${NOPE}"}},
        ["apps[0].app_id: environment variable NOPE is not set"],
    ),
    "two variables": (
        {"app": {"app_id": "${NOPE}-${NADA}"}},
        [
            "apps[0].app_id: environment variable NOPE is not set",
            "apps[0].app_id: environment variable NADA is not set",
        ],
    ),
}


@pytest.mark.parametrize(("sections", "expected"), UNSET.values(), ids=list(UNSET))
def test_unset_variable_is_one_problem_naming_it(
    tmp_path: Path, sections: dict[str, Any], expected: list[str]
) -> None:
    """An unset ${VAR} is reported once, by name, with no follow-on problem for the value."""
    assert problems_of(render(**sections), tmp_path) == expected


# --- token resolution ------------------------------------------------------------------------

# (api section, environ, files to create under tmp_path (None: a directory), expected token,
#  expected token_file relative to tmp_path). "{dir}" in a value stands for tmp_path.
TOKENS: dict[
    str, tuple[dict[str, Any], dict[str, str], dict[str, bytes | None], str, str | None]
] = {
    "inline": ({"token": "inline-token"}, {}, {}, "inline-token", None),
    "inline stripped": ({"token": "  inline-token \n"}, {}, {}, "inline-token", None),
    "inline beats environment": ({"token": "inline-token"}, ENVIRON, {}, "inline-token", None),
    "token_file relative to base_dir": (
        {"token_file": "secrets/cf_token"},
        {},
        {"secrets/cf_token": b"file-token\n"},
        "file-token",
        "secrets/cf_token",
    ),
    "token_file absolute": (
        {"token_file": "{dir}/cf_token"},
        {},
        {"cf_token": b"file-token"},
        "file-token",
        "cf_token",
    ),
    "token_file stripped": (
        {"token_file": "cf_token"},
        {},
        {"cf_token": b"\n  file-token \r\n\n"},
        "file-token",
        "cf_token",
    ),
    "token_file beats environment": (
        {"token_file": "cf_token"},
        ENVIRON,
        {"cf_token": b"file-token\n"},
        "file-token",
        "cf_token",
    ),
    "token_file path from environment": (
        {"token_file": "${SECRETS}/cf_token"},
        {"SECRETS": "run"},
        {"run/cf_token": b"file-token\n"},
        "file-token",
        "run/cf_token",
    ),
    "neither: environment fallback": ({}, ENVIRON, {}, ENV_TOKEN, None),
    "environment fallback stripped": (
        {},
        {"CLOUDFLARE_API_TOKEN": " env-token\n"},
        {},
        ENV_TOKEN,
        None,
    ),
    "empty api section: environment fallback": ({}, ENVIRON, {}, ENV_TOKEN, None),
}


def make_files(base: Path, files: Mapping[str, bytes | None]) -> None:
    for name, content in files.items():
        path = base / name
        if content is None:
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)


def with_dir(api: Mapping[str, Any], base: Path) -> dict[str, Any]:
    return {k: v.replace("{dir}", str(base)) if isinstance(v, str) else v for k, v in api.items()}


@pytest.mark.parametrize(
    ("api", "environ", "files", "token", "token_file"), TOKENS.values(), ids=list(TOKENS)
)
def test_token_resolution(
    tmp_path: Path,
    api: dict[str, Any],
    environ: dict[str, str],
    files: dict[str, bytes | None],
    token: str,
    token_file: str | None,
) -> None:
    """The token comes from api.token, else api.token_file, else CLOUDFLARE_API_TOKEN."""
    make_files(tmp_path, files)
    config = parse(render(api=with_dir(api, tmp_path)), tmp_path, environ=environ)
    assert config.api.token.reveal() == token
    assert config.api.token_file == (tmp_path / token_file if token_file else None)


TOKEN_PROBLEMS: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, bytes | None], str]] = {
    "empty file": (
        {"token_file": "cf_token"},
        {},
        {"cf_token": b" \n\n"},
        "api.token_file: {dir}/cf_token is empty",
    ),
    "missing file": (
        {"token_file": "cf_token"},
        ENVIRON,
        {},
        "api.token_file: cannot read {dir}/cf_token: No such file or directory",
    ),
    "directory": (
        {"token_file": "cf_token"},
        {},
        {"cf_token": None},
        "api.token_file: cannot read {dir}/cf_token: it is a directory, not a regular file",
    ),
    "not UTF-8": (
        {"token_file": "cf_token"},
        {},
        {"cf_token": b"\xff\xfe\xfa"},
        "api.token_file: {dir}/cf_token is not UTF-8 text",
    ),
    "two tokens on a line": (
        {"token_file": "cf_token"},
        {},
        {"cf_token": b"tok-a tok-b\n"},
        "api.token_file: {dir}/cf_token must hold one token with no spaces or line breaks",
    ),
    "two lines": (
        {"token_file": "cf_token"},
        {},
        {"cf_token": b"tok-a\ntok-b\n"},
        "api.token_file: {dir}/cf_token must hold one token with no spaces or line breaks",
    ),
    "token_file not a string": (
        {"token_file": 5},
        {},
        {},
        "api.token_file: must be a string (got int); quote it",
    ),
    "both token and token_file": (
        {"token": "inline-token", "token_file": "cf_token"},
        {},
        {"cf_token": b"file-token"},
        "api: set api.token or api.token_file, not both",
    ),
    "nothing at all": ({}, {}, {}, NO_TOKEN),
    "blank environment variable": ({}, {"CLOUDFLARE_API_TOKEN": "  \n"}, {}, NO_TOKEN),
    "environment variable with a space": (
        {},
        {"CLOUDFLARE_API_TOKEN": "tok-a tok-b"},
        {},
        f"api: CLOUDFLARE_API_TOKEN {ONE_TOKEN}",
    ),
    "empty inline token": ({"token": ""}, ENVIRON, {}, "api.token: is empty"),
    "blank inline token": ({"token": "   "}, ENVIRON, {}, "api.token: is empty"),
    "null inline token": ({"token": None}, ENVIRON, {}, "api.token: is empty"),
    "inline token with a space": ({"token": "tok-a tok-b"}, {}, {}, f"api.token: {ONE_TOKEN}"),
    "inline token over two lines": ({"token": "tok-a\ntok-b"}, {}, {}, f"api.token: {ONE_TOKEN}"),
    "inline token not a string": (
        {"token": 12345},
        {},
        {},
        "api.token: must be a string; quote it",
    ),
}


@pytest.mark.parametrize(
    ("api", "environ", "files", "problem"), TOKEN_PROBLEMS.values(), ids=list(TOKEN_PROBLEMS)
)
def test_token_problems(
    tmp_path: Path,
    api: dict[str, Any],
    environ: dict[str, str],
    files: dict[str, bytes | None],
    problem: str,
) -> None:
    """A missing, unreadable, empty, ambiguous or malformed token is exactly one problem."""
    make_files(tmp_path, files)
    text = render(api=with_dir(api, tmp_path))
    assert problems_of(text, tmp_path, environ=environ) == [problem.replace("{dir}", str(tmp_path))]


# --- apps, identifiers and livestreams -------------------------------------------------------

IDENTIFIERS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "account_id missing": ({"account_id": OMIT}, ["apps[0].account_id: is required"]),
    "app_id null": ({"app_id": None}, ["apps[0].app_id: is required"]),
    "app_id unquoted number": (
        {"app_id": 12345},
        ["apps[0].app_id: must be a string (got int); quote it"],
    ),
    "account_id unquoted float": (
        {"account_id": 1.5},
        ["apps[0].account_id: must be a string (got float); quote it"],
    ),
    "account_id 33 chars": (
        {"account_id": "a" * 33},
        ["apps[0].account_id: must be at most 32 characters"],
    ),
    "app_id 33 chars": ({"app_id": "b" * 33}, ["apps[0].app_id: must be at most 32 characters"]),
    "app_id space": ({"app_id": "app main"}, [f"apps[0].app_id: {BAD_ID}"]),
    "app_id slash": ({"app_id": "app/main"}, [f"apps[0].app_id: {BAD_ID}"]),
    "app_id non-ASCII": ({"app_id": "äpp"}, [f"apps[0].app_id: {BAD_ID}"]),
    "app_id empty": ({"app_id": ""}, [f"apps[0].app_id: {BAD_ID}"]),
    "app_id trailing newline": ({"app_id": "app-main\n"}, [f"apps[0].app_id: {BAD_ID}"]),
    "app_id dot-dot": ({"app_id": ".."}, ["apps[0].app_id: must not be '.' or '..'"]),
    "account_id dot": ({"account_id": "."}, ["apps[0].account_id: must not be '.' or '..'"]),
    "livestream id missing": (
        {"livestreams": [{"expect_live": True}]},
        ["apps[0].livestreams[0].id: is required"],
    ),
    "livestream id unquoted number": (
        {"livestreams": [{"id": 42}]},
        ["apps[0].livestreams[0].id: must be a string (got int); quote it"],
    ),
    "livestream id bad characters": (
        {"livestreams": [{"id": "a?b"}]},
        [f"apps[0].livestreams[0].id: {BAD_ID}"],
    ),
    "livestream id dot-dot": (
        {"livestreams": [{"id": ".."}]},
        ["apps[0].livestreams[0].id: must not be '.' or '..'"],
    ),
}


@pytest.mark.parametrize(("app", "expected"), IDENTIFIERS.values(), ids=list(IDENTIFIERS))
def test_bad_identifiers_are_reported(
    tmp_path: Path, app: dict[str, Any], expected: list[str]
) -> None:
    """account_id, app_id and livestream ids must be safe URL path segments of bounded length."""
    assert problems_of(render(app=app), tmp_path) == expected


def test_identifiers_of_32_allowed_characters_are_accepted(tmp_path: Path) -> None:
    """Exactly 32 characters of letters, digits, '-', '_' and '.' is valid."""
    ident = "Aa0_.-" + "x" * 26
    assert len(ident) == 32
    config = parse(render(app={"account_id": ident, "app_id": ident}), tmp_path)
    assert config.apps[0].key == (ident, ident)


APP_SHAPES: dict[str, tuple[str, list[str]]] = {
    "apps missing": ("api: {}\n", ["apps: at least one app is required"]),
    "apps null": ("apps:\n", ["apps: at least one app is required"]),
    "apps empty": ("apps: []\n", ["apps: must be a non-empty list"]),
    "apps a mapping": (
        f"apps:\n  account_id: '{ACCOUNT}'\n  app_id: app-main\n",
        ["apps: must be a non-empty list"],
    ),
    "bare list item": ("apps:\n  -\n", ["apps[0]: must be a mapping"]),
    "string item": ("apps:\n  - app-main\n", ["apps[0]: must be a mapping"]),
    "empty app": (
        "apps:\n  - {}\n",
        [
            "apps[0].account_id: is required",
            "apps[0].app_id: is required",
            "apps[0]: lists no livestreams and discover is false: nothing to poll",
        ],
    ),
}


@pytest.mark.parametrize(("text", "expected"), APP_SHAPES.values(), ids=list(APP_SHAPES))
def test_apps_must_be_a_non_empty_list_of_mappings(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    """Missing, empty or malformed apps are problems; no app is ever silently dropped."""
    assert problems_of(text, tmp_path) == expected


DISCOVERY: dict[str, tuple[dict[str, Any], list[str]]] = {
    "discover, livestreams absent": ({"discover": True, "livestreams": OMIT}, []),
    "discover, livestreams empty": ({"discover": True, "livestreams": []}, []),
    "discover and livestreams": ({"discover": True}, []),
    "no discover, livestreams absent": (
        {"livestreams": OMIT},
        ["apps[0]: lists no livestreams and discover is false: nothing to poll"],
    ),
    "no discover, livestreams empty": (
        {"discover": False, "livestreams": []},
        ["apps[0]: lists no livestreams and discover is false: nothing to poll"],
    ),
    "discover not a boolean": (
        {"discover": "yes", "livestreams": OMIT},
        ["apps[0].discover: must be true or false"],
    ),
    "livestreams a mapping": (
        {"livestreams": {"id": "stream-1"}},
        ["apps[0].livestreams: must be a list"],
    ),
    "only livestream invalid": (
        {"livestreams": [{"id": "bad id"}]},
        [f"apps[0].livestreams[0].id: {BAD_ID}"],
    ),
    "livestream a bare string": (
        {"livestreams": ["stream-1"]},
        ["apps[0].livestreams[0]: must be a mapping with an id"],
    ),
    "expect_live not a boolean": (
        {"livestreams": [{"id": "stream-1", "expect_live": "yes"}]},
        ["apps[0].livestreams[0].expect_live: must be true or false"],
    ),
    "duplicate livestream": (
        {"livestreams": [{"id": "s"}, {"id": "t"}, {"id": "s"}]},
        ["apps[0].livestreams[2].id: duplicate livestream id in this app"],
    ),
}


@pytest.mark.parametrize(("app", "expected"), DISCOVERY.values(), ids=list(DISCOVERY))
def test_livestreams_and_discovery(
    tmp_path: Path, app: dict[str, Any], expected: list[str]
) -> None:
    """livestreams may be empty or absent only with discover: true; entries are checked once."""
    text = render(app=app)
    if expected:
        assert problems_of(text, tmp_path) == expected
    else:
        assert parse(text, tmp_path).apps[0].discover is True


def test_expect_live_null_means_no_expectation(tmp_path: Path) -> None:
    """expect_live: null is the same as leaving it out."""
    config = parse(render(app={"livestreams": [{"id": "s", "expect_live": None}]}), tmp_path)
    assert config.apps[0].livestreams == (LivestreamConfig("s", None),)


def test_same_livestream_id_in_two_apps_is_allowed(tmp_path: Path) -> None:
    """Livestream ids need only be unique within one app."""
    text = (
        "apps:\n"
        f"  - {{account_id: '{ACCOUNT}', app_id: a, livestreams: [{{id: s}}]}}\n"
        f"  - {{account_id: '{ACCOUNT}', app_id: b, livestreams: [{{id: s}}]}}\n"
    )
    config = parse(text, tmp_path)
    assert [app.livestreams[0].id for app in config.apps] == ["s", "s"]


def test_duplicate_app_is_reported_on_the_later_one(tmp_path: Path) -> None:
    """Two apps with the same account_id and app_id are a problem on the second."""
    text = (
        "apps:\n"
        f"  - {{account_id: '{ACCOUNT}', app_id: a, discover: true}}\n"
        f"  - {{account_id: '{ACCOUNT}', app_id: b, discover: true}}\n"
        f"  - {{account_id: '{ACCOUNT}', app_id: a, livestreams: [{{id: s}}]}}\n"
        f"  - {{account_id: other, app_id: a, discover: true}}\n"
    )
    assert problems_of(text, tmp_path) == [
        "apps[2]: duplicate of an earlier app (same account_id and app_id)"
    ]


# --- base_url --------------------------------------------------------------------------------

GOOD_URLS: dict[str, tuple[str, str]] = {
    "default spelled out": (DEFAULT_BASE_URL, DEFAULT_BASE_URL),
    "trailing slash stripped": ("https://api.cloudflare.com/client/v4/", DEFAULT_BASE_URL),
    "many trailing slashes": ("https://proxy.internal//", "https://proxy.internal"),
    "http with port": ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    "IPv6 host": ("http://[::1]:8080/v4", "http://[::1]:8080/v4"),
}


@pytest.mark.parametrize(("value", "expected"), GOOD_URLS.values(), ids=list(GOOD_URLS))
def test_base_url_accepted(tmp_path: Path, value: str, expected: str) -> None:
    """An http(s) base_url is kept without its trailing slash."""
    assert parse(render(api={"base_url": value}), tmp_path).api.base_url == expected


NOT_HTTP = "api.base_url: must be an http:// or https:// URL"
BAD_URLS: dict[str, tuple[object, str]] = {
    "ftp": ("ftp://api.cloudflare.com/client/v4", NOT_HTTP),
    "no scheme": ("api.cloudflare.com/client/v4", NOT_HTTP),
    "no host": ("https:///client/v4", NOT_HTTP),
    "unbalanced IPv6 bracket": ("http://[::1/v4", NOT_HTTP),
    "empty": ("", NOT_HTTP),
    "not a string": (8080, "api.base_url: must be a string (got int); quote it"),
    "user and password": (
        f"https://cf-user:{SECRET}@proxy.internal/v4",
        "api.base_url: must not carry credentials; use api.token or api.token_file",
    ),
    "user only": (
        f"https://{SECRET}@proxy.internal/v4",
        "api.base_url: must not carry credentials; use api.token or api.token_file",
    ),
    "query string": (
        f"https://proxy.internal/v4?key={SECRET}",
        "api.base_url: must not have a query or fragment",
    ),
    "fragment": (
        "https://proxy.internal/v4#top",
        "api.base_url: must not have a query or fragment",
    ),
}


@pytest.mark.parametrize(("value", "problem"), BAD_URLS.values(), ids=list(BAD_URLS))
def test_bad_base_url_is_reported_without_echoing_it(
    tmp_path: Path, value: object, problem: str
) -> None:
    """A bad base_url is one problem, and the message never quotes the URL or its parts."""
    with pytest.raises(ConfigError) as caught:
        parse(render(api={"base_url": value}), tmp_path)
    assert caught.value.problems == [problem]
    assert SECRET not in str(caught.value)
    assert "cf-user" not in str(caught.value)
    assert "proxy.internal" not in str(caught.value)


# --- secrets ---------------------------------------------------------------------------------

LEAKS: dict[str, tuple[str, dict[str, str], dict[str, bytes], list[str]]] = {
    "token as a mapping": (
        f"api:\n  token: {{{SECRET}: x}}\n",
        {},
        {},
        ["api.token: must be a string; quote it"],
    ),
    "token as a list": (
        f"api:\n  token: [{SECRET}]\n",
        {},
        {},
        ["api.token: must be a string; quote it"],
    ),
    "token as a number": (
        "api:\n  token: 987654321\n",
        {},
        {},
        ["api.token: must be a string; quote it"],
    ),
    "token with a space": (
        f"api:\n  token: '{SECRET} {SECRET}'\n",
        {},
        {},
        [f"api.token: {ONE_TOKEN}"],
    ),
    "token_file with a space": (
        "api:\n  token_file: cf_token\n",
        {},
        {"cf_token": f"{SECRET} extra\n".encode()},
        ["api.token_file: {dir}/cf_token must hold one token with no spaces or line breaks"],
    ),
    "token_file with two lines": (
        "api:\n  token_file: cf_token\n",
        {},
        {"cf_token": f"{SECRET}\n{SECRET}\n".encode()},
        ["api.token_file: {dir}/cf_token must hold one token with no spaces or line breaks"],
    ),
    "environment token with a space": (
        "api: {}\n",
        {"CLOUDFLARE_API_TOKEN": f"{SECRET} x"},
        {},
        [f"api: CLOUDFLARE_API_TOKEN {ONE_TOKEN}"],
    ),
    "password in base_url": (
        f"api:\n  base_url: https://user:{SECRET}@proxy.internal/v4\n  token: t\n",
        {},
        {},
        ["api.base_url: must not carry credentials; use api.token or api.token_file"],
    ),
    "token in base_url query": (
        f"api:\n  base_url: https://proxy.internal/v4?token={SECRET}\n  token: t\n",
        {},
        {},
        ["api.base_url: must not have a query or fragment"],
    ),
    "YAML error on the token line": (
        f'api:\n  token: "{SECRET}\n',
        {},
        {},
        ["not valid YAML at line 5, column 1"],  # the open quote runs to the end
    ),
    "YAML error after the token": (
        f"api:\n  token: {SECRET}\n   x: [\n",
        {},
        {},
        ["not valid YAML at line 3, column 5"],
    ),
    "secret as a repeated key": (
        f"api:\n  {SECRET}: 1\n  {SECRET}: 2\n",
        {},
        {},
        ["duplicate key at line 3, column 3"],
    ),
    "token given twice": (
        f"api:\n  token: {SECRET}\n  token: {SECRET}\n",
        {},
        {},
        ["duplicate key token at line 3, column 3"],
    ),
}


@pytest.mark.parametrize(("api", "environ", "files", "expected"), LEAKS.values(), ids=list(LEAKS))
def test_secrets_are_never_echoed_in_errors(
    tmp_path: Path,
    api: str,
    environ: dict[str, str],
    files: dict[str, bytes],
    expected: list[str],
) -> None:
    """A secret in the wrong place is reported without its value appearing anywhere."""
    make_files(tmp_path, dict(files))
    text = api + f"apps:\n  - {{account_id: '{ACCOUNT}', app_id: a, discover: true}}\n"
    with pytest.raises(ConfigError) as caught:
        loads(text, environ=environ, base_dir=tmp_path)
    err = caught.value
    assert err.problems == [p.replace("{dir}", str(tmp_path)) for p in expected]
    for shown in (str(err), repr(err), *err.problems, *(str(a) for a in err.args)):
        assert SECRET not in shown
        assert "987654321" not in shown


@pytest.mark.parametrize(
    ("api", "environ", "files"),
    [
        ({"token": SECRET}, {}, {}),
        ({"token": "${MY_TOKEN}"}, {"MY_TOKEN": SECRET}, {}),
        ({"token_file": "cf_token"}, {}, {"cf_token": f"{SECRET}\n".encode()}),
        ({}, {"CLOUDFLARE_API_TOKEN": SECRET}, {}),
    ],
    ids=["inline", "from variable", "token_file", "environment fallback"],
)
def test_valid_config_never_shows_its_token(
    tmp_path: Path, api: dict[str, str], environ: dict[str, str], files: dict[str, bytes]
) -> None:
    """repr/str of the Config, ApiConfig and Secret hide the token; reveal() returns it."""
    make_files(tmp_path, dict(files))
    config = parse(render(api=api), tmp_path, environ=environ)
    token = config.api.token
    for shown in (
        repr(config),
        str(config),
        repr(config.api),
        str(config.api),
        repr(token),
        str(token),
        f"{token}",
        f"{token!r}",
        config.summary(),
    ):
        assert SECRET not in shown
    assert repr(token) == "Secret('********')"
    assert token.reveal() == SECRET
    assert token == Secret(SECRET)
    assert token != Secret("other")
    assert token
    assert not Secret("")


# --- files, example and summary --------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (None, "cannot read file: No such file or directory"),
        (b"", "cannot read file: it is a directory, not a regular file"),
        (b"apps: \xff\n", "file is not UTF-8 text"),
    ],
    ids=["missing", "directory", "not UTF-8"],
)
def test_load_reports_unreadable_files(tmp_path: Path, setup: bytes | None, problem: str) -> None:
    """load() turns a file it cannot read into a ConfigError naming the file."""
    path = tmp_path / "config.yml"
    if setup == b"":
        path.mkdir()
    elif setup is not None:
        path.write_bytes(setup)
    with pytest.raises(ConfigError) as caught:
        load(path, environ=ENVIRON)
    assert caught.value.problems == [problem]
    assert caught.value.source == str(path)
    assert str(caught.value) == f"{path}: 1 problem: {problem}"


def test_load_resolves_token_file_against_the_config_directory(tmp_path: Path) -> None:
    """load(path) reads a relative token_file next to the config file and records the source."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cf_token").write_text("file-token\n")
    path = tmp_path / "etc" / "config.yml"
    path.write_text(render(api={"token_file": "cf_token"}))
    config = load(path, environ={})
    assert config.api.token.reveal() == "file-token"
    assert config.api.token_file == tmp_path / "etc" / "cf_token"
    assert config.source == str(path)


def test_example_config_loads() -> None:
    """config.example.yaml is a valid configuration when CLOUDFLARE_API_TOKEN is set."""
    config = load(EXAMPLE, environ={"CLOUDFLARE_API_TOKEN": "example-token"})
    assert config.api.token.reveal() == "example-token"
    assert config.api.base_url == DEFAULT_BASE_URL
    assert config.api.rate_limit == RateLimit(1000, 300.0)
    assert config.poll == PollConfig(interval=30.0, max_staleness=300.0, analytics_interval=300.0)
    assert config.credentials == ()
    assert [app.credentials for app in config.apps] == ["default", "default"]
    assert config.apps[0].livestreams == (
        LivestreamConfig("9fb22eea-3392-42ad-b884-1129a4f517d2", expect_live=True),
    )


def test_example_config_credentials_load_when_uncommented() -> None:
    """The commented-out credentials section and the app that uses it are a valid
    configuration once uncommented."""
    text = EXAMPLE.read_text()
    for start, mark in (("#credentials:", "#"), ('  # - account_id: "7c5d', "# ")):
        at = text.index(start)
        end = text.index("\n\n", at)
        block = "\n".join(line.replace(mark, "", 1) for line in text[at:end].split("\n"))
        text = text[:at] + block + text[end:]
    config = loads(text, environ={"CLOUDFLARE_API_TOKEN": "t", "AGENCY_B_TOKEN": "b-token"})
    assert config.credentials == (
        Credentials("agency-b", Secret("b-token"), rate_limit=RateLimit(1200, 300.0)),
    )
    assert config.credential_names() == ("default", "agency-b")


def test_example_config_documents_every_key() -> None:
    """Every key of the schema appears in config.example.yaml, each with a comment above it."""
    lines = EXAMPLE.read_text().splitlines()
    keys = [
        "api", "base_url", "token", "token_file", "timeout", "max_concurrency", "rate_limit",
        "poll", "interval", "max_staleness", "apps", "account_id", "app_id", "discover",
        "livestreams", "id", "expect_live", "limits", "max_livestreams",
        "full_listing_interval", "webhooks", "listen_address", "path", "public_key_url",
        "public_key_file", "credentials", "analytics_interval",
    ]  # fmt: skip
    for key in keys:
        pattern = re.compile(rf"^\s*(#\s*)*(- )?{key}:")
        at = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert at, f"{key} is not in the example"
        assert any(lines[i - 1].lstrip().startswith("#") for i in at), f"{key} has no comment"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            (CONFIGS / "valid_full.yml").read_text(),
            "2 app(s), 3 configured livestream(s), discovery on 1 app(s), poll every 15s, "
            "budget 1000/5m",
        ),
        (
            render(api={"rate_limit": "60/90s"}, poll={"interval": "500ms", "max_staleness": "1s"}),
            "1 app(s), 1 configured livestream(s), discovery on 0 app(s), poll every 500ms, "
            "budget 60/90s",
        ),
        (
            render(poll={"interval": 2.5}),
            "1 app(s), 1 configured livestream(s), discovery on 0 app(s), poll every 2.5s, "
            "budget 1000/5m",
        ),
        (
            render(poll={"interval": "1h", "max_staleness": "2h"}),
            "1 app(s), 1 configured livestream(s), discovery on 0 app(s), poll every 1h, "
            "budget 1000/5m",
        ),
    ],
    ids=["full", "sub-second", "fractional seconds", "hours"],
)
def test_summary_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    """Config.summary() counts apps, livestreams and discovery and names interval and budget."""
    assert parse(text, tmp_path).summary() == expected


def test_token_file_error_never_shows_a_token_put_there_by_mistake(tmp_path: Path) -> None:
    """token_file given as ${VAR} or a bare word is not echoed; a literal path is named."""
    secret = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-xy"
    by_var = "api:\n  token_file: ${TOKEN}\napps:\n  - {account_id: a, app_id: b, discover: true}\n"
    bare = by_var.replace("${TOKEN}", secret)
    for text in (by_var, bare):
        with pytest.raises(ConfigError) as caught:
            loads(text, environ={"TOKEN": secret}, base_dir=tmp_path)
        assert secret not in str(caught.value)
        assert "the file named by api.token_file (" in str(caught.value)
    literal = by_var.replace("${TOKEN}", "/nonexistent/token")
    with pytest.raises(ConfigError, match="cannot read /nonexistent/token"):
        loads(literal, environ={}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="cannot read /nonexistent/cf_token"):
        loads(by_var.replace("${TOKEN}", "${DIR}/cf_token"), environ={"DIR": "/nonexistent"})


# --- files and documents out of bounds -------------------------------------------------------
# Each was an attack on the running exporter: a RecursionError or ValueError out of the
# parser, a read that blocked or ran out of memory. Each is now one problem, at once.

DEEP = "nested deeper than 64 levels at line {line}, column {column}"


def write(text: str) -> Callable[[Path], None]:
    def setup(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return setup


VALID = render()  # 5 lines; what each case adds starts on line 6
SECRET_LINE = f"misplaced: {SECRET}\n"  # never quoted back
ALIASED_APPS = "".join(
    ["anchors:\n  - &app\n    account_id: a\n    app_id: b\n    livestreams:\n"]
    + [f"      - id: s{i}\n" for i in range(3000)]
    + ["apps:\n"]
    + ["  - *app\n"] * 3000
)
MERGES = "m0: &m0 {a: 1}\n" + "".join(f"m{i}: &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 200))

REFUSED_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "500-deep flow brackets": (
        write(VALID + "x: " + "[" * 500 + SECRET + "]" * 500 + "\n"),
        DEEP.format(line=6, column=4 + MAX_YAML_DEPTH - 1),
    ),
    "500-deep block mappings": (
        write(VALID + "".join(" " * i + f"k{i}:\n" for i in range(500))),
        DEEP.format(line=6 + MAX_YAML_DEPTH - 1, column=MAX_YAML_DEPTH),
    ),
    "500-deep block sequences": (
        write(VALID + "x:\n" + "- " * 500 + SECRET + "\n"),
        DEEP.format(line=7, column=2 * MAX_YAML_DEPTH - 1),
    ),
    "a chain of 200 merges": (
        write(VALID + MERGES),
        DEEP.format(line=6 + MAX_YAML_DEPTH - 2, column=16),
    ),
    "an alias inside what it names": (
        write(VALID + "x: &a [*a]\n"),
        "an alias inside the value it refers to at line 6, column 8",
    ),
    "3000 aliases of an app of 3000 livestreams": (
        write("api: {token: t}\n" + ALIASED_APPS),
        "more than 125000 values (an alias counting as a copy of what it refers to) at line "
        "3020, column 5",
    ),
    "a 5,000-digit integer": (
        write(VALID + SECRET_LINE + "poll:\n  interval: " + "7" * 5000 + "\n"),
        f"an integer longer than {MAX_YAML_INT_LENGTH} characters at line 8, column 13",
    ),
    "a 5,000-digit hexadecimal key": (
        write(VALID + "? 0x" + "f" * 5000 + "\n: 1\n"),  # a key of over 1024: "? " before it
        f"an integer longer than {MAX_YAML_INT_LENGTH} characters at line 6, column 3",
    ),
    "a date that does not exist": (
        write(VALID + "x: 2001-13-45\n"),
        "a value that cannot be read at line 6, column 4",
    ),
    "a file over the size limit": (
        sized(MAX_CONFIG_FILE_BYTES + 1),
        f"cannot read file: it is over the limit of 8 MiB ({MAX_CONFIG_FILE_BYTES + 1} bytes)",
    ),
    "a FIFO": (fifo, "cannot read file: it is a FIFO (named pipe), not a regular file"),
    "/dev/zero": (dev_zero, "cannot read file: it is a character device, not a regular file"),
    "a directory": (directory, "cannot read file: it is a directory, not a regular file"),
    "a socket": (unix_socket, "cannot read file: it is a socket, not a regular file"),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("setup", "problem"), REFUSED_FILES.values(), ids=list(REFUSED_FILES))
def test_files_and_documents_out_of_bounds_are_one_problem(
    tmp_path: Path, setup: Callable[[Path], None], problem: str
) -> None:
    """Nesting, aliases, integers and files out of bounds are one ConfigError of one line
    each, with a position and no content, without blocking and without a large read."""
    path = tmp_path / "c.yaml"
    setup(path)
    with pytest.raises(ConfigError) as caught:
        load(path, environ=ENVIRON)
    assert caught.value.problems == [problem]
    assert caught.value.source == str(path)
    assert "\n" not in str(caught.value) and SECRET not in str(caught.value)


REFUSED_TOKEN_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "a FIFO": (fifo, "it is a FIFO (named pipe), not a regular file"),
    "/dev/zero": (dev_zero, "it is a character device, not a regular file"),
    "a directory": (directory, "it is a directory, not a regular file"),
    "a socket": (unix_socket, "it is a socket, not a regular file"),
    "200 MB": (sized(200_000_000), "it is over the limit of 4 KiB (200000000 bytes)"),
    "a byte over the limit": (
        write("t" * (MAX_TOKEN_FILE_BYTES + 1)),
        f"it is over the limit of 4 KiB ({MAX_TOKEN_FILE_BYTES + 1} bytes)",
    ),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("setup", "reason"), REFUSED_TOKEN_FILES.values(), ids=list(REFUSED_TOKEN_FILES)
)
def test_a_token_file_that_is_not_a_small_regular_file_is_one_problem(
    tmp_path: Path, setup: Callable[[Path], None], reason: str
) -> None:
    """api.token_file is read as the config file is: whatever it is, at once, and no more
    than a token needs."""
    setup(tmp_path / "t")
    text = render(api={"token_file": "t"})
    assert problems_of(text, tmp_path) == [f"api.token_file: cannot read {tmp_path}/t: {reason}"]


def test_a_token_file_at_the_limit_is_read(tmp_path: Path) -> None:
    """A token file of exactly MAX_TOKEN_FILE_BYTES (a token padded with a newline) is read."""
    token = "t" * (MAX_TOKEN_FILE_BYTES - 1)
    (tmp_path / "t").write_text(token + "\n", encoding="utf-8")
    assert parse(render(api={"token_file": "t"}), tmp_path).api.token.reveal() == token


def test_a_file_that_holds_more_than_its_size_says_is_read_no_further() -> None:
    """A file whose size says 0 (as in /proc) or that grows after the check is read to one
    byte past the limit, then refused."""
    with pytest.raises(
        UnreadableFile, match=r"^it held more than the limit of 16 bytes when read$"
    ):
        read_file("/proc/self/status", limit=16)
    assert read_file("/proc/self/status", limit=1 << 20).startswith(b"Name:")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH, None),
        ("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1), DEEP.format(line=1, column=65)),
        ("a: &a " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\nb: *a\n", None),
        (
            "a: &a " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\nb: [*a]\n",
            DEEP.format(line=2, column=5),
        ),
        ("x: " + "9" * MAX_YAML_INT_LENGTH, None),
        (
            "x: " + "9" * (MAX_YAML_INT_LENGTH + 1),
            f"an integer longer than {MAX_YAML_INT_LENGTH} characters at line 1, column 4",
        ),
    ],
    ids=[
        "depth at the bound",
        "one deeper",
        "through an alias at the bound",
        "one deeper",
        "integer at the bound",
        "one digit more",
    ],
)
def test_the_yaml_bounds_are_exact(text: str, problem: str | None) -> None:
    """Depth counts the levels an alias brings along; both bounds are inclusive."""
    if problem is None:
        parse_yaml(text, shown=str)
    else:
        with pytest.raises(YamlError, match=f"^{re.escape(problem)}$"):
            parse_yaml(text, shown=str)


def test_an_error_names_the_first_problems_and_counts_the_rest() -> None:
    """However many problems a file has, its one line names the first 20 and counts the
    others (20,000 bad ids made a line of a megabyte); ``problems`` keeps them all."""
    ids = "".join(f"      - id: 'bad id {i}'\n" for i in range(30))
    text = f"apps:\n  - account_id: a\n    app_id: b\n    livestreams:\n{ids}"
    with pytest.raises(ConfigError) as caught:
        loads(text, environ={"CLOUDFLARE_API_TOKEN": "t0123456789"})
    assert len(caught.value.problems) == 30
    message = str(caught.value)
    assert message.count("must be non-empty") == 20
    assert message.endswith("; and 10 more")


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        (
            "limits:\n  max_livestreams: 1" + "0" * 400,
            "limits.max_livestreams: must be a whole number from 1 to 1,000,000",
        ),
        (
            "api:\n  rate_limit: '1" + "0" * 400 + "/5m'",
            "api.rate_limit: the request count must be at most 1,000,000,000",
        ),
        (
            "api:\n  max_concurrency: 1" + "0" * 400,
            "api.max_concurrency: must be a whole number from 1 to 1000",
        ),
    ],
    ids=["max_livestreams", "rate_limit", "max_concurrency"],
)
def test_numbers_too_large_to_use_are_refused(yaml_text: str, problem: str) -> None:
    """A number of 400 digits is refused where it is read, with its key, not accepted to
    fail every scrape later (a float cannot hold it: OverflowError on /metrics)."""
    text = yaml_text + "\napps:\n  - account_id: a\n    app_id: b\n    discover: true\n"
    with pytest.raises(ConfigError) as caught:
        loads(text, environ={"CLOUDFLARE_API_TOKEN": "t0123456789"})
    assert caught.value.problems == [problem]


# -- webhooks ---------------------------------------------------------------------------

_BASE = (
    "api: {token: abcdefghijklmnopqrstuvwxyz0123456789ABCD}\n"
    "apps: [{account_id: a, app_id: b, discover: true}]\n"
)


def test_no_webhooks_section_means_no_receiver() -> None:
    """Webhooks are off unless the section is there."""
    assert loads(_BASE).webhooks is None


def test_an_empty_webhooks_section_takes_the_defaults() -> None:
    """An empty section turns the receiver on with its defaults: every interface on port
    10243, path /webhooks/realtimekit, RealtimeKit's key URL."""
    hooks = loads(_BASE + "webhooks: {}\n").webhooks
    assert hooks == WebhooksConfig()
    assert (hooks.host, hooks.port, hooks.path) == (None, 10243, "/webhooks/realtimekit")
    assert hooks.public_key_url == "https://api.realtime.cloudflare.com/.well-known/webhooks.json"
    assert hooks.listen_address == ":10243"


def test_webhooks_settings_are_read(tmp_path: Path) -> None:
    """Listen address (IPv6 too), path and a key file relative to the config's folder."""
    path = tmp_path / "c.yml"
    path.write_text(
        _BASE
        + "webhooks: {listen_address: '[::1]:9443', path: /hooks/rtk-7f3a, "
        + "public_key_file: keys/rtk.pem}\n"
    )
    hooks = load(path).webhooks
    assert hooks is not None
    assert (hooks.host, hooks.port, hooks.path) == ("::1", 9443, "/hooks/rtk-7f3a")
    assert hooks.public_key_file == tmp_path / "keys" / "rtk.pem"
    assert hooks.public_key_url is None
    assert hooks.listen_address == "[::1]:9443"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("{listen_address: 'nope'}", "webhooks.listen_address: 'nope' is not HOST:PORT"),
        ("{listen_address: ':99999'}", "webhooks.listen_address: ':99999' is not HOST:PORT"),
        ("{listen_address: '::1:80'}", "webhooks.listen_address: '::1:80': write IPv6"),
        ("{path: 'no-slash'}", "webhooks.path: must start with '/'"),
        ("{path: '/a/../b'}", "webhooks.path: must start with '/'"),
        ("{path: '/a//b'}", "webhooks.path: must start with '/'"),
        ("{path: '/a?b=1'}", "webhooks.path: must start with '/'"),
        ("{public_key_url: 'ftp://x/k'}", "webhooks.public_key_url: must be an http"),
        ("{public_key_url: 'https://u:p@x/k'}", "webhooks.public_key_url: must not carry"),
        ("{public_key_url: 'https://x/k', public_key_file: k.pem}", "webhooks: set public_key_url"),
        ("{port: 1}", "webhooks.port: unknown key"),
        ("[1]", "webhooks: must be a mapping"),
    ],
)
def test_bad_webhooks_settings_are_named(section: str, problem: str) -> None:
    """Each bad webhooks setting is one problem naming the key (and never echoing a URL's
    password)."""
    with pytest.raises(ConfigError) as caught:
        loads(_BASE + f"webhooks: {section}\n")
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(problem), caught.value.problems
    assert "u:p@" not in str(caught.value)


# -- named credentials ------------------------------------------------------------------

B_TOKEN = "agency-b-token-0123456789"
C_TOKEN = "agency-c-token-0123456789"
LONG_SECRET = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-xy"  # 40 characters, like an API token
NAME_RULE = "a name must be 1 to 24 letters, digits, '_', '-' and '.'"


def with_credentials(
    credentials: object, *used: object, api: Mapping[str, Any] | None = None
) -> str:
    """A document with this ``credentials`` section and one discovering app read with each
    name in ``used`` (OMIT: its credentials key left out), plus any api keys."""
    apps = [
        {"account_id": ACCOUNT, "app_id": f"app-{i}", "discover": True}
        | ({} if name is OMIT else {"credentials": name})
        for i, name in enumerate(used)
    ]
    document: dict[str, Any] = {} if api is None else {"api": dict(api)}
    return yaml.safe_dump(document | {"credentials": credentials, "apps": apps}, sort_keys=False)


def test_credentials_are_read_in_file_order(tmp_path: Path) -> None:
    """Each credentials entry becomes a Credentials record, in file order: its token (from
    token, or a token_file beside the config file), its file and its rate limit (default
    1000/5m); each app records the name it is read with (default: default)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "b.token").write_text(f"{B_TOKEN}\n")
    path = tmp_path / "etc" / "config.yml"
    credentials = {
        "agency-b": {"token_file": "b.token", "rate_limit": "1200/5m"},
        "agency.c_2": {"token": "${C_TOKEN}"},
    }
    path.write_text(
        with_credentials(credentials, OMIT, "agency-b", "agency.c_2", "default", "agency-b")
    )
    config = load(path, environ={**ENVIRON, "C_TOKEN": C_TOKEN})
    assert config.credentials == (
        Credentials(
            name="agency-b",
            token=Secret(B_TOKEN),
            token_file=tmp_path / "etc" / "b.token",
            rate_limit=RateLimit(1200, 300.0),
        ),
        Credentials(name="agency.c_2", token=Secret(C_TOKEN), rate_limit=RateLimit(1000, 300.0)),
    )
    assert [app.credentials for app in config.apps] == [
        "default",
        "agency-b",
        "agency.c_2",
        "default",
        "agency-b",
    ]
    assert config.api.token == Secret(ENV_TOKEN)
    assert config.credential_names() == ("default", "agency-b", "agency.c_2")
    assert {t.reveal() for t in config.tokens()} == {ENV_TOKEN, B_TOKEN, C_TOKEN}


def test_scoped_config_is_what_one_credential_sees(tmp_path: Path) -> None:
    """Config.scoped(name) puts that credential's token, token file and rate limit in api,
    keeps only its apps and the rest of the api section; scoped("default") is the api
    section's own."""
    (tmp_path / "b.token").write_text(B_TOKEN)
    text = with_credentials(
        {"agency-b": {"token_file": "b.token", "rate_limit": "1200/5m"}},
        "agency-b",
        OMIT,
        "agency-b",
        api={"timeout": "3s", "rate_limit": "600/5m"},
    )
    config = parse(text, tmp_path)
    b = config.scoped("agency-b")
    assert b.api == ApiConfig(
        token=Secret(B_TOKEN),
        token_file=tmp_path / "b.token",
        timeout=3.0,
        rate_limit=RateLimit(1200, 300.0),
    )
    assert [app.app_id for app in b.apps] == ["app-0", "app-2"]
    assert b.credentials == ()
    assert (b.poll, b.limits, b.shard) == (config.poll, config.limits, config.shard)
    default = config.scoped("default")
    assert default.api == config.api
    assert [app.app_id for app in default.apps] == ["app-1"]


def test_the_api_token_is_needed_only_by_apps_read_with_it(tmp_path: Path) -> None:
    """With every app on other credentials, no api token is no problem (the token is
    empty); one given anyway is used, and still checked."""
    text = with_credentials({"agency-b": {"token": B_TOKEN}}, "agency-b")
    config = parse(text, tmp_path, environ={})
    assert config.api.token == Secret("")
    assert config.tokens() == (Secret(B_TOKEN),)
    assert parse(text, tmp_path).api.token == Secret(ENV_TOKEN)
    spaced = with_credentials({"agency-b": {"token": B_TOKEN}}, "agency-b", api={"token": "a b"})
    assert problems_of(spaced, tmp_path, environ={}) == [f"api.token: {ONE_TOKEN}"]


@pytest.mark.parametrize(
    "used",
    [(OMIT,), ("default",), (None,), ("agency-b", OMIT)],
    ids=["left out", "named", "null", "one of two apps"],
)
def test_an_app_read_with_the_api_token_needs_one(tmp_path: Path, used: tuple[object]) -> None:
    """An app on the default credentials (its key left out, null, or "default") needs the
    api section's token; the problem is listed with the api section's."""
    text = with_credentials({"agency-b": {"token": B_TOKEN, "tokn": 1}}, *used)
    assert problems_of(text, tmp_path, environ={}) == [
        NO_TOKEN,
        "credentials.agency-b.tokn: unknown key (allowed: rate_limit, token, token_file)",
    ]


CREDENTIAL_NAMES: dict[str, tuple[object, str]] = {
    "reserved": (
        "default",
        "credentials.default: is the api section's token: set it there (api.token, "
        "api.token_file or CLOUDFLARE_API_TOKEN)",
    ),
    "space": ("agency b", f"credentials.<a name of 8 characters>: {NAME_RULE}"),
    "25 characters": ("b" * 25, f"credentials.<a name of 25 characters>: {NAME_RULE}"),
    "empty": ("", f"credentials.<a name of 0 characters>: {NAME_RULE}"),
    "slash": ("a/b", f"credentials.<a name of 3 characters>: {NAME_RULE}"),
    "control character": ("bell\x07", f"credentials.<a name of 5 characters>: {NAME_RULE}"),
    "number": (5, f"credentials.<a name of 1 characters>: {NAME_RULE}"),
}


@pytest.mark.parametrize(("name", "problem"), CREDENTIAL_NAMES.values(), ids=list(CREDENTIAL_NAMES))
def test_bad_credential_names_are_reported(tmp_path: Path, name: object, problem: str) -> None:
    """A name is 1 to 24 letters, digits, '_', '-' and '.' (a longer word may be a token
    pasted there), not "default"; a bad one is described, never quoted."""
    text = with_credentials({name: {"token": B_TOKEN}}, OMIT)
    assert problems_of(text, tmp_path) == [problem]


def test_a_name_of_24_characters_is_accepted(tmp_path: Path) -> None:
    """The longest name allowed is read, and an app can use it."""
    name = "a-" * 11 + "._"
    config = parse(with_credentials({name: {"token": B_TOKEN}}, name), tmp_path)
    assert [c.name for c in config.credentials] == [name]
    assert config.apps[0].credentials == name


CREDENTIAL_PROBLEMS: dict[str, tuple[object, dict[str, bytes | None], str]] = {
    "no token, whatever the environment": (
        {"rate_limit": "10/1m"},
        {},
        "credentials.b: no API token: set credentials.b.token or credentials.b.token_file",
    ),
    "empty entry": (
        None,
        {},
        "credentials.b: no API token: set credentials.b.token or credentials.b.token_file",
    ),
    "not a mapping": (
        B_TOKEN,
        {},
        "credentials.b: must be a mapping with token or token_file (and rate_limit)",
    ),
    "both": (
        {"token": B_TOKEN, "token_file": "b.token"},
        {"b.token": b"x"},
        "credentials.b: set credentials.b.token or credentials.b.token_file, not both",
    ),
    "unknown key": (
        {"token": B_TOKEN, "base_url": "http://x"},
        {},
        "credentials.b.base_url: unknown key (allowed: rate_limit, token, token_file)",
    ),
    "empty token": ({"token": " "}, {}, "credentials.b.token: is empty"),
    "null token": ({"token": None}, {}, "credentials.b.token: is empty"),
    "token with a space": ({"token": "a b"}, {}, f"credentials.b.token: {ONE_TOKEN}"),
    "token not a string": ({"token": 123}, {}, "credentials.b.token: must be a string; quote it"),
    "unset variable": (
        {"token": "${NOPE}"},
        {},
        "credentials.b.token: environment variable NOPE is not set",
    ),
    "missing file": (
        {"token_file": "b.token"},
        {},
        "credentials.b.token_file: cannot read {dir}/b.token: No such file or directory",
    ),
    "empty file": (
        {"token_file": "b.token"},
        {"b.token": b"\n"},
        "credentials.b.token_file: {dir}/b.token is empty",
    ),
    "directory": (
        {"token_file": "b.token"},
        {"b.token": None},
        "credentials.b.token_file: cannot read {dir}/b.token: it is a directory, not a "
        "regular file",
    ),
    "bad rate limit": (
        {"token": B_TOKEN, "rate_limit": "lots"},
        {},
        f"credentials.b.rate_limit: {BAD_RATE}",
    ),
}


@pytest.mark.parametrize(
    ("entry", "files", "problem"), CREDENTIAL_PROBLEMS.values(), ids=list(CREDENTIAL_PROBLEMS)
)
def test_credential_problems_name_the_credential(
    tmp_path: Path, entry: object, files: dict[str, bytes | None], problem: str
) -> None:
    """Each problem of a credentials entry is one problem with its path; there is no
    environment fallback (CLOUDFLARE_API_TOKEN is the api section's)."""
    make_files(tmp_path, files)
    text = with_credentials({"b": entry}, "b")
    assert problems_of(text, tmp_path) == [problem.replace("{dir}", str(tmp_path))]


def test_every_shard_needs_a_share_of_each_credentials_budget(tmp_path: Path) -> None:
    """A credential's rate_limit, like api.rate_limit, must hold one request per shard."""
    text = with_credentials({"b": {"token": B_TOKEN, "rate_limit": "2/5m"}}, "b")
    assert loads(text, environ=ENVIRON, shard=Shard(0, 2)).credentials[0].rate_limit == (
        RateLimit(2, 300.0)
    )
    with pytest.raises(ConfigError) as caught:
        loads(text, environ=ENVIRON, shard=Shard(1, 3))
    assert caught.value.problems == [
        "credentials.b.rate_limit: 2/5m is fewer requests than --total-shards=3: every "
        "shard needs one of its own"
    ]


@pytest.mark.parametrize(
    ("used", "problem"),
    [
        ("agency-c", "apps[0].credentials: no credentials named agency-c (defined: default, b)"),
        (
            LONG_SECRET,
            "apps[0].credentials: no credentials named <a name of 40 characters> "
            "(defined: default, b)",
        ),
        (7, "apps[0].credentials: must be a string (got int); quote it"),
        ("${NOPE}", "apps[0].credentials: environment variable NOPE is not set"),
    ],
    ids=["undefined", "a token by mistake", "not a string", "unset variable"],
)
def test_an_app_must_name_defined_credentials(tmp_path: Path, used: object, problem: str) -> None:
    """An app's credentials must be "default" or a name the credentials section defines;
    the error lists those, and never quotes a long value (it may be a token)."""
    text = with_credentials({"b": {"token": B_TOKEN}}, used)
    assert problems_of(text, tmp_path) == [problem]


def test_a_credential_no_app_uses_is_no_problem(tmp_path: Path) -> None:
    """A credential defined but unused is read like any other."""
    config = parse(with_credentials({"b": {"token": B_TOKEN}}, OMIT), tmp_path)
    assert [c.name for c in config.credentials] == ["b"]
    assert config.credential_names() == ("default",)


def test_every_credentials_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Problems in two credentials and an app's reference come in one ConfigError, in
    document order, with the api section's missing token first."""
    text = with_credentials(
        {
            "b": {"token": "a b", "rate_limit": "0/5m"},
            "default": {"token": B_TOKEN},
            "c": {"token_file": "missing"},
        },
        "b",
        "x",
        OMIT,
    )
    assert problems_of(text, tmp_path, environ={}) == [
        NO_TOKEN,
        "credentials.b.rate_limit: the request count must be at least 1",
        f"credentials.b.token: {ONE_TOKEN}",
        "credentials.default: is the api section's token: set it there (api.token, "
        "api.token_file or CLOUDFLARE_API_TOKEN)",
        f"credentials.c.token_file: cannot read {tmp_path}/missing: No such file or directory",
        "apps[1].credentials: no credentials named x (defined: default, b, c)",
    ]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ([1], ["credentials: must be a mapping of names to token and rate_limit"]),
        (None, []),
        ({}, []),
    ],
    ids=["list", "null", "empty"],
)
def test_the_credentials_section_is_a_mapping(
    tmp_path: Path, section: object, expected: list[str]
) -> None:
    """An empty or null credentials section defines none; anything but a mapping is one
    problem."""
    text = with_credentials(section, OMIT)
    if expected:
        assert problems_of(text, tmp_path) == expected
    else:
        assert parse(text, tmp_path).credentials == ()


CREDENTIAL_LEAKS: dict[str, tuple[object, dict[str, str], dict[str, bytes | None], str]] = {
    "token with a line break": (
        {"token": f"{LONG_SECRET}\n{LONG_SECRET}"},
        {},
        {},
        f"credentials.b.token: {ONE_TOKEN}",
    ),
    "token with a tab and carriage return": (
        {"token": f"{LONG_SECRET}\t\r{LONG_SECRET}"},
        {},
        {},
        f"credentials.b.token: {ONE_TOKEN}",
    ),
    "token from a variable, with a space": (
        {"token": "${B}"},
        {"B": f"{LONG_SECRET} x"},
        {},
        f"credentials.b.token: {ONE_TOKEN}",
    ),
    "token as a list": (
        {"token": [LONG_SECRET]},
        {},
        {},
        "credentials.b.token: must be a string; quote it",
    ),
    "token as the entry": (
        LONG_SECRET,
        {},
        {},
        "credentials.b: must be a mapping with token or token_file (and rate_limit)",
    ),
    "token as token_file": (
        {"token_file": LONG_SECRET},
        {},
        {},
        "credentials.b.token_file: cannot read the file named by credentials.b.token_file "
        "(40 characters): No such file or directory",
    ),
    "token_file from a variable holding the token": (
        {"token_file": "${B}"},
        {"B": LONG_SECRET},
        {},
        "credentials.b.token_file: cannot read the file named by credentials.b.token_file "
        "(40 characters): No such file or directory",
    ),
    "token file of two tokens": (
        {"token_file": "b.token"},
        {},
        {"b.token": f"{LONG_SECRET}\n{LONG_SECRET}\n".encode()},
        "credentials.b.token_file: {dir}/b.token must hold one token with no spaces or line breaks",
    ),
    "token file unreadable": (
        {"token_file": "b.token"},
        {},
        {"b.token": None},
        "credentials.b.token_file: cannot read {dir}/b.token: it is a directory, not a "
        "regular file",
    ),
    "token as a key": (
        {"token": B_TOKEN, LONG_SECRET: 1},
        {},
        {},
        "credentials.b.<unknown key of 40 characters>: unknown key (allowed: rate_limit, "
        "token, token_file)",
    ),
}


@pytest.mark.parametrize(
    ("entry", "environ", "files", "problem"),
    CREDENTIAL_LEAKS.values(),
    ids=list(CREDENTIAL_LEAKS),
)
def test_credential_secrets_are_never_echoed_in_errors(
    tmp_path: Path,
    entry: object,
    environ: dict[str, str],
    files: dict[str, bytes | None],
    problem: str,
) -> None:
    """A credential's token, wherever it was put by mistake, is in no error text, which
    stays on one line."""
    make_files(tmp_path, files)
    text = with_credentials({"b": entry}, "b")
    with pytest.raises(ConfigError) as caught:
        loads(text, environ={**ENVIRON, **environ}, base_dir=tmp_path)
    err = caught.value
    assert err.problems == [problem.replace("{dir}", str(tmp_path))]
    for shown in (str(err), repr(err), *err.problems, *(str(a) for a in err.args)):
        assert LONG_SECRET not in shown
    assert "\n" not in str(err)
    assert "\r" not in str(err)


def test_a_valid_config_never_shows_a_credentials_token(tmp_path: Path) -> None:
    """repr/str of the Config, its Credentials and their Secret hide each token, and so does
    the summary."""
    config = parse(with_credentials({"b": {"token": LONG_SECRET}}, "b"), tmp_path)
    (b,) = config.credentials
    assert repr(b) == "Credentials(name='b', rate_limit=1000/5m)"
    for shown in (repr(config), str(config), repr(b), str(b), str(b.token), config.summary()):
        assert LONG_SECRET not in shown
    assert b.token.reveal() == LONG_SECRET


@pytest.mark.parametrize(
    ("used", "suffix"),
    [
        ((OMIT, "b"), ", 2 credential(s)"),
        (("b", "c", OMIT, "b"), ", 3 credential(s)"),
        (("b",), ""),
        ((OMIT,), ""),
    ],
    ids=["two in use", "three in use", "one other", "default only"],
)
def test_summary_counts_credentials_only_when_several_are_in_use(
    tmp_path: Path, used: tuple[object, ...], suffix: str
) -> None:
    """The summary says how many credentials the apps use when more than one; the budget
    it names stays the api section's."""
    credentials = {"b": {"token": B_TOKEN, "rate_limit": "10/1m"}, "c": {"token": C_TOKEN}}
    config = parse(with_credentials(credentials, *used), tmp_path)
    assert config.summary() == (
        f"{len(used)} app(s), 0 configured livestream(s), discovery on {len(used)} app(s), "
        f"poll every 30s, budget 1000/5m{suffix}"
    )


# -- analytics interval -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("poll", "expected"),
    [
        ({}, 300.0),
        ({"interval": "10m", "max_staleness": "1h"}, 600.0),
        ({"analytics_interval": None}, 300.0),
        ({"analytics_interval": "1h"}, 3600.0),
        ({"analytics_interval": "30s"}, 30.0),
        ({"analytics_interval": "off"}, None),
        ({"analytics_interval": False}, None),
        ({"analytics_interval": "${EVERY}"}, 120.0),
        ({"analytics_interval": "${OFF}"}, None),
    ],
    ids=[
        "default",
        "default follows a longer interval",
        "null is the default",
        "hour",
        "equal to interval",
        "off",
        "bare off (YAML false)",
        "from a variable",
        "off from a variable",
    ],
)
def test_analytics_interval(
    tmp_path: Path, poll: dict[str, object], expected: float | None
) -> None:
    """poll.analytics_interval is a duration or off (never); by default 5 minutes, or
    poll.interval when that is longer."""
    environ = {**ENVIRON, "EVERY": "2m", "OFF": "off"}
    assert parse(render(poll=poll), tmp_path, environ=environ).poll.analytics_interval == expected


def test_a_bare_off_in_the_file_turns_analytics_off(tmp_path: Path) -> None:
    """``analytics_interval: off`` written unquoted (YAML reads it as false) is off."""
    text = render() + "poll:\n  analytics_interval: off\n"
    assert parse(text, tmp_path).poll.analytics_interval is None


@pytest.mark.parametrize(
    ("poll", "problem"),
    [
        (
            {"analytics_interval": "10s"},
            "poll.analytics_interval: 10s is shorter than the poll interval (30s, the default)",
        ),
        (
            {"interval": "2m", "max_staleness": "5m", "analytics_interval": "1m"},
            "poll.analytics_interval: 1m is shorter than poll.interval (2m)",
        ),
        (
            {"analytics_interval": "soon"},
            f"poll.analytics_interval: {BAD_DURATION}, or off",
        ),
        ({"analytics_interval": True}, f"poll.analytics_interval: {bad_duration('true')}, or off"),
        ({"analytics_interval": 0}, f"poll.analytics_interval: {bad_duration('0')}, or off"),
        ({"interval": "soon", "analytics_interval": "1s"}, f"poll.interval: {BAD_DURATION}"),
        (
            {"full_listing_interval": "10s"},
            "poll.full_listing_interval: 10s is shorter than the poll interval (30s, the default)",
        ),
        (
            {"interval": "1m", "full_listing_interval": "10s"},
            "poll.full_listing_interval: 10s is shorter than poll.interval (1m)",
        ),
    ],
    ids=[
        "below interval",
        "below a longer interval",
        "word",
        "true",
        "zero",
        "bad interval",
        "full listing below the default interval",
        "full listing below interval",
    ],
)
def test_bad_analytics_intervals_are_reported(
    tmp_path: Path, poll: dict[str, object], problem: str
) -> None:
    """A bad poll.analytics_interval is one problem; one below the poll interval (like
    poll.full_listing_interval) names both values, and the key poll.interval only when
    it is written."""
    assert problems_of(render(poll=poll), tmp_path) == [problem]


# -- checked where the files it names are not (--config.check.skip-files) -------------------


def skipping(tmp_path: Path) -> str:
    """A document naming a token file, a credentials' token file and a public key file,
    none of which exists."""
    return yaml.safe_dump(
        {
            "api": {"token_file": "/run/secrets/cf_token"},
            "credentials": {"b": {"token_file": "b.token"}},
            "webhooks": {"public_key_file": "keys/webhooks.pem"},
            "apps": [
                {"account_id": ACCOUNT, "app_id": "x", "discover": True},
                {"account_id": ACCOUNT, "app_id": "y", "discover": True, "credentials": "b"},
            ],
        }
    )


def test_files_that_cannot_be_read_are_listed_apart(tmp_path: Path) -> None:
    """Token files that cannot be read are problems, and their keys are told apart (for
    --config.check to say how to check without them); one that holds no usable token is
    a problem only."""
    (tmp_path / "b.token").write_text("two tokens\n")
    with pytest.raises(ConfigError) as caught:
        loads(skipping(tmp_path), environ={}, base_dir=tmp_path)
    assert caught.value.problems == [
        "api.token_file: cannot read /run/secrets/cf_token: No such file or directory",
        f"credentials.b.token_file: {tmp_path}/b.token must hold one token with no spaces "
        "or line breaks",
    ]
    assert caught.value.unread == ("api.token_file",)


def test_without_reading_files_their_paths_are_kept(tmp_path: Path) -> None:
    """read_files=False: the files named are not read (their tokens are empty), and the
    configuration is otherwise the one start-up would use."""
    config = loads(skipping(tmp_path), environ={}, base_dir=tmp_path, read_files=False)
    assert str(config.api.token_file) == "/run/secrets/cf_token"
    assert config.api.token.reveal() == "" and config.tokens() == ()
    assert [c.token_file for c in config.credentials] == [tmp_path / "b.token"]
    assert config.webhooks is not None
    assert config.webhooks.public_key_file == tmp_path / "keys/webhooks.pem"


@pytest.mark.parametrize("read_files", [True, False], ids=["reading", "not reading"])
@pytest.mark.parametrize(
    "name", ["", "secrets/", ".", "secrets/..", "a\0b"], ids=["empty", "dir/", ".", "..", "NUL"]
)
def test_a_file_path_must_name_a_file(tmp_path: Path, name: str, read_files: bool) -> None:
    """A path that cannot name a file is a problem, whether or not the files are read."""
    text = render(api={"token_file": name})
    with pytest.raises(ConfigError) as caught:
        loads(text, environ={}, base_dir=tmp_path, read_files=read_files)
    assert caught.value.problems == ["api.token_file: must be the path of a file"]
    assert caught.value.unread == ()
