"""Attacks on what issue 17 changed that faces a user, the network, a file or a log: the
session error shown on the status page and in logs, durations, the command line's
unknown-flag messages, ``POST /-/reload`` without the lifecycle flag, and the page's
credentials table. Each test states what held or what was fixed."""

from __future__ import annotations

import io
import json
import logging
import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from exporter import cli, config, decode, logs, statuspage
from exporter.model import AppState, Livestream, Session, Snapshot, StreamState
from exporter.server import LIFECYCLE_OFF, create_app
from exporter.statuspage import CredentialsStatus
from exporter.webconfig import WebConfig, WebState
from tests.pages import ALLOWED_TAGS, Page
from tests.webauth import HASH, PASSWORD, USER, basic

if TYPE_CHECKING:
    from pathlib import Path

NOW = 1_800_000_000.0
SHORT_KEY = "sk_live_Q7f3Zp9K2m"  # too short for the secret-like runs that are redacted
SHORT_TOKEN = "tok-Aa1Bb2Cc3Dd4Ee"
WORDS = "word " * 38  # 190 characters: a secret after them is cut by the 200 clip


# -- a secret cut by the clip of a message ------------------------------------------------
def _session_body(message: str, key: str) -> dict[str, Any]:
    return {
        "data": {
            "livestream": {"id": "ls-1", "status": "ERRORED", "stream_key": key},
            "session": {
                "id": "s-1",
                "started_time": "2026-01-01T00:00:00Z",
                "stopped_time": "2026-01-01T01:00:00Z",
                "err_message": message,
            },
        }
    }


@pytest.mark.parametrize(
    "message",
    [
        WORDS + SHORT_KEY,
        WORDS + "key=" + SHORT_KEY,
        WORDS + f"({SHORT_KEY})",
        "x" * 195 + " " + SHORT_KEY,
    ],
    ids=["word", "after-equals", "in-brackets", "after-a-long-run"],
)
def test_a_session_error_cut_by_the_clip_shows_no_part_of_a_short_stream_key(
    message: str,
) -> None:
    """A stream key the clip cuts in two was no longer "quoted" whole, so the message
    was shown with the key's first characters: the clip now never ends inside a word."""
    found = decode.active_session(_session_body(message, SHORT_KEY), livestream_id="ls-1")
    assert found.session is not None
    shown = found.session.err_message
    assert shown is not None  # an ERRORED session still has an error to show
    assert SHORT_KEY[:6] not in shown, shown
    assert len(shown) <= decode.MAX_MESSAGE_LENGTH


def test_an_api_error_cut_by_the_clip_shows_no_part_of_a_short_token() -> None:
    """The API's error messages are clipped the same way: a token too short to look
    secret, echoed at the clip, leaves no prefix for the client's check to miss."""
    _, message = decode.error_summary({"error": {"message": WORDS + SHORT_TOKEN}})
    assert SHORT_TOKEN[:6] not in message, message
    assert message.startswith("word word")


def test_a_long_message_of_one_word_is_still_an_error() -> None:
    """A message with no space in its first 200 characters (which the clip cannot cut
    between words) still says there is an error, not nothing."""
    text = "ab.cd:" * 100
    found = decode.active_session(_session_body(text, SHORT_KEY), livestream_id="ls-1")
    assert found.session is not None and found.session.errored
    assert found.session.err_message


def test_clipping_between_words_keeps_what_fits() -> None:
    """A long message of words keeps its words up to the clip."""
    _, message = decode.error_summary({"error": {"message": "word " * 100}})
    assert message == "word " * 40


# -- durations -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["\uff11s", "\u0663\u0660", "\u0661m", "1\u0660s", "\u00b9s"],
    ids=["fullwidth", "arabic-plain", "arabic-unit", "mixed", "superscript"],
)
def test_durations_are_written_in_ascii_digits(text: str) -> None:
    """Python's \\d is any Unicode digit: a fullwidth 1 and ``s`` was one second, two
    Arabic-Indic digits thirty. A duration is written as Prometheus writes it, in ASCII
    digits."""
    with pytest.raises(ValueError, match="is not a duration above zero"):
        config.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("1" * 308 + "s", "at most 292y"),
        ("293y", "at most 292y"),
        ("999999999999d", "at most 292y"),
        ("0." + "0" * 320 + "1s", "at least 1ms"),
        ("0.5ms", "at least 1ms"),
    ],
    ids=["1e307s", "293y", "huge-days", "subnormal", "half-ms"],
)
def test_durations_beyond_any_use_are_refused(text: str, said: str) -> None:
    """A finite duration of 1e307 s passed, then the poller crashed on its first cycle
    (OverflowError: the budget per interval was infinite), and a subnormal one crashed
    --config.check; durations now lie between 1ms and 292y (Prometheus's own bounds)."""
    with pytest.raises(ValueError, match=said):
        config.parse_duration(text)


@pytest.mark.parametrize("text", ["292y", "1ms", "1y1w1d1h1m1s1ms", "1h 30m"])
def test_durations_at_the_bounds_pass(text: str) -> None:
    assert 0.001 <= config.parse_duration(text) <= 292 * 365 * 86400


@pytest.mark.parametrize(
    "poll",
    [
        {"interval": "1" * 308 + "s"},
        {"interval": "0." + "0" * 320 + "1s"},
        {"interval": "30s", "max_staleness": "1" * 309 + "s"},
    ],
    ids=["huge-interval", "tiny-interval", "huge-staleness"],
)
def test_config_check_of_an_absurd_duration_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], poll: dict[str, str]
) -> None:
    """--config.check answered a subnormal interval with a traceback (exit 1), and
    approved a 1e307 s one that then stopped the poller: both are configuration errors,
    exit 2, the value not quoted."""
    path = tmp_path / "config.yml"
    path.write_text(
        json.dumps(
            {
                "api": {"token": "t" * 40},
                "poll": poll,
                "apps": [{"account_id": "a", "app_id": "b", "discover": True}],
            }
        )
    )
    assert cli.main(["--config.check", "--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "poll." in err
    assert "1" * 30 not in err and "0" * 30 not in err


def test_a_rate_limit_window_beyond_any_use_is_refused() -> None:
    """A rate_limit window of 1e300 years crashed the poller's budget note
    (OverflowError); it is refused like any other absurd duration."""
    with pytest.raises(ValueError, match=r"the window .* at most 292y"):
        config.parse_rate_limit("1000/" + "9" * 300 + "y")


# -- logs ----------------------------------------------------------------------------------


BIDI = ["\u202e", "\u202a", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_bidi_controls_in_a_stream_name_are_escaped_in_logs(
    restore_root: None, fmt: logs.Format
) -> None:
    """A stream's name with a right-to-left override (U+202E) turned the rest of the
    line around in a terminal: ``level=error`` could be made to read as something else.
    The formatters escape bidirectional controls as they do control characters."""
    stream = io.StringIO()
    logs.configure(fmt=fmt, stream=stream)
    name = "stage" + "".join(BIDI) + " level=error"
    logging.getLogger("exporter.test").warning(
        "livestream is in error: %s", name, extra={"livestream_name": name}
    )
    [line] = stream.getvalue().split("\n")[:-1]
    for char in BIDI:
        assert char not in line
        assert f"\\u{ord(char):04x}" in line
    if fmt == "json":
        assert json.loads(line)["livestream_name"] == name  # still the name, once parsed


# -- the status page -----------------------------------------------------------------------
def _stream(sid: str, message: str, *, name: str) -> StreamState:
    return StreamState(
        livestream=Livestream(id=sid, status="ERRORED", name=name),
        live=False,
        session=Session(
            id="s-" + sid,
            started_time=NOW - 100,
            stopped_time=NOW - 50,
            err_message=message,
            viewer_seconds=math.inf,
            ingest_seconds=math.nan,
        ),
        last_update=NOW - 1,
    )


HOSTILE_MESSAGE = '</td></tr></table><script>alert(1)</script>\n\u202e"x=y'


@pytest.mark.parametrize(
    "numbers",
    [
        {"interval": math.inf, "window": math.nan, "counter_period": math.nan},
        {"interval": math.nan, "window": math.inf, "listing_period": math.inf},
        {"interval": -1.0, "window": 0.0, "counter_period": -math.inf},
    ],
    ids=["inf-interval", "nan-interval", "negative"],
)
def test_the_page_renders_absurd_numbers_and_hostile_messages(numbers: dict[str, float]) -> None:
    """inf and NaN in the credentials' budget fields and the session counters, and an
    error message that tries to close the cell: the page renders, with only its own
    tags, and shows the message as text."""
    fields: dict[str, Any] = {
        "name": "c<1>",
        "apps": 1,
        "requests": 10,
        "available": 0,
        "remaining": -5,
        "mode": "lanes",
        **numbers,
    }
    creds = CredentialsStatus(**fields)
    app = AppState(
        account_id="acc",
        app_id="app",
        streams=(_stream("ls-1", HOSTILE_MESSAGE, name=HOSTILE_MESSAGE),),
        up=True,
        last_success=NOW - 1,
    )
    snap = Snapshot(apps=(app,), taken_at=NOW - 1, cycles=3)
    page = statuspage.render(snap, (), NOW, "1", credentials=(creds,))
    parsed = Page(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS
    assert "<script>" not in page
    assert "alert(1)" in parsed.text


def test_thousands_of_errored_streams_keep_the_page_bounded() -> None:
    """10,000 ERRORED streams with the longest error message the decoder keeps: the
    page shows at most MAX_TOTAL_ROWS of them and stays a few MB."""
    message = "<" * decode.MAX_MESSAGE_LENGTH  # escaped to 4 characters each
    streams = tuple(
        _stream(f"ls-{i:05d}", message, name="&" * decode.MAX_LABEL_LENGTH) for i in range(10_000)
    )
    app = AppState(account_id="acc", app_id="app", streams=streams, up=True, last_success=NOW)
    page = statuspage.render(Snapshot(apps=(app,), taken_at=NOW, cycles=1), (), NOW, "1")
    assert page.count("<tr data-livestream-id=") == statuspage.MAX_ROWS
    assert len(page.encode()) < 5_000_000


# -- POST /-/reload ----------------------------------------------------------------------
async def test_reload_without_the_flag_says_nothing_before_authentication() -> None:
    """Behind basic auth, a client without the password gets 401 for POST /-/reload as
    for any path, not the 403 that says lifecycle APIs are off; with it, 403 and why,
    whatever the body; other methods 405."""
    state = WebState(WebConfig(users=MappingProxyType({USER: HASH.encode()})))
    app = create_app(registry=CollectorRegistry(), ready=lambda: True, web_state=state)
    good = {"Authorization": basic(USER, PASSWORD)}
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for method in ("POST", "GET", "HEAD", "PUT", "DELETE"):
                response = await client.request(method, "/-/reload")
                assert response.status == 401, method
                assert "lifecycle" not in await response.text()
            response = await client.post(
                "/-/reload", headers=good, data=io.BytesIO(b"x" * 4_000_000)
            )
            assert response.status == 403
            assert await response.text() == LIFECYCLE_OFF
            for method in ("GET", "HEAD", "PUT"):
                response = await client.request(method, "/-/reload", headers=good)
                assert response.status == 405, method
    finally:
        state.close()


# -- the command line --------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["--" + SHORT_TOKEN * 3],
        ["--" + "a" * 100_000],
        ["--a\x1b[2Jb"],
        ["--web.listen\u202eaddress", ":1"],
        ["--config.file", "x.yml", "--bogus=" + SHORT_TOKEN],
        ["-config.file=" + SHORT_TOKEN],
    ],
    ids=["token", "100kB", "escape", "bidi", "value", "one-dash-value"],
)
def test_an_unknown_flag_never_quotes_a_token_or_a_control(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Exit 2, one line, no token, no control or bidi character, a bounded message."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400, err[:400]
    assert SHORT_TOKEN not in err and "\x1b" not in err and "\u202e" not in err
    assert "unknown flag" in err
