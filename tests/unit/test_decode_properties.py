"""Property tests of the response parser: whatever the body, a valid result or DecodeError.

Bodies come from the OpenAPI definition of the six endpoints the client reads (listing,
``active-livestream-session``, ``livestreams/{id}``, ``livestreams/sessions/{id}``, and the
app's analytics ``overall`` and ``daywise``), read
at test time from ``testdata/realtimekit-livestreams.openapi.json`` (a copy of
``../shared/``) by a small generator for the JSON-schema subset it uses:

- bodies of each response schema, and of the other shapes the published examples show
  (the listing's ``data`` as an array or holding ``livestreams``; ``sessions`` arrays);
- the same with fields mistyped one by one: numbers as text, text as numbers, booleans as
  text, times as epoch numbers, objects as lists, null, ... (the schema itself declares
  strings where numbers come);
- the published example bodies with random fields replaced by any JSON value or removed,
  and every single field of them replaced by each of a table of wrong values;
- arbitrary JSON (``recursive``), its objects keyed mostly by the names the schema uses;
- raw bytes through ``parse_json``: those bodies encoded, truncated, corrupted, nested too
  deep, numbers too long, in other encodings, and random bytes.

The property: each decoder returns a result whose every field has its type and bounds
(ids non-empty and at most the label cap, statuses at most 64 characters, numbers finite
and non-negative or None, all text encodable as UTF-8, analytics days real dates or None)
or raises ``DecodeError``, never
anything else. Generation is derandomized and bounded: each test takes a few seconds and
runs the same way every time.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import decode
from exporter.decode import (
    MAX_LABEL_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_STATUS_LENGTH,
    DecodeError,
    ListingPage,
)
from exporter.model import ActiveSession, Livestream, Session, Totals
from tests import REPO, TESTDATA

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

OPENAPI = TESTDATA / "realtimekit-livestreams.openapi.json"
SHARED_OPENAPI = REPO.parent / "shared" / OPENAPI.name
APP_PATH = "/accounts/{account_id}/realtime/kit/{app_id}"
PATHS: Final = {
    "listing": "/livestreams",
    "active_session": "/livestreams/{livestream_id}/active-livestream-session",
    "livestream_by_id": "/livestreams/{livestream_id}",
    "session_by_id": "/livestreams/sessions/{livestream-session-id}",
    "analytics": "/analytics/livestreams/overall",
    "analytics_days": "/analytics/livestreams/daywise",
}
# A few seconds each when all is well; a failure's shrinking may take a minute on a busy
# machine, which should end in the shrunk example rather than a timeout.
pytestmark = pytest.mark.timeout(300)
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _operation(name: str) -> dict[str, Any]:
    spec = json.loads(OPENAPI.read_text(encoding="utf-8"))
    operation: dict[str, Any] = spec["paths"][APP_PATH + PATHS[name]]["get"]
    return operation


def response_schema(name: str) -> dict[str, Any]:
    """The 200 response's schema of endpoint ``name``."""
    schema: dict[str, Any] = _operation(name)["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    return schema


def examples(name: str) -> list[Any]:
    """The 200 response's published example bodies of endpoint ``name``."""
    found = _operation(name)["responses"]["200"]["content"]["application/json"]["examples"]
    return [example["value"] for example in found.values()]


# --- the shapes: each response schema, and the other shapes the examples publish ---------


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _array(items: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": dict(items)}


def shapes(name: str) -> dict[str, dict[str, Any]]:
    """Body schemas of endpoint ``name``: its response schema as published, and the shapes
    its examples (or the simulator's variants) use instead, built from the schema's parts."""
    schema = response_schema(name)
    found = {"schema": schema}
    if name.startswith("analytics"):
        return found  # their examples keep to the schema
    props = schema["properties"]
    data = props["data"]["properties"]
    success = props["success"]
    if name == "listing":
        item = _obj(**{k: v for k, v in data.items() if k != "paging"})
        paging = data["paging"]
        found["data array, paging beside"] = _obj(data=_array(item), paging=paging, success=success)
        found["data holding livestreams and paging"] = _obj(
            data=_obj(livestreams=_array(item), paging=paging), success=success
        )
    elif name in ("active_session", "livestream_by_id"):
        found["sessions array"] = _obj(
            data=_obj(livestream=data["livestream"], sessions=_array(data["session"])),
            paging=data.get("paging", {"type": "object"}),
            success=success,
        )
    return found


# --- the generator: JSON-schema subset -> strategies -------------------------------------

SURROGATE_TEXT = st.text(st.characters(codec=None, categories=None), max_size=12)
TEXT = st.one_of(
    st.text(max_size=20),
    SURROGATE_TEXT,  # lone surrogates: valid in JSON, not in UTF-8
    st.text(min_size=1, max_size=8).map(lambda s: s * 40),  # around the status and label caps
    st.sampled_from(["", " ", "\t\n", "\u00a0", "ß" * 40, "ǅ" * 70, "x" * 257]),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# What JSON numbers become: ints up to 4300 digits (Python's limit), beyond a float's range.
INTEGERS = st.integers() | st.integers(-(10**400), 10**400)
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | TEXT
ISO_TIMES = st.datetimes().map(lambda t: t.isoformat(timespec="milliseconds") + "Z")
ODD_TIMES = st.sampled_from(
    [
        "2023-07-15",
        "2023-07-15T07:08:39",
        "2023-07-15T07:08:39+05:30",
        "2023-07-15 07:08:39.000000000Z",
        "20230715T070839Z",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59.999999-23:59",
        "1970-01-01T00:00:00Z",
        "2023-13-45T99:99:99Z",
        "1689404920",
        "1689404920742",
        "9" * 400,
        "\uff11\uff16\uff18\uff19\uff14\uff10\uff14\uff19\uff12\uff10",  # full-width digits
        "now",
    ]
)
NUMBERS_AS_TEXT = st.one_of(
    INTEGERS.map(str),
    FLOATS.map(repr),
    st.sampled_from(
        [
            *(" 60 ", "116.11599994199997", "1e3", "1e999", "NaN", "-Infinity", "-0", "-1"),
            *("1_000", "0x10", "", "\u0663", "1" * 5000, "60s"),  # U+0663: an Arabic-Indic 3
        ]
    ),
)
BOOLEANS_AS_TEXT = st.sampled_from(["true", "false", "True", " FALSE ", "1", "0", "yes", "null"])
TIMES_AS_NUMBERS = st.one_of(
    st.integers(-10, 10**14), st.floats(allow_nan=True, allow_infinity=True), INTEGERS
)


def _scalars_except(kind: str | None) -> st.SearchStrategy[Any]:
    by_kind: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "integer": INTEGERS,
        "number": FLOATS,
        "string": TEXT,
    }
    return st.one_of(*(s for k, s in by_kind.items() if k != kind))


def mistyped(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """A value of another type than ``schema`` declares, as an API might send it instead."""
    kind = schema.get("type")
    small = st.lists(SCALARS, max_size=3) | st.dictionaries(TEXT, SCALARS, max_size=3)
    if kind == "string" and schema.get("format") == "date-time":
        return st.one_of(TIMES_AS_NUMBERS, st.booleans(), small)
    if kind in ("integer", "number"):
        return st.one_of(NUMBERS_AS_TEXT, _scalars_except(kind), small)
    if kind == "boolean":
        return st.one_of(BOOLEANS_AS_TEXT, st.integers(-1, 2), _scalars_except(kind), small)
    if kind == "object":
        return st.one_of(SCALARS, st.lists(strategy(schema), max_size=2))
    if kind == "array":
        return st.one_of(SCALARS, strategy(schema.get("items", {})))
    return st.one_of(_scalars_except(kind), small)


def strategy(schema: Mapping[str, Any], *, mistype: bool = False) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (object, array, string with enum, format or example, integer,
    number, boolean, nullable); with ``mistype``, any field may hold a :func:`mistyped`
    value instead, now and then."""
    kind = schema.get("type")
    base: st.SearchStrategy[Any]
    if kind == "object":
        base = _object(
            {k: _field(v, mistype=mistype) for k, v in schema.get("properties", {}).items()}
        )
    elif kind == "array":
        base = st.lists(_field(schema.get("items", {}), mistype=mistype), max_size=4)
    elif kind == "string":
        base = _string(schema)
    elif kind == "integer":
        base = INTEGERS
    elif kind == "number":
        base = st.floats(allow_nan=False, allow_infinity=False) | INTEGERS
    elif kind == "boolean":
        base = st.booleans()
    else:
        base = SCALARS
    if "example" in schema:
        base = st.just(schema["example"]) | base
    if schema.get("nullable"):
        base = st.none() | base
    return base


def _string(schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
    if "enum" in schema:  # an open set in practice: other statuses come too
        values = schema["enum"]
        return st.sampled_from(values) | st.sampled_from(values).map(str.lower) | TEXT
    if schema.get("format") == "date-time":
        return ISO_TIMES | ODD_TIMES | TEXT
    if schema.get("format") == "uuid":
        return st.uuids().map(str) | TEXT
    return st.uuids().map(str) | TEXT


def _field(schema: Mapping[str, Any], *, mistype: bool) -> st.SearchStrategy[Any]:
    valid = strategy(schema, mistype=mistype)
    if not mistype:
        return valid
    wrong = mistyped(schema)

    @st.composite
    def field(draw: st.DrawFn) -> Any:
        # About one field in six holds a value of another type.
        if draw(st.integers(0, 5)) == 5:
            return draw(wrong)
        return draw(valid)

    return field()


def _object(fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with every field, a few of them left out, and now and then an unknown one."""
    keys = sorted(fields)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        extra = draw(st.dictionaries(TEXT, SCALARS, max_size=2))
        value = {**extra, **{k: draw(s) for k, s in fields.items()}}
        if keys:
            for key in draw(st.sets(st.sampled_from(keys), max_size=max(1, len(keys) // 3))):
                del value[key]
        return value

    return build()


def property_names(node: object) -> set[str]:
    """Every property name the definition uses, for keys of arbitrary JSON."""
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                names.update(value)
            names |= property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= property_names(value)
    return names


SCHEMA_NAMES = sorted(property_names(json.loads(OPENAPI.read_text(encoding="utf-8"))["paths"]))
KEYS = st.sampled_from(
    [*SCHEMA_NAMES, "livestreams", "sessions", "error", "errors", "message", "code"]
) | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
WRONG_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**400,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "   ",
    "abc",
    "60",
    "-60",
    "true",
    "\ud800",
    "x" * 300,
    [],
    [{}],
    {},
    {"id": 1},
)


# --- example bodies with fields replaced --------------------------------------------------

Path_ = tuple[str | int, ...]


def value_paths(doc: object, prefix: Path_ = ()) -> Iterator[Path_]:
    """The path of every value inside ``doc`` (not ``doc`` itself), parents first."""
    items: Iterator[tuple[str | int, object]]
    if isinstance(doc, dict):
        items = iter(doc.items())
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from value_paths(value, (*prefix, key))


_GONE: Final = object()


def _parent(doc: object, path: Path_) -> Any:
    """The container holding ``path``'s value, or _GONE if an earlier change removed it."""
    node: Any = doc  # indexed blindly: what cannot be indexed raises TypeError below
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return _GONE
    return node if isinstance(node, dict | list) else _GONE


def replaced(doc: object, path: Path_, value: object) -> object:
    """A copy of ``doc`` with the value at ``path`` replaced (``_GONE``: removed)."""
    doc = copy.deepcopy(doc)
    parent = _parent(doc, path)
    key = path[-1]
    if parent is _GONE or (
        key not in parent
        if isinstance(parent, dict)
        else not (isinstance(key, int) and 0 <= key < len(parent))
    ):
        return doc  # an earlier change removed it
    if value is _GONE:
        del parent[key]
    else:
        parent[key] = value
    return doc


def mutated_examples(name: str) -> st.SearchStrategy[Any]:
    """The endpoint's example bodies with one to four values replaced or removed."""

    bodies = st.sampled_from(examples(name))

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        doc = draw(bodies)
        paths = list(value_paths(doc))
        for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=4, unique=True)):
            value = draw(st.just(_GONE) | JSON | mistyped({"type": "string"}))
            doc = replaced(doc, path, value)
        return doc

    return build()


# --- the decoders and what a valid result is ---------------------------------------------


def check_text(value: object, *, cap: int, empty: bool = False) -> None:
    assert isinstance(value, str), value
    assert empty or value.strip(), f"empty text {value!r}"
    assert len(value) <= cap, f"{len(value)} characters, more than {cap}"
    value.encode("utf-8")  # a label value or a log line must be UTF-8


def check_optional_text(value: object, *, cap: int) -> None:
    if value is not None:
        check_text(value, cap=cap)


def check_number(value: object) -> None:
    """None, or a finite non-negative float (not -0.0)."""
    if value is not None:
        assert type(value) is float, value
        assert math.isfinite(value) and value >= 0 and math.copysign(1, value) > 0, value


def check_time(value: object) -> None:
    """None, or Unix seconds after 1970, finite."""
    if value is not None:
        assert type(value) is float, value
        assert math.isfinite(value) and value > 0, value


def check_livestream(stream: object) -> None:
    assert type(stream) is Livestream, stream
    check_text(stream.id, cap=MAX_LABEL_LENGTH)
    check_text(stream.status, cap=MAX_STATUS_LENGTH)
    assert stream.status == " ".join(stream.status.split()), stream.status
    check_optional_text(stream.name, cap=MAX_LABEL_LENGTH)
    check_optional_text(stream.meeting_id, cap=MAX_LABEL_LENGTH)
    assert stream.disabled is None or type(stream.disabled) is bool


def check_session(session: object) -> None:
    """A session; its id may be empty (a session with a start time but no id)."""
    assert type(session) is Session, session
    check_text(session.id, cap=MAX_LABEL_LENGTH, empty=True)
    check_time(session.started_time)
    check_time(session.stopped_time)
    check_optional_text(session.err_message, cap=MAX_LABEL_LENGTH)
    check_number(session.ingest_seconds)
    check_number(session.viewer_seconds)
    assert type(session.ended) is bool
    assert not (session.ended and session.stopped_time is not None)


def check_listing(page: object) -> None:
    assert type(page) is ListingPage, page
    assert type(page.livestreams) is tuple
    for stream in page.livestreams:
        check_livestream(stream)
    total = page.total_count
    assert total is None or (type(total) is int and total >= 0), total
    assert type(page.entries) is int and page.entries >= len(page.livestreams)
    assert page.skipped >= 0


def check_active_session(answer: object) -> None:
    assert type(answer) is ActiveSession, answer
    if answer.livestream is not None:
        check_livestream(answer.livestream)
    if answer.session is not None:
        check_session(answer.session)


def check_session_by_id(found: object) -> None:
    if found is not None:
        check_session(found)


def check_totals(totals: object, *, dated: bool = False) -> None:
    """Totals: a whole count and finite non-negative seconds; a day (when read) that is a
    real date as YYYY-MM-DD, or None."""
    assert type(totals) is Totals, totals
    assert type(totals.count) is int and totals.count >= 0, totals.count
    check_number(totals.ingest_seconds)
    check_number(totals.viewer_seconds)
    assert totals.ingest_seconds is not None and totals.viewer_seconds is not None
    if not dated:
        assert totals.day is None
    elif totals.day is not None:
        assert datetime.date.fromisoformat(totals.day).isoformat() == totals.day, totals.day


def check_days(days: object) -> None:
    assert type(days) is tuple and len(days) <= decode.MAX_DAYS
    for totals in days:
        check_totals(totals, dated=True)


@dataclass(frozen=True)
class Decoder:
    parse: Callable[[Any], Any]
    check: Callable[[object], None]


# The configured id the client passes: a config identifier, possibly longer than the cap.
FALLBACK_ID = "b60ef3da-fbbb-441b-9168-8235b0035248"
LONG_FALLBACK_ID = "x" * (MAX_LABEL_LENGTH + 44)
DECODERS: Final = {
    "listing": Decoder(decode.listing_page, check_listing),
    "active_session": Decoder(
        lambda d: decode.active_session(d, livestream_id=FALLBACK_ID), check_active_session
    ),
    "active_session, long configured id": Decoder(
        lambda d: decode.active_session(d, livestream_id=LONG_FALLBACK_ID), check_active_session
    ),
    "livestream_by_id": Decoder(
        lambda d: decode.livestream_by_id(d, livestream_id=FALLBACK_ID), check_livestream
    ),
    "livestream_by_id, long configured id": Decoder(
        lambda d: decode.livestream_by_id(d, livestream_id=LONG_FALLBACK_ID), check_livestream
    ),
    "session_by_id": Decoder(decode.session_by_id, check_session_by_id),
    "analytics": Decoder(decode.analytics_totals, check_totals),
    "analytics_days": Decoder(decode.analytics_days, check_days),
}
ENDPOINT_DECODERS: Final = {
    "listing": ("listing",),
    "active_session": ("active_session", "active_session, long configured id"),
    "livestream_by_id": ("livestream_by_id", "livestream_by_id, long configured id"),
    "session_by_id": ("session_by_id",),
    "analytics": ("analytics",),
    "analytics_days": ("analytics_days",),
}


def outcome(decoder: Decoder, doc: object) -> str:
    """Run ``decoder`` on ``doc``: "ok" with a valid result, or "DecodeError". Anything
    else (another exception, an invalid result) fails the test."""
    try:
        result = decoder.parse(doc)
    except DecodeError:
        return "DecodeError"
    decoder.check(result)
    return "ok"


def check_error_summary(doc: object) -> None:
    """The client reads error bodies too: a code and a clipped, encodable message."""
    code, message = decode.error_summary(doc)
    assert code is None or (type(code) is int and code >= 0), code
    check_text(message, cap=MAX_MESSAGE_LENGTH, empty=True)
    assert type(decode.is_failure(doc)) is bool
    assert type(decode.is_service_error(doc)) is bool


def every_decoder(doc: object) -> Counter[str]:
    outcomes = Counter(outcome(decoder, doc) for decoder in DECODERS.values())
    check_error_summary(doc)
    return outcomes


# --- the tests ----------------------------------------------------------------------------


ENDPOINTS = sorted(PATHS)


def test_the_definition_is_the_shared_one() -> None:
    """The copy in testdata is the definition in ../shared (when that is checked out)."""
    if not SHARED_OPENAPI.exists():
        pytest.skip(f"{SHARED_OPENAPI} is not there to compare with")
    assert OPENAPI.read_bytes() == SHARED_OPENAPI.read_bytes()


@pytest.mark.parametrize("name", ENDPOINTS)
def test_schema_bodies_decode_or_raise_decode_error(name: str) -> None:
    """Bodies of the endpoint's schema, in each published shape, decode to valid results
    or raise DecodeError; many of them decode."""
    outcomes: Counter[str] = Counter()
    bodies = st.one_of(*(strategy(shape) for _, shape in sorted(shapes(name).items())))

    @SETTINGS
    @given(bodies)
    def check(doc: Any) -> None:
        for decoder in ENDPOINT_DECODERS[name]:
            outcomes[outcome(DECODERS[decoder], doc)] += 1

    check()
    # The generator reaches the fields. A daywise body fails whole for any negative total
    # in any of its rows (the schema's integers are negative half the time): fewer decode.
    share = 10 if name == "analytics_days" else 3
    assert outcomes["ok"] > outcomes.total() / share, outcomes


@pytest.mark.parametrize("name", ENDPOINTS)
def test_bodies_with_mistyped_fields_decode_or_raise_decode_error(name: str) -> None:
    """The endpoint's bodies with fields of other types than declared (numbers as text,
    text as numbers, ...) decode to valid results or raise DecodeError."""
    outcomes: Counter[str] = Counter()
    bodies = st.one_of(
        *(strategy(shape, mistype=True) for _, shape in sorted(shapes(name).items()))
    )

    @SETTINGS
    @given(bodies)
    def check(doc: Any) -> None:
        for decoder in ENDPOINT_DECODERS[name]:
            outcomes[outcome(DECODERS[decoder], doc)] += 1

    check()
    assert outcomes["ok"] and outcomes["DecodeError"], outcomes


@pytest.mark.parametrize("name", ENDPOINTS)
def test_examples_with_random_fields_replaced_decode_or_raise_decode_error(name: str) -> None:
    """The published examples with one to four values replaced by any JSON value (or
    removed), given to every decoder, decode to valid results or raise DecodeError."""
    outcomes: Counter[str] = Counter()

    @SETTINGS
    @given(mutated_examples(name))
    def check(doc: Any) -> None:
        outcomes.update(every_decoder(doc))

    check()
    assert outcomes["ok"] and outcomes["DecodeError"], outcomes


@pytest.mark.parametrize("name", ENDPOINTS)
def test_every_field_of_the_examples_replaced_by_each_wrong_value(name: str) -> None:
    """Each value of each published example, replaced by each of a table of wrong values
    or removed, one at a time: every decoder gives a valid result or DecodeError."""
    for example in examples(name):
        assert all(outcome(DECODERS[d], example) == "ok" for d in ENDPOINT_DECODERS[name])
        for path in value_paths(example):
            for value in (*WRONG_VALUES, _GONE):
                every_decoder(replaced(example, path, value))


@SETTINGS
@given(JSON)
def test_arbitrary_json_decodes_or_raises_decode_error(doc: Any) -> None:
    """Any JSON value, its objects keyed mostly by the schema's names, given to every
    decoder: a valid result or DecodeError."""
    every_decoder(doc)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["data", "paging", "success"]), JSON, min_size=1))
def test_arbitrary_envelopes_decode_or_raise_decode_error(doc: Any) -> None:
    """An envelope with any JSON under ``data`` and ``paging``: a valid result or
    DecodeError from every decoder."""
    every_decoder(doc)


# --- raw bytes ------------------------------------------------------------------------------

ANY_BODY = st.one_of(
    *(mutated_examples(name) for name in ENDPOINTS),
    *(strategy(s, mistype=True) for name in ENDPOINTS for s in shapes(name).values()),
    JSON,
)


def _encoded(doc: object, encoding: str) -> bytes:
    text = json.dumps(doc, ensure_ascii=encoding == "ascii", allow_nan=True)
    return text.encode("utf-8" if encoding == "ascii" else encoding, "surrogatepass")


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bodies as bytes: JSON in several encodings, then maybe truncated or corrupted."""
    encoding = draw(st.sampled_from(["ascii", "utf-8", "utf-8-sig", "utf-16", "utf-32"]))
    body = _encoded(draw(ANY_BODY), encoding)
    match draw(st.sampled_from(["whole", "truncated", "corrupted", "wrapped"])):
        case "truncated":
            body = body[: draw(st.integers(0, len(body)))]
        case "corrupted":
            at = draw(st.integers(0, max(0, len(body) - 1)))
            body = body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at + 1 :]
        case "wrapped":  # whitespace or a second document around it
            before, after = draw(st.sampled_from([(b" \n", b"\t"), (b"", b" {}"), (b"[", b"")]))
            body = before + body + after
    return body


NASTY_BODIES = [
    b"",
    b"null",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"\xef\xbb\xbf{}",
    b"\xff\xfe\x00",
    b"<html><body>Loading...</body></html>",
    b'{"success": true, "data": [{"id": "',
    b'"\\ud800"',
    b'{"data": {"ingest_seconds": 1' + b"0" * 5000 + b"}}",
    b'{"data": {"ingest_seconds": 1.' + b"0" * 100_000 + b"}}",
    b'{"data": [{"id": ' + b"9" * 4300 + b', "status": "LIVE"}]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"data":' * 50_000 + b"{}" + b"}" * 50_000,
    b"[" * 900 + b"]" * 900,
]


def decoded_everywhere(body: bytes) -> Counter[str]:
    """``parse_json`` then, if that worked, every decoder on the result."""
    try:
        doc = decode.parse_json(body)
    except DecodeError:
        return Counter(["not JSON"])
    return every_decoder(doc)


@SETTINGS
@given(st.one_of(raw_bodies(), st.binary(max_size=64)))
def test_raw_bodies_parse_and_decode_or_raise_decode_error(body: bytes) -> None:
    """Any bytes through parse_json and then every decoder: valid results or DecodeError,
    never another exception (not RecursionError, ValueError, UnicodeDecodeError, ...)."""
    decoded_everywhere(body)


@pytest.mark.parametrize("body", NASTY_BODIES, ids=lambda b: repr(b[:24]))
def test_nasty_bodies_parse_and_decode_or_raise_decode_error(body: bytes) -> None:
    """The hand-picked nasty bodies, each once, whatever the generator picks."""
    decoded_everywhere(body)


def test_a_deeply_nested_body_that_parses_still_decodes() -> None:
    """A body nested as deep as the JSON parser allows is read without recursing."""
    body = b'{"data": ' + b"[" * 900 + b"]" * 900 + b"}"
    assert decoded_everywhere(body)
