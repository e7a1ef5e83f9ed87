"""Lenient decoding of RealtimeKit bodies: every published shape, every lying type."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any, Final

import pytest

from exporter import decode
from exporter.decode import DecodeError
from exporter.model import ActiveSession, Livestream, Session, Totals, Webhook

# The published examples (realtimekit-livestreams.openapi.json), secrets included on purpose.
LISTING_STREAM_KEY = "f26566285faca6fbe2e79a73a66rsrrsrrsr3cde23a2bb7dbc6c2c1761b98f4e4"
LISTING_INGEST = "rtmps://live.cloudflare.com:443/live/"
SESSION_STREAM_KEY = "sk_ap-south-1_x3lKBdJa8UDN_3q6PPLMJnqnbnhyrkXrOG504MUsxnZ"
SESSION_INGEST = "rtmps://2ec802dd47b0.global-contribute.live-video.net:443/app/"

LISTING_ITEM: dict[str, Any] = {
    "created_at": "2023-07-15T11:48:34.753Z",
    "disabled": False,
    "id": "3fd739f4-3c41-456e-bfba-6ebd51e16d2c",
    "ingest_server": LISTING_INGEST,
    "meeting_id": None,
    "name": None,
    "playback_url": "https://customer-s8oj0c1n5ek8ah1e.cloudflarestream.com/7de6a3fec0f9c05bf1df140950d3a237/manifest/video.m3u8",
    "status": "IDLE",
    "stream_key": LISTING_STREAM_KEY,
    "updated_at": "2023-07-15T11:48:34.753Z",
}
LISTING_EXAMPLE: dict[str, Any] = {
    "data": [LISTING_ITEM],
    "paging": {"end_offset": 1, "start_offset": 1, "total_count": 1},
    "success": True,
}
LISTING_STREAM = Livestream(
    id="3fd739f4-3c41-456e-bfba-6ebd51e16d2c",
    status="IDLE",
    name=None,
    meeting_id=None,
    disabled=False,
)

SESSION_EXAMPLE: dict[str, Any] = {
    "success": True,
    "data": {
        "livestream": {
            "id": "b60ef3da-fbbb-441b-9168-8235b0035248",
            "name": None,
            "ingest_server": SESSION_INGEST,
            "stream_key": SESSION_STREAM_KEY,
            "status": "LIVE",
            "meeting_id": "bbb87945-df1c-49d9-8159-262a7ae6cfde",
            "playback_url": "https://2ec802dd47b0.ap-south-1.playback.live-video.net/api/video/v1/ap-south-1.944908621410.channel.ob5KQUrP5Zaf.m3u8",
            "created_at": "2023-07-15T07:08:26.634Z",
            "updated_at": "2023-07-15T07:08:40.726Z",
            "disabled": False,
        },
        "session": {
            "id": "cf55a850-c3fd-46b5-b5d2-25b3b9aa1686",
            "livestream_id": "b60ef3da-fbbb-441b-9168-8235b0035248",
            "err_message": None,
            "invoked_time": None,
            "started_time": "2023-07-15T07:08:39.000Z",
            "stopped_time": None,
            "created_at": "2023-07-15T07:08:40.742Z",
            "updated_at": "2023-07-15T07:08:40.742Z",
            "ingest_seconds": 60,
            "viewer_seconds": 60,
        },
    },
}
SESSION_STREAM_ID = "b60ef3da-fbbb-441b-9168-8235b0035248"
STARTED = 1689404919.0  # 2023-07-15T07:08:39Z
STOPPED = 1689405519.5  # ten minutes later
LIVE_STREAM = Livestream(
    id=SESSION_STREAM_ID,
    status="LIVE",
    name=None,
    meeting_id="bbb87945-df1c-49d9-8159-262a7ae6cfde",
    disabled=False,
)
ACTIVE_SESSION = Session(
    id="cf55a850-c3fd-46b5-b5d2-25b3b9aa1686",
    started_time=STARTED,
    stopped_time=None,
    err_message=None,
    ingest_seconds=60.0,
    viewer_seconds=60.0,
)


# GET .../livestreams/sessions/{livestream-session-id}: ``data`` is the session itself.
SESSION_BY_ID_EXAMPLE: dict[str, Any] = {
    "data": {
        "created_at": "2023-07-15T07:08:40.742Z",
        "err_message": None,
        "id": "cf55a850-c3fd-46b5-b5d2-25b3b9aa1686",
        "ingest_seconds": 60,
        "invoked_time": None,
        "livestream_id": "b60ef3da-fbbb-441b-9168-8235b0035248",
        "started_time": "2023-07-15T07:08:39.000Z",
        "stopped_time": None,
        "updated_at": "2023-07-15T07:08:40.742Z",
        "viewer_seconds": 60,
    },
    "success": True,
}
MISSING: Any = object()  # as a raw value: leave the key out


def stream(stream_id: str, status: str = "IDLE", **extra: Any) -> dict[str, Any]:
    return {"id": stream_id, "status": status, "stream_key": LISTING_STREAM_KEY, **extra}


def session_body(**session_fields: Any) -> dict[str, Any]:
    """The active-session example with some of its ``data.session`` fields replaced."""
    body = copy.deepcopy(SESSION_EXAMPLE)
    for key, value in session_fields.items():
        body["data"]["session"][key] = value
    return body


# --- listing ---------------------------------------------------------------------------


def test_listing_reads_the_example_array_with_top_level_paging() -> None:
    """The published example (``data`` array, ``paging`` at the top) decodes completely."""
    page = decode.listing_page(LISTING_EXAMPLE)
    assert page.livestreams == (LISTING_STREAM,)
    assert page.total_count == 1
    assert page.entries == 1


@pytest.mark.parametrize("key", ["livestreams", "data"])
def test_listing_reads_an_object_with_a_nested_list_and_paging_inside(key: str) -> None:
    """``data`` as an object holding the list and ``paging`` is read like the array shape."""
    doc = {
        "success": True,
        "data": {
            key: [stream("a", "LIVE"), stream("b", "IDLE")],
            "paging": {"start_offset": 1, "end_offset": 2, "total_count": 7},
        },
    }
    page = decode.listing_page(doc)
    assert page.livestreams == (
        Livestream(id="a", status="LIVE"),
        Livestream(id="b", status="IDLE"),
    )
    assert page.total_count == 7
    assert page.entries == 2


@pytest.mark.parametrize("key", ["items", "results", "streams"])
def test_listing_object_with_a_list_under_a_guessed_key_and_no_id_is_a_decode_error(
    key: str,
) -> None:
    """Only ``livestreams`` and ``data`` hold the nested list; other keys are not guessed."""
    doc = {"success": True, "data": {key: [stream("a", "LIVE")], "paging": {"total_count": 1}}}
    with pytest.raises(DecodeError, match="holds no livestreams"):
        decode.listing_page(doc)


def test_listing_prefers_top_level_paging_over_paging_inside_data() -> None:
    """When both places hold paging, the top-level one (the real answers' place) wins."""
    doc = {
        "data": {"livestreams": [stream("a")], "paging": {"total_count": 99}},
        "paging": {"total_count": 1, "start_offset": 1, "end_offset": 1},
    }
    assert decode.listing_page(doc).total_count == 1


def test_listing_reads_the_schemas_single_object_with_paging_inside() -> None:
    """The schema's reading (``data`` is one livestream with ``paging`` inside) gives one stream."""
    item = dict(LISTING_ITEM, paging={"end_offset": 1, "start_offset": 1, "total_count": 1})
    page = decode.listing_page({"success": True, "data": item})
    assert page.livestreams == (LISTING_STREAM,)
    assert page.total_count == 1


def test_listing_keeps_duplicates_for_the_client_to_resolve() -> None:
    """A page listing one id twice is decoded as sent; de-duplication is the client's job."""
    doc = {"data": [stream("a", "LIVE"), stream("a", "IDLE")]}
    page = decode.listing_page(doc)
    assert [s.status for s in page.livestreams] == ["LIVE", "IDLE"]


def test_listing_drops_entries_without_an_id_but_counts_them() -> None:
    """An entry with no id cannot be attributed, yet it still counts towards the page size."""
    doc = {"data": [stream("a"), {"status": "LIVE", "name": "anonymous"}, stream("", "LIVE")]}
    page = decode.listing_page(doc)
    assert [s.id for s in page.livestreams] == ["a"]
    assert page.entries == 3


def test_listing_decodes_streams_with_a_missing_or_odd_status_next_to_normal_ones() -> None:
    """One stream with a null or unexpected status does not fail the listing page."""
    doc = {
        "data": [
            stream("a", "LIVE"),
            {"id": "b", "status": None, "stream_key": LISTING_STREAM_KEY},
            stream("c", "re-connecting"),
            stream("d", "IDLE"),
        ],
        "paging": {"total_count": 4, "start_offset": 1, "end_offset": 4},
    }
    page = decode.listing_page(doc)
    assert page.livestreams == (
        Livestream(id="a", status="LIVE"),
        Livestream(id="b", status="UNKNOWN"),
        Livestream(id="c", status="RE-CONNECTING"),
        Livestream(id="d", status="IDLE"),
    )
    assert page.entries == 4


def test_listing_without_paging_has_none() -> None:
    """A listing without any paging object has no total (``None``)."""
    page = decode.listing_page({"data": []})
    assert page.livestreams == ()
    assert page.total_count is None
    assert page.entries == 0


@pytest.mark.parametrize(
    "doc",
    [
        {"success": True},
        {"success": True, "data": None},
        {"success": True, "data": "livestreams"},
        {"success": True, "data": 3},
        {"success": True, "data": {"paging": {"total_count": 1}}},
    ],
    ids=["absent", "null", "string", "number", "object-without-list"],
)
def test_listing_without_readable_livestreams_is_a_decode_error(doc: dict[str, Any]) -> None:
    """A listing whose streams cannot be found is an error, never a silently empty listing."""
    with pytest.raises(DecodeError):
        decode.listing_page(doc)


def test_entries_that_cannot_be_attributed_are_skipped_and_counted() -> None:
    """Non-objects and objects without an id are skipped, not fatal, and counted as skipped."""
    page = decode.listing_page(
        {"data": ["not an object", None, {"status": "LIVE"}, {"id": "a", "status": "IDLE"}]}
    )
    assert [s.id for s in page.livestreams] == ["a"]
    assert (page.entries, page.skipped) == (4, 3)


@pytest.mark.parametrize(
    ("paging", "expected"),
    [
        ({"total_count": 5, "start_offset": 1, "end_offset": 2}, 5),
        ({"total_count": "5", "start_offset": "1", "end_offset": "2"}, 5),
        ({"total_count": 5.0}, 5),
        ({"total_count": 5.5, "start_offset": -1, "end_offset": "x"}, None),
        ({"total_count": -1}, None),
        ("5", None),
        ([5], None),
    ],
    ids=[
        "int",
        "string",
        "whole-float",
        "junk",
        "negative",
        "not-object-string",
        "not-object-list",
    ],
)
def test_paging_total_reads_whole_numbers_and_ignores_the_rest(
    paging: object, expected: int | None
) -> None:
    """The total may be a string or a whole float; anything else is unknown (``None``)."""
    assert decode.listing_page({"data": [], "paging": paging}).total_count == expected


# --- livestream fields ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("LIVE", "LIVE"),
        ("IDLE", "IDLE"),
        ("ERRORED", "ERRORED"),
        ("INVOKED", "INVOKED"),
        ("OFFLINE", "OFFLINE"),
        ("live", "LIVE"),
        (" Idle ", "IDLE"),
        ("PAUSED", "PAUSED"),
        ("STOPPED_BY_ADMIN", "STOPPED_BY_ADMIN"),
    ],
    ids=[
        "live",
        "idle",
        "errored",
        "invoked",
        "offline",
        "lower-case",
        "mixed-case-padded",
        "unknown-passes",
        "unknown-underscore",
    ],
)
def test_status_is_upper_cased_and_unknown_ones_pass_through(raw: str, expected: str) -> None:
    """Statuses are normalised to upper case and the set is open."""
    assert decode.status_value(raw) == expected
    assert decode.livestream({"id": "x", "status": raw}) == Livestream(id="x", status=expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (MISSING, "UNKNOWN"),
        (None, "UNKNOWN"),
        (1, "UNKNOWN"),
        (True, "UNKNOWN"),
        (["LIVE"], "UNKNOWN"),
        ({"value": "LIVE"}, "UNKNOWN"),
        ("", "UNKNOWN"),
        ("   ", "UNKNOWN"),
        ("\t\n", "UNKNOWN"),
        ("live now", "LIVE NOW"),
        ("  live \t\n  now  ", "LIVE NOW"),
        ("re-connecting", "RE-CONNECTING"),
        ("LIVE;DROP", "LIVE;DROP"),
        ("9lives", "9LIVES"),
        ("a" * 40, "A" * 40),
        ("a" * 64, "A" * 64),
        ("a" * 65, "A" * 64),
        ("  " + "ab   " * 30, "AB " * 21 + "A"),
    ],
    ids=[
        "missing",
        "null",
        "number",
        "bool",
        "list",
        "object",
        "empty",
        "blank",
        "only-control-whitespace",
        "space",
        "whitespace-collapsed",
        "dash",
        "punctuation",
        "leading-digit",
        "longer-than-a-word",
        "at-the-limit",
        "cut-to-the-limit",
        "collapsed-before-cutting",
    ],
)
def test_status_that_is_missing_or_odd_still_decodes(raw: object, expected: str) -> None:
    """Any status text is upper-cased, whitespace-collapsed and cut; none at all is UNKNOWN."""
    item: dict[str, Any] = {"id": "x"} if raw is MISSING else {"id": "x", "status": raw}
    if raw is not MISSING:
        assert decode.status_value(raw) == expected
    assert decode.livestream(item) == Livestream(id="x", status=expected)
    assert len(expected) <= decode.MAX_STATUS_LENGTH == 64


def test_livestream_reads_name_meeting_and_disabled_and_clips_long_text() -> None:
    """Optional fields are read as text or booleans; over-long labels are clipped."""
    item = stream(
        "  s1  ", "LIVE", name="n" * 300, meeting_id=1234, disabled="true", ingest_server="x"
    )
    result = decode.livestream(item)
    assert result == Livestream(
        id="s1", status="LIVE", name="n" * 256, meeting_id="1234", disabled=True
    )


def test_livestream_without_id_uses_the_fallback_id() -> None:
    """A livestream object missing its id takes the id the caller asked about."""
    assert decode.livestream({"status": "LIVE"}, fallback_id="asked") == Livestream(
        id="asked", status="LIVE"
    )
    assert decode.livestream({"status": "LIVE"}) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (60, 60.0),
        ("60", 60.0),
        (" 60 ", 60.0),
        (116.11599994199997, 116.11599994199997),
        ("116.1", 116.1),
        (0, 0.0),
        ("-0", 0.0),
        ("abc", None),
        ("", None),
        (None, None),
        (True, None),
        (False, None),
        (math.nan, None),
        ("NaN", None),
        (math.inf, None),
        ("inf", None),
        ("1e400", None),
        (10**400, None),
        (-1, None),
        ("-0.5", None),
        ([60], None),
        ({"value": 60}, None),
    ],
    ids=[
        "int",
        "numeric-string",
        "padded-string",
        "fraction",
        "fraction-string",
        "zero",
        "negative-zero",
        "junk-string",
        "empty-string",
        "null",
        "true",
        "false",
        "nan",
        "nan-string",
        "inf",
        "inf-string",
        "overflow-string",
        "int-too-big-for-float",
        "negative",
        "negative-string",
        "list",
        "object",
    ],
)
def test_number_reads_finite_non_negative_numbers_and_numeric_strings(
    raw: object, expected: float | None
) -> None:
    """Counters come as numbers or strings; anything not a finite non-negative number is None."""
    result = decode.number(raw)
    assert result == expected
    if result is not None:
        assert type(result) is float
        assert math.copysign(1.0, result) == 1.0


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("ingest_seconds", "116.11599994199997", 116.11599994199997),
        ("viewer_seconds", "abc", None),
        ("ingest_seconds", True, None),
    ],
    ids=["string-counter", "junk-counter", "bool-counter"],
)
def test_session_counters_use_the_lenient_number_reading(
    field: str, raw: object, expected: float | None
) -> None:
    """Session counters accept what ``number`` accepts and drop the rest."""
    result = decode.active_session(session_body(**{field: raw}), livestream_id=SESSION_STREAM_ID)
    assert result.session is not None
    assert getattr(result.session, field) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        (" False ", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        (1, True),
        (0, False),
        (2, None),
        (1.0, None),
        ("maybe", None),
        ("", None),
        (None, None),
        ([], None),
    ],
    ids=[
        "true",
        "false",
        "true-string",
        "false-string",
        "upper-string",
        "padded-string",
        "one-string",
        "zero-string",
        "yes",
        "no",
        "one",
        "zero",
        "two",
        "float",
        "junk",
        "empty",
        "null",
        "list",
    ],
)
def test_boolean_reads_bools_and_their_string_forms(raw: object, expected: bool | None) -> None:
    """``disabled`` comes as a bool or a string; anything unclear is unknown (None)."""
    assert decode.boolean(raw) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2023-07-15T07:08:40.742Z", 1689404920.742),
        ("2023-07-15T07:08:40.742z", 1689404920.742),
        ("2023-07-15T09:08:40.742+02:00", 1689404920.742),
        ("2023-07-15T02:08:40.742-05:00", 1689404920.742),
        ("2023-07-15T07:08:40Z", 1689404920.0),
        ("2023-07-15T07:08:40", 1689404920.0),
        ("2023-07-15T07:08:40.742123456Z", 1689404920.742123),
        ("2023-07-15T09:08:40.742123456+02:00", 1689404920.742123),
        ("2023-07-15T07:08:40.7Z", 1689404920.7),
        (" 2023-07-15T07:08:40Z ", 1689404920.0),
        (1689404920, 1689404920.0),
        (1689404920.5, 1689404920.5),
        (1689404920742, 1689404920.742),
        ("1689404920", 1689404920.0),
        ("1689404920742", 1689404920.742),
        ("junk", None),
        ("2023-13-45T99:99:99Z", None),
        ("", None),
        (None, None),
        (True, None),
        (0, None),
        (-5, None),
        (math.nan, None),
        (math.inf, None),
        (10**400, None),
        ("1" * 400, None),
        ("0001-01-01T00:00:00Z", None),
        (["2023-07-15T07:08:40Z"], None),
    ],
    ids=[
        "iso-ms-z",
        "iso-ms-lower-z",
        "iso-plus-offset",
        "iso-minus-offset",
        "iso-no-fraction",
        "iso-naive-is-utc",
        "iso-nanoseconds",
        "iso-nanoseconds-offset",
        "iso-one-digit-fraction",
        "iso-padded",
        "epoch-seconds",
        "epoch-seconds-fraction",
        "epoch-ms",
        "epoch-seconds-string",
        "epoch-ms-string",
        "junk",
        "impossible-date",
        "empty",
        "null",
        "bool",
        "zero",
        "negative",
        "nan",
        "inf",
        "int-too-big-for-float",
        "digits-too-big-for-float",
        "before-1970",
        "list",
    ],
)
def test_timestamp_reads_iso_and_epoch_forms_into_unix_seconds(
    raw: object, expected: float | None
) -> None:
    """Times come as ISO 8601 at any precision or as epoch seconds/ms; junk is None."""
    result = decode.timestamp(raw)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, abs=1e-6)


# --- active session ---------------------------------------------------------------------


def test_active_session_reads_the_example_as_live() -> None:
    """The published example decodes to a LIVE stream with an active session."""
    result = decode.active_session(SESSION_EXAMPLE, livestream_id=SESSION_STREAM_ID)
    assert result == ActiveSession(livestream=LIVE_STREAM, session=ACTIVE_SESSION)
    assert result.session is not None
    assert result.session.active
    assert not result.session.errored


def test_active_session_with_stopped_time_is_not_active() -> None:
    """A session whose ``stopped_time`` is set is over, even on the active-session endpoint."""
    body = session_body(stopped_time="2023-07-15T07:18:39.500Z", err_message="encoder lost")
    result = decode.active_session(body, livestream_id=SESSION_STREAM_ID)
    assert result.session is not None
    assert result.session.stopped_time == pytest.approx(STOPPED)
    assert not result.session.active
    assert result.session.errored


@pytest.mark.parametrize(
    ("message", "key", "read"),
    [
        ("encoder lost", SESSION_STREAM_KEY, "encoder lost"),
        (
            f"bad key {SESSION_STREAM_KEY} for ls b60ef3da-fbbb-441b-9168-8235b0035248",
            SESSION_STREAM_KEY,
            "bad key <redacted> for ls b60ef3da-fbbb-441b-9168-8235b0035248",
        ),
        ("bad key SHORTKEY9", "shortkey9", decode.WITHHELD_KEY),  # too short to look secret
        ("  ", SESSION_STREAM_KEY, None),
        ("x" * 500, SESSION_STREAM_KEY, "<redacted>"),
        ("é " * 300, SESSION_STREAM_KEY, ("é " * 100).strip()),
    ],
    ids=["plain", "long-key", "short-key", "blank", "one-long-run", "clipped"],
)
def test_a_session_error_message_is_redacted_and_clipped(
    message: str, key: str, read: str | None
) -> None:
    """err_message is shown and logged: runs that look like a secret are redacted (a
    UUID stays), one that quotes the stream key of the answer's livestream is withheld
    whole, and it is clipped to MAX_MESSAGE_LENGTH."""
    body = session_body(stopped_time="2023-07-15T07:18:39.500Z", err_message=message)
    body["data"]["livestream"]["stream_key"] = key
    result = decode.active_session(body, livestream_id=SESSION_STREAM_ID)
    assert result.session is not None
    assert result.session.err_message == read
    by_id = decode.session_by_id({"data": body["data"]["session"]})
    assert by_id is not None
    if read != decode.WITHHELD_KEY:  # the by-id answer has no stream key to compare with
        assert by_id.err_message == read


@pytest.mark.parametrize(
    "data",
    [
        {"livestream": SESSION_EXAMPLE["data"]["livestream"], "session": None},
        {"livestream": SESSION_EXAMPLE["data"]["livestream"]},
        {"livestream": SESSION_EXAMPLE["data"]["livestream"], "sessions": []},
    ],
    ids=["session-null", "session-absent", "sessions-empty"],
)
def test_active_session_without_a_session_is_not_live(data: dict[str, Any]) -> None:
    """No session object means "not live", not an error; the livestream is still read."""
    result = decode.active_session({"success": True, "data": data}, livestream_id="x")
    assert result == ActiveSession(livestream=LIVE_STREAM, session=None)


@pytest.mark.parametrize(
    "doc",
    [{"success": True, "data": None}, {"success": True}],
    ids=["data-null", "data-absent"],
)
def test_active_session_without_data_is_empty(doc: dict[str, Any]) -> None:
    """A 200 without ``data`` answers "nothing active"."""
    assert decode.active_session(doc, livestream_id="x") == ActiveSession(None, None)


@pytest.mark.parametrize(
    ("sessions", "expected_id"),
    [
        ([{"id": "only", "started_time": "2023-07-15T07:08:39Z"}], "only"),
        (
            [
                {"id": "old", "started_time": 1689000000, "stopped_time": 1689000600},
                {"id": "now", "started_time": 1689404919, "stopped_time": None},
            ],
            "now",
        ),
        (
            [
                {"id": "b", "started_time": 1689000000, "stopped_time": 1689000600},
                {"id": "a", "started_time": 1688000000, "stopped_time": 1688000600},
            ],
            "b",
        ),
        (["junk", {"id": "real", "started_time": 1689404919}], "real"),
    ],
    ids=["single", "active-after-stopped", "all-stopped-first-wins", "skips-non-objects"],
)
def test_active_session_reads_a_sessions_array(sessions: list[object], expected_id: str) -> None:
    """The ``sessions`` array form is accepted; an active session in it is preferred."""
    doc = {"data": {"livestream": {"status": "LIVE"}, "sessions": sessions}}
    result = decode.active_session(doc, livestream_id="asked")
    assert result.session is not None
    assert result.session.id == expected_id
    assert result.livestream == Livestream(id="asked", status="LIVE")


def test_active_session_ignores_a_livestream_without_status() -> None:
    """A livestream object without a status is not a stream state to export."""
    doc = {"data": {"livestream": {"id": "x", "name": "n"}, "session": None}}
    assert decode.active_session(doc, livestream_id="x") == ActiveSession(None, None)


@pytest.mark.parametrize(
    "doc",
    [
        {"data": ["livestream"]},
        {"data": "live"},
        {"data": {"session": "running"}},
        {"data": {"session": 1}},
    ],
    ids=["data-list", "data-string", "session-string", "session-number"],
)
def test_active_session_with_unreadable_parts_is_a_decode_error(doc: dict[str, Any]) -> None:
    """Parts that are present but of the wrong kind are decode errors."""
    with pytest.raises(DecodeError):
        decode.active_session(doc, livestream_id="x")


@pytest.mark.parametrize(
    ("status", "expected"),
    [(7, "UNKNOWN"), ("", "UNKNOWN"), ("re-connecting", "RE-CONNECTING")],
    ids=["number", "empty", "odd-word"],
)
def test_active_session_livestream_with_an_odd_status_still_decodes(
    status: object, expected: str
) -> None:
    """An unreadable or unexpected livestream status is read, not a decode error."""
    doc = {"data": {"livestream": {"id": "x", "status": status}, "session": None}}
    assert decode.active_session(doc, livestream_id="x") == ActiveSession(
        livestream=Livestream(id="x", status=expected), session=None
    )


@pytest.mark.parametrize(
    ("started", "stopped", "expected"),
    [
        ("2023-07-15T07:08:39Z", None, (STARTED, None, False, True)),
        ("not a time", None, (None, None, False, True)),
        (None, None, (None, None, False, True)),
        (MISSING, MISSING, (None, None, False, True)),
        ("2023-07-15T07:08:39Z", "", (STARTED, None, False, True)),
        ("2023-07-15T07:08:39Z", "2023-07-15T07:18:39.500Z", (STARTED, STOPPED, False, False)),
        ("2023-07-15T07:08:39Z", "not a time", (STARTED, None, True, False)),
        ("2023-07-15T07:08:39Z", 0, (STARTED, None, True, False)),
        (None, "not a time", (None, None, True, False)),
    ],
    ids=[
        "started-not-stopped",
        "unreadable-start-not-stopped",
        "null-start-not-stopped",
        "no-times-at-all",
        "empty-stop",
        "stopped",
        "unreadable-stop",
        "zero-stop",
        "only-an-unreadable-stop",
    ],
)
def test_session_is_active_until_a_stop_time_is_given_readable_or_not(
    started: object, stopped: object, expected: tuple[float | None, float | None, bool, bool]
) -> None:
    """A session with no stop time is active; a non-empty stop time, even unreadable, ends it."""
    raw: dict[str, Any] = {"id": "s1"}
    if started is not MISSING:
        raw["started_time"] = started
    if stopped is not MISSING:
        raw["stopped_time"] = stopped
    result = decode.session(raw)
    assert result is not None
    started_time, stopped_time, ended, active = expected
    assert result.started_time == (None if started_time is None else pytest.approx(started_time))
    assert result.stopped_time == (None if stopped_time is None else pytest.approx(stopped_time))
    assert (result.ended, result.active) == (ended, active)


# --- session by id ----------------------------------------------------------------------


def test_session_by_id_reads_the_example() -> None:
    """The published example of the session-by-id endpoint (``data`` is the session) decodes."""
    assert decode.session_by_id(SESSION_BY_ID_EXAMPLE) == ACTIVE_SESSION


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"success": True, "data": {"session": SESSION_BY_ID_EXAMPLE["data"]}},
            ACTIVE_SESSION,
        ),
        (
            {
                "success": True,
                "data": dict(
                    SESSION_BY_ID_EXAMPLE["data"],
                    stopped_time="2023-07-15T07:18:39.500Z",
                    err_message="encoder lost",
                    ingest_seconds="600",
                ),
            },
            Session(
                id="cf55a850-c3fd-46b5-b5d2-25b3b9aa1686",
                started_time=STARTED,
                stopped_time=STOPPED,
                err_message="encoder lost",
                ingest_seconds=600.0,
                viewer_seconds=60.0,
            ),
        ),
        ({"success": True, "data": None}, None),
        ({"success": True}, None),
    ],
    ids=["nested-under-session", "stopped-final-values", "data-null", "data-absent"],
)
def test_session_by_id_reads_the_session_nested_or_not_and_none_without_data(
    doc: dict[str, Any], expected: Session | None
) -> None:
    """``data.session`` is accepted as well as ``data``; no data at all is no session."""
    assert decode.session_by_id(doc) == expected


@pytest.mark.parametrize(
    "data",
    ["session", 1, ["session"], {"unrelated": 1}],
    ids=["string", "number", "list-of-string", "object-without-session"],
)
def test_session_by_id_with_data_that_is_not_a_session_object_is_a_decode_error(
    data: object,
) -> None:
    """A ``data`` that is present but not a session object is a decode error."""
    with pytest.raises(DecodeError):
        decode.session_by_id({"success": True, "data": data})


# --- secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoded", "secrets"),
    [
        (
            lambda: decode.listing_page(LISTING_EXAMPLE),
            (LISTING_STREAM_KEY, LISTING_INGEST),
        ),
        (
            lambda: decode.listing_page({"data": dict(LISTING_ITEM, paging={"total_count": 1})}),
            (LISTING_STREAM_KEY, LISTING_INGEST),
        ),
        (
            lambda: decode.active_session(SESSION_EXAMPLE, livestream_id=SESSION_STREAM_ID),
            (SESSION_STREAM_KEY, SESSION_INGEST),
        ),
    ],
    ids=["listing-array", "listing-single-object", "active-session"],
)
def test_stream_key_and_ingest_server_never_reach_the_model(
    decoded: Any, secrets: tuple[str, ...]
) -> None:
    """Decoded objects hold neither the stream key nor the ingest server, in any form."""
    result = decoded()
    text = repr(result)
    for secret in secrets:
        assert secret not in text
    for model in (Livestream, Session):
        assert "stream_key" not in model.__slots__
        assert "ingest_server" not in model.__slots__


# --- envelopes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"success": False, "error": {"code": 404, "message": "No active session found"}},
            (404, "No active session found"),
        ),
        (
            {
                "success": False,
                "errors": [{"code": 10000, "message": "Authentication error"}],
                "messages": [],
                "result": None,
            },
            (10000, "Authentication error"),
        ),
        (
            {
                "success": False,
                "errors": [
                    "junk",
                    {"code": "971", "message": "More than 1200 requests per 300 seconds"},
                ],
                "result": None,
            },
            (971, "More than 1200 requests per 300 seconds"),
        ),
        ({"success": False, "error": "Bad request"}, (None, "Bad request")),
        ({"success": False, "error": {"code": 500}}, (500, "")),
        ({"success": False, "error": {"message": "m " * 150}}, (None, "m " * 100)),
        ({"success": False, "errors": []}, (None, "")),
        ({"success": False}, (None, "")),
        (["error"], (None, "")),
        (None, (None, "")),
    ],
    ids=[
        "realtimekit",
        "gateway",
        "gateway-string-code-skips-junk",
        "error-string",
        "no-message",
        "long-message-clipped",
        "errors-empty",
        "no-error",
        "not-object",
        "null",
    ],
)
def test_error_summary_reads_both_envelopes(doc: object, expected: tuple[int | None, str]) -> None:
    """Code and message come from RealtimeKit's ``error`` or the gateway's ``errors``."""
    assert decode.error_summary(doc) == expected


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"success": False, "error": {}}, True),
        ({"success": True, "data": []}, False),
        ({"data": []}, False),
        ({"success": "false"}, False),
        ([], False),
    ],
    ids=["false", "true", "absent", "string-false", "not-object"],
)
def test_is_failure_only_on_explicit_success_false(doc: object, expected: bool) -> None:
    """Only a literal ``success: false`` marks a 2xx body as a failure."""
    assert decode.is_failure(doc) is expected


# --- raw bodies -------------------------------------------------------------------------


def test_parse_json_reads_json() -> None:
    """A JSON body becomes its Python value."""
    assert decode.parse_json(json.dumps(LISTING_EXAMPLE).encode()) == LISTING_EXAMPLE


@pytest.mark.parametrize(
    "body",
    [
        b"<html>Bad gateway</html>",
        json.dumps(LISTING_EXAMPLE).encode()[:-7],
        b"",
        b"\xff\xfe\x00",
        b"[" * 100_000,
        b"1" * 5000,
    ],
    ids=["html", "truncated", "empty", "not-utf8", "too-deep", "too-many-digits"],
)
def test_parse_json_raises_decode_error_on_anything_else(body: bytes) -> None:
    """Every way a body can fail to be JSON is a DecodeError, never another exception."""
    with pytest.raises(DecodeError, match="not JSON"):
        decode.parse_json(body)


@pytest.mark.parametrize("doc", [None, [], [LISTING_EXAMPLE], "data", 1, True])
@pytest.mark.parametrize(
    "parse",
    [
        decode.listing_page,
        lambda d: decode.active_session(d, livestream_id="x"),
        decode.session_by_id,
    ],
    ids=["listing", "active-session", "session-by-id"],
)
def test_a_document_that_is_not_an_object_is_a_decode_error(parse: Any, doc: object) -> None:
    """Every endpoint needs a JSON object at the top."""
    with pytest.raises(DecodeError):
        parse(doc)


@pytest.mark.parametrize(
    "doc",
    [{"data": {"session": {}}}, {"data": {"session": {"err_message": None, "ingest_seconds": 5}}}],
    ids=["empty", "no-id-or-times"],
)
def test_session_object_with_nothing_that_says_it_exists_is_no_session(
    doc: dict[str, Any],
) -> None:
    """A session object without id or times is read as no session, so it cannot mark live."""
    assert decode.active_session(doc, livestream_id="x").session is None


def test_session_by_id_with_a_non_object_session_is_a_decode_error() -> None:
    """``data.session`` that is not an object is an error, not an empty session."""
    with pytest.raises(DecodeError):
        decode.session_by_id({"success": True, "data": {"session": "running"}})


def test_status_cut_to_length_does_not_end_in_a_space() -> None:
    """A status cut at the length limit loses a trailing space left by the cut."""
    assert decode.status_value("a" * 63 + " b") == "A" * 63


@pytest.mark.parametrize(
    "doc",
    [
        {"data": [SESSION_BY_ID_EXAMPLE["data"]]},
        {"data": {"data": [SESSION_BY_ID_EXAMPLE["data"]], "paging": {"total_count": 1}}},
        {"data": {"sessions": [SESSION_BY_ID_EXAMPLE["data"]]}},
    ],
    ids=["data-list", "nested-data-list", "sessions-list"],
)
def test_session_by_id_reads_the_sibling_endpoints_shapes(doc: dict[str, Any]) -> None:
    """A session by id wrapped the way sibling endpoints wrap sessions is still read."""
    found = decode.session_by_id(doc)
    assert found is not None and found.id == SESSION_BY_ID_EXAMPLE["data"]["id"]


def test_session_by_id_with_an_empty_list_is_not_found() -> None:
    """An empty list of sessions means no such session."""
    assert decode.session_by_id({"data": []}) is None


# --- text that reaches logs and labels ---------------------------------------------------

STREAM_KEY = "f26566285faca6fbe2e79a73a66rsrrsrrsr3cde23a2bb7dbc6c2c1761b98f4e4"


@pytest.mark.parametrize(
    "doc",
    [
        {"success": False, "error": {"code": 400, "message": f"bad stream_key {STREAM_KEY}"}},
        {"success": False, "errors": [{"code": 10000, "message": f"key={STREAM_KEY}!"}]},
        {
            "success": False,
            "error": f"sk_ap-south-1_x3lKBdJa8UDN_3q6PPLMJnqnbnhyrkXrOG504MUsxnZ {STREAM_KEY}",
        },
        {"success": False, "error": {"message": "word " * 36 + STREAM_KEY}},
        {
            "success": False,
            "error": {"message": "key sk_ap-south-1_x3lKBdJa8UDN-3q6PPLMJnqnbnhy-zZ"},
        },
    ],
    ids=["service", "gateway", "string", "at-the-clip", "hyphenated"],
)
def test_error_messages_redact_secret_like_runs(doc: dict[str, Any]) -> None:
    """An error message that echoes a stream key does not carry it into logs."""
    _, message = decode.error_summary(doc)
    assert "<redacted>" in message
    assert (
        STREAM_KEY not in message and "x3lKBdJa8UDN_3q6PPLMJnqnbnhyrkXrOG504MUsxnZ" not in message
    )


def test_error_messages_keep_ids_and_ordinary_text_and_are_clipped() -> None:
    text = "No active session found for livestream b60ef3da-fbbb-441b-9168-8235b0035248"
    assert decode.error_summary({"error": {"code": 404, "message": text}}) == (404, text)
    _, long = decode.error_summary({"error": {"code": 500, "message": "word " * 100}})
    assert len(long) == decode.MAX_MESSAGE_LENGTH


def test_lone_surrogates_become_replacement_characters() -> None:
    """JSON allows a lone surrogate (\\ud800); UTF-8 cannot carry it to a label or a log."""
    doc = json.loads('{"id": "ls-1", "name": "a\\ud800b", "status": "li\\udfffve"}')
    stream = decode.livestream(doc)
    assert stream is not None
    assert stream.name == "a\ufffdb"
    assert stream.status == "LI\ufffdVE"
    stream.name.encode("utf-8")
    _, message = decode.error_summary(json.loads('{"error": {"message": "x\\ud800"}}'))
    assert message == "x\ufffd"


# --- webhooks ---------------------------------------------------------------------------


# The published Webhook object (S2, S3 of realtimekit-webhooks.md).
WEBHOOK_ITEM: dict[str, Any] = {
    "id": "0b5d4f2e-2f3c-4a61-9a36-3a4f1c2b7d10",
    "name": "All events webhook",
    "url": "https://webhook.site/b23a5bbd-c7b0-4ced-a9c6-2a6d4ab2c5b1",
    "events": ["meeting.started", "livestreaming.statusUpdate"],
    "enabled": True,
    "created_at": "2024-01-01T00:00:00.000Z",
    "updated_at": "2024-01-01T00:00:00.000Z",
}
WEBHOOK = Webhook(
    id="0b5d4f2e-2f3c-4a61-9a36-3a4f1c2b7d10",
    url="https://webhook.site/b23a5bbd-c7b0-4ced-a9c6-2a6d4ab2c5b1",
    name="All events webhook",
    events=("meeting.started", "livestreaming.statusUpdate"),
    enabled=True,
)


@pytest.mark.parametrize(
    "data",
    [[WEBHOOK_ITEM], {"webhooks": [WEBHOOK_ITEM]}, {"data": [WEBHOOK_ITEM]}],
    ids=["array", "under-webhooks", "under-data"],
)
def test_webhook_listing_reads_the_array_and_a_nested_list(data: object) -> None:
    """``data`` as the array, or an object holding it, decodes to the same webhooks."""
    assert decode.webhooks({"success": True, "data": data}) == (WEBHOOK,)


def test_webhook_listing_skips_entries_without_an_id_or_object() -> None:
    """An entry that is no object, or has no id, cannot be edited or deleted: skipped."""
    doc = {"data": [WEBHOOK_ITEM, {"url": "https://x"}, {"id": ""}, "junk", None]}
    assert decode.webhooks(doc) == (WEBHOOK,)


@pytest.mark.parametrize(
    "doc",
    [[], {"success": True}, {"data": None}, {"data": "x"}, {"data": {"items": []}}],
    ids=["not-object", "no-data", "null", "string", "list-under-a-guessed-key"],
)
def test_webhook_listing_without_a_list_is_a_decode_error(doc: object) -> None:
    """No readable list is an error, never an empty listing (which would make register
    create a duplicate)."""
    with pytest.raises(DecodeError):
        decode.webhooks(doc)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, WEBHOOK),
        ({"enabled": None}, WEBHOOK),
        ({"enabled": "false"}, replace(WEBHOOK, enabled=False)),
        ({"enabled": "maybe"}, WEBHOOK),
        ({"events": ["a", 1, None, "b"]}, replace(WEBHOOK, events=("a", "b"))),
        ({"events": "a"}, replace(WEBHOOK, events=())),
        ({"name": None, "url": 5}, replace(WEBHOOK, name=None, url="")),
        ({"id": 42}, replace(WEBHOOK, id="42")),
    ],
    ids=[
        "example",
        "enabled-null-is-true",
        "enabled-string",
        "enabled-odd-is-true",
        "events-non-strings-dropped",
        "events-not-a-list",
        "name-null-url-not-text",
        "numeric-id",
    ],
)
def test_webhook_fields_are_read_leniently(fields: dict[str, Any], expected: Webhook) -> None:
    """Enabled defaults to true as in the API; odd events, names and URLs are dropped."""
    item = {**WEBHOOK_ITEM, **fields}
    assert decode.webhook_by_id({"success": True, "data": item}) == expected


def test_webhook_without_enabled_is_enabled() -> None:
    """``enabled`` is optional in the API and defaults to true."""
    item = {k: v for k, v in WEBHOOK_ITEM.items() if k != "enabled"}
    assert decode.webhook_by_id({"data": item}).enabled is True


def test_one_webhook_may_be_nested_under_webhook() -> None:
    """``data.webhook`` passes as well as ``data``."""
    assert decode.webhook_by_id({"data": {"webhook": WEBHOOK_ITEM}}) == WEBHOOK


@pytest.mark.parametrize(
    "doc",
    [None, {"data": None}, {"data": []}, {"data": {"name": "no id"}}],
    ids=["not-object", "null", "list", "no-id"],
)
def test_one_webhook_without_an_id_is_a_decode_error(doc: object) -> None:
    """A created or edited webhook must come back with its id."""
    with pytest.raises(DecodeError):
        decode.webhook_by_id(doc)


# --- analytics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"count": 4, "total_ingest_seconds": 531, "total_viewer_seconds": 116},
            Totals(count=4, ingest_seconds=531.0, viewer_seconds=116.0),
        ),
        (
            {"count": "4", "total_ingest_seconds": "531.25", "total_viewer_seconds": "1e3"},
            Totals(count=4, ingest_seconds=531.25, viewer_seconds=1000.0),
        ),
        ({}, Totals(count=0, ingest_seconds=0.0, viewer_seconds=0.0)),
        (
            {"count": None, "total_ingest_seconds": None, "total_viewer_seconds": 7},
            Totals(count=0, ingest_seconds=0.0, viewer_seconds=7.0),
        ),
        (
            {"count": 4.0, "total_ingest_seconds": -0.0, "total_viewer_seconds": "-0"},
            Totals(count=4, ingest_seconds=0.0, viewer_seconds=0.0),
        ),
        ({"count": 2, "date": "2023-07-15", "extra": [1]}, Totals(2, 0.0, 0.0)),
    ],
    ids=["example", "numeric-strings", "empty", "nulls", "whole-float-and-minus-zero", "no-day"],
)
def test_overall_totals_are_read_leniently(fields: dict[str, Any], expected: Totals) -> None:
    """Numbers or numeric strings; an absent or null total is 0; the overall totals have no
    day even if the object carries a date."""
    found = decode.analytics_totals({"success": True, "data": fields})
    assert found == expected
    assert math.copysign(1.0, found.ingest_seconds) == 1.0  # no -0.0 reaches an exposition


UNTRUSTED: Final[tuple[object, ...]] = (
    -1,
    "-1",
    True,
    False,
    "NaN",
    "inf",
    math.nan,
    math.inf,
    "",
    "x",
    [],
    {},
)
TOTALS_KEYS: Final = ("count", "total_ingest_seconds", "total_viewer_seconds")


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, value) for key in TOTALS_KEYS for value in UNTRUSTED]
    + [("count", 1.5), ("count", "2.5")],
    ids=repr,
)
def test_a_total_that_cannot_be_trusted_is_a_decode_error(key: str, value: object) -> None:
    """Negative, not finite, boolean or unreadable totals (and a fractional count) fail the
    answer, overall or daywise, rather than becoming zeros."""
    totals = {"count": 1, "total_ingest_seconds": 1, "total_viewer_seconds": 1, key: value}
    with pytest.raises(DecodeError):
        decode.analytics_totals({"data": totals})
    with pytest.raises(DecodeError):
        decode.analytics_days({"data": [{**totals, "date": "2023-07-15"}]})


@pytest.mark.parametrize(
    ("value", "day"),
    [
        ("2023-07-15", "2023-07-15"),
        (" 2023-07-15 ", "2023-07-15"),
        ("2023-07-15T07:08:40.742Z", "2023-07-15"),
        ("2023-07-15T23:30:00-05:00", "2023-07-15"),  # the date as written, not in UTC
        ("2023-07-15 07:08:40", "2023-07-15"),
        ("2023-02-30", None),
        ("2023-07-15T99:00:00Z", None),
        ("2023-07-15Tnoon", None),
        ("2023-7-15", None),
        ("20230715", None),
        ("15/07/2023", None),
        ("\uff12\uff10\uff12\uff13-07-15", None),  # full-width digits
        (1689379200, None),
        (None, None),
        ("", None),
    ],
    ids=repr,
)
def test_analytics_dates(value: object, day: str | None) -> None:
    """A date, or the date part of a timestamp; anything else is no day."""
    assert decode.day(value) == day


def test_daywise_rows_keep_their_order_and_their_days() -> None:
    doc = {
        "success": True,
        "data": [
            {"count": 1, "date": "2023-07-16", "total_ingest_seconds": 10},
            {"count": "2", "date": "not a date", "total_viewer_seconds": "5.5"},
        ],
    }
    assert decode.analytics_days(doc) == (
        Totals(count=1, ingest_seconds=10.0, viewer_seconds=0.0, day="2023-07-16"),
        Totals(count=2, ingest_seconds=0.0, viewer_seconds=5.5, day=None),
    )
    assert decode.analytics_days({"data": []}) == ()


@pytest.mark.parametrize(
    ("parse", "doc"),
    [
        (decode.analytics_totals, None),
        (decode.analytics_totals, {"data": None}),
        (decode.analytics_totals, {"data": [{"count": 1}]}),
        (decode.analytics_days, {"data": {"count": 1, "date": "2023-07-15"}}),
        (decode.analytics_days, {"data": None}),
        (decode.analytics_days, {"data": [{"count": 1}, None]}),
        (decode.analytics_days, {"data": [{"count": 1}] * (decode.MAX_DAYS + 1)}),
    ],
    ids=["not-object", "overall-null", "overall-list", "days-object", "days-null", "row", "rows"],
)
def test_analytics_of_the_wrong_shape_are_decode_errors(parse: Any, doc: object) -> None:
    """``data`` is one object (overall) or a list of at most MAX_DAYS objects (daywise)."""
    with pytest.raises(DecodeError):
        parse(doc)
