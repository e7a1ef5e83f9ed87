"""Lenient decoding of RealtimeKit response bodies into :mod:`exporter.model` records.

The published schema and the real answers disagree (``data`` as array or object,
``paging`` at the top or inside ``data``, numbers as strings, booleans as strings, an open
set of statuses), so every field is read forgivingly. What cannot be read raises
:class:`DecodeError` and nothing else. Secret fields (``stream_key``, ``ingest_server``)
are never exported; the stream key is read only to drop any other field that quotes it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Final

from exporter.model import UNKNOWN_STATUS, ActiveSession, Livestream, Session, Totals, Webhook

MAX_LABEL_LENGTH: Final = 256
MAX_MESSAGE_LENGTH: Final = 200
# In an API's error text, a run this long of letters, digits and _+/=- may be a secret (a
# stream key, a token) echoed back; a UUID (a livestream or session id) stays readable.
_SECRET_LIKE: Final = re.compile(r"[A-Za-z0-9_+/=-]{24,}")
# The end of a clipped message that may be part of a word cut by the clip: what follows
# its last space or delimiter (a secret is quoted "key=K", "(K)" or "'K'" as well).
_LAST_WORD: Final = re.compile(r"[^\s\"'()<>\[\]{},;]+\Z")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
MAX_STATUS_LENGTH: Final = 64
MIN_SECRET_LENGTH: Final = 8  # a shorter "stream key" would blank ordinary names
# A session's err_message that quotes the stream key is shown as this instead.
WITHHELD_KEY: Final = "message withheld: it quotes the stream key"
_LIST_KEYS: Final = ("livestreams", "data")
_EPOCH_TEXT = re.compile(r"^\d{9,}(?:\.\d+)?$")  # epoch seconds/ms as text; 8 digits is ISO basic
# Rows of a daywise answer read at most: the exporter asks for a day or two, so a longer
# answer is not what was asked for (and a body of 8 MiB could hold 100,000 rows).
MAX_DAYS: Final = 400
_DAY: Final = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:[Tt ].+)?")
_TOTALS_FIELDS: Final = ("count", "total_ingest_seconds", "total_viewer_seconds")


class DecodeError(Exception):
    """A body could not be understood."""


@dataclass(frozen=True, slots=True)
class ListingPage:
    livestreams: tuple[Livestream, ...]
    total_count: int | None
    """The paging block's total_count (None without one, or if unreadable)."""
    entries: int
    """Entries on the page as sent, counting those skipped (no object, or no id)."""

    @property
    def skipped(self) -> int:
        return self.entries - len(self.livestreams)


def parse_json(body: bytes) -> Any:
    """JSON text -> Python value; ``DecodeError`` on anything else."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"body is not JSON ({type(exc).__name__})") from None


def error_summary(doc: object) -> tuple[int | None, str]:
    """Code and message from either error envelope, for logs (``(None, "")`` if absent).

    RealtimeKit: ``{"success": false, "error": {"code", "message"}}``; the Cloudflare
    gateway: ``{"success": false, "errors": [{"code", "message"}], "result": null}``.
    """
    if not isinstance(doc, dict):
        return None, ""
    candidates: list[object] = []
    if isinstance(doc.get("error"), dict):
        candidates.append(doc["error"])
    elif isinstance(doc.get("error"), str):
        return None, _quoted(doc["error"])
    if isinstance(doc.get("errors"), list):
        candidates.extend(doc["errors"])
    for item in candidates:
        if isinstance(item, dict):
            code = _int(item.get("code"))
            message = item.get("message")
            return code, _quoted(message) if isinstance(message, str) else ""
    return None, ""


def is_service_error(doc: object) -> bool:
    """True for RealtimeKit's own error envelope ``{"success": false, "error": {...}}``.

    Not for Cloudflare's gateway envelope (``errors`` list, ``result``), which speaks of
    authentication, routing and throttling rather than of the resource.
    """
    return (
        isinstance(doc, dict)
        and doc.get("success") is False
        and isinstance(doc.get("error"), dict)
        and not doc.get("errors")
    )


def is_failure(doc: object) -> bool:
    """True when a 2xx body still reports failure (``success: false``)."""
    return isinstance(doc, dict) and doc.get("success") is False


def listing_page(doc: object) -> ListingPage:
    """One page of ``GET /livestreams`` in any of its published shapes."""
    if not isinstance(doc, dict):
        raise DecodeError("listing body is not an object")
    data = doc.get("data")
    paging_raw = doc.get("paging")
    items: list[Any]
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        if paging_raw is None:
            paging_raw = data.get("paging")
        nested = next((data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)), None)
        if nested is not None:
            items = nested
        elif "id" in data:
            items = [data]  # the schema's reading: one livestream object with paging inside
        else:
            raise DecodeError("listing data object holds no livestreams")
    else:
        # null, absent or a scalar: an empty listing would silently drop every stream
        raise DecodeError("listing data is neither a list nor an object")
    # An entry that is no object, or has no id, cannot be attributed to any stream: it is
    # skipped (and reported) rather than failing the streams that can be read.
    streams = tuple(
        s
        for s in (livestream(item) if isinstance(item, dict) else None for item in items)
        if s is not None
    )
    return ListingPage(livestreams=streams, total_count=total_count(paging_raw), entries=len(items))


def livestream(item: object, *, fallback_id: str | None = None) -> Livestream | None:
    """A livestream object; ``None`` when it has no id (it cannot be attributed)."""
    if not isinstance(item, dict):
        raise DecodeError("livestream entry is not an object")
    stream_id = _text(item.get("id")) or fallback_id
    if not stream_id:
        return None
    # The stream key is read only to keep it out of what is exported: a buggy API that
    # quotes it in the name, meeting id or status (upper-cased) loses that field.
    key = _text(item.get("stream_key")) or ""
    return Livestream(
        id=_clip(stream_id),
        status=status_value(_unless_quoting(item.get("status"), key)),
        name=_optional_text(_unless_quoting(item.get("name"), key)),
        meeting_id=_optional_text(_unless_quoting(item.get("meeting_id"), key)),
        disabled=boolean(item.get("disabled")),
    )


def _unless_quoting(value: object, secret: str) -> object:
    """``value``, or ``None`` if it is text that quotes ``secret`` in any letter case."""
    if (
        isinstance(value, str)
        and len(secret) >= MIN_SECRET_LENGTH
        and secret.casefold() in value.casefold()
    ):
        return None
    return value


def active_session(doc: object, *, livestream_id: str) -> ActiveSession:
    """The body of ``active-livestream-session`` (200 only; 404 is handled by the client)."""
    if not isinstance(doc, dict):
        raise DecodeError("session body is not an object")
    data = doc.get("data")
    if data is None:
        return ActiveSession(livestream=None, session=None)
    if not isinstance(data, dict):
        raise DecodeError("session data is not an object")
    stream_raw = data.get("livestream")
    stream = None
    if isinstance(stream_raw, dict) and stream_raw.get("status") is not None:
        stream = livestream(stream_raw, fallback_id=livestream_id)
    # The stream key is read only to withhold a session error that quotes it (a key
    # too short for the secret-like runs that session() redacts).
    key = (_text(stream_raw.get("stream_key")) if isinstance(stream_raw, dict) else None) or ""
    session_raw = data.get("session")
    if session_raw is None and isinstance(data.get("sessions"), list):
        # the array's order is not documented: prefer the active session, else the first
        candidates = [session(s) for s in data["sessions"] if isinstance(s, dict)]
        found = next((s for s in candidates if s is not None and s.active), None)
        chosen = found or next(iter(candidates), None)
        return ActiveSession(livestream=stream, session=_withholding(chosen, key))
    return ActiveSession(livestream=stream, session=_withholding(session(session_raw), key))


def _withholding(found: Session | None, key: str) -> Session | None:
    """``found`` with its error message withheld if it quotes the stream key ``key``."""
    if found is None or not found.err_message or _unless_quoting(found.err_message, key):
        return found
    return replace(found, err_message=WITHHELD_KEY)


def livestream_by_id(doc: object, *, livestream_id: str) -> Livestream:
    """The livestream of ``GET /livestreams/{id}``: ``data.livestream`` (``data`` itself
    also passes, as the sibling endpoints' shape)."""
    if not isinstance(doc, dict):
        raise DecodeError("livestream body is not an object")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise DecodeError("livestream data is not an object")
    raw = data.get("livestream", data)
    found = livestream(raw, fallback_id=livestream_id)
    if found is None:
        raise DecodeError("livestream body holds no livestream")
    return found


def session_by_id(doc: object) -> Session | None:
    """The body of ``GET /livestreams/sessions/{id}``: ``data`` is the session itself."""
    if not isinstance(doc, dict):
        raise DecodeError("session body is not an object")
    data = doc.get("data")
    if isinstance(data, dict):
        # Also the shapes of the sibling endpoints: data.session, data.data, data.sessions.
        data = next((data[k] for k in ("session", "data", "sessions") if k in data), data)
    if isinstance(data, list):
        data = data[0] if data else None
    found = session(data)
    if found is None and data:
        raise DecodeError("session body holds no recognisable session")
    return found


def session(item: object) -> Session | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        raise DecodeError("session is not an object")
    stopped_raw = item.get("stopped_time")
    if not _text(item.get("id")) and item.get("started_time") is None and stopped_raw is None:
        return None  # nothing says a session exists: an empty object is no session
    stopped = timestamp(stopped_raw)
    return Session(
        id=_clip(_text(item.get("id")) or ""),
        started_time=timestamp(item.get("started_time")),
        stopped_time=stopped,
        # A stop time that is there but unreadable still means the session has ended.
        ended=stopped is None and stopped_raw not in (None, ""),
        err_message=_error_message(item.get("err_message")),
        ingest_seconds=number(item.get("ingest_seconds")),
        viewer_seconds=number(item.get("viewer_seconds")),
    )


def webhooks(doc: object) -> tuple[Webhook, ...]:
    """The body of ``GET /webhooks``: ``data`` is a list of webhooks (a list under
    ``data.webhooks`` or ``data.data`` also passes). An entry without an id cannot be
    edited or deleted, so it is skipped."""
    if not isinstance(doc, dict):
        raise DecodeError("webhook listing body is not an object")
    data = doc.get("data")
    if isinstance(data, dict):
        data = next((data[k] for k in ("webhooks", "data") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise DecodeError("webhook listing data is not a list")
    return tuple(
        hook
        for hook in (webhook(item) for item in data if isinstance(item, dict))
        if hook is not None
    )


def webhook_by_id(doc: object) -> Webhook:
    """The body of ``POST /webhooks`` and of ``PATCH /webhooks/{id}``: ``data`` is the
    webhook (``data.webhook`` also passes)."""
    if not isinstance(doc, dict):
        raise DecodeError("webhook body is not an object")
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get("webhook"), dict):
        data = data["webhook"]
    found = webhook(data) if isinstance(data, dict) else None
    if found is None:
        raise DecodeError("webhook body holds no webhook with an id")
    return found


def webhook(item: object) -> Webhook | None:
    """A webhook object; ``None`` when it has no id. Its URL is kept exactly as sent (it is
    compared with the one being registered), ``enabled`` defaults to true, as in the API."""
    if not isinstance(item, dict):
        raise DecodeError("webhook entry is not an object")
    hook_id = _text(item.get("id"))
    if not hook_id:
        return None
    url = item.get("url")
    events = item.get("events")
    enabled = boolean(item.get("enabled"))
    return Webhook(
        id=_clip(hook_id),
        url=_encodable(url) if isinstance(url, str) else "",
        name=_optional_text(item.get("name")),
        events=tuple(_clip(_encodable(e)) for e in events if isinstance(e, str))
        if isinstance(events, list)
        else (),
        enabled=True if enabled is None else enabled,
    )


def analytics_totals(doc: object) -> Totals:
    """The body of ``GET /analytics/livestreams/overall``: ``data`` is one object of
    totals (``count``, ``total_ingest_seconds``, ``total_viewer_seconds``)."""
    if not isinstance(doc, dict):
        raise DecodeError("analytics body is not an object")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise DecodeError("analytics data is not an object")
    return totals(data)


def analytics_days(doc: object) -> tuple[Totals, ...]:
    """The body of ``GET /analytics/livestreams/daywise``: ``data`` is a list of totals,
    each with its ``date``. More than :data:`MAX_DAYS` rows fail the whole answer rather
    than lose the rows past the cut (the day asked about may be the last one)."""
    if not isinstance(doc, dict):
        raise DecodeError("daywise analytics body is not an object")
    data = doc.get("data")
    if not isinstance(data, list):
        raise DecodeError("daywise analytics data is not a list")
    if len(data) > MAX_DAYS:
        raise DecodeError(f"daywise analytics hold more than {MAX_DAYS} rows")
    return tuple(totals(row, dated=True) for row in data)


def totals(item: object, *, dated: bool = False) -> Totals:
    """One object of analytics totals. Each value is a number or a numeric string, 0 when
    absent or null; any other value (negative, not finite, a boolean, a fractional count)
    fails the answer: totals that cannot be trusted are not exported. With ``dated``, its
    ``date`` becomes :attr:`Totals.day` (see :func:`day`)."""
    if not isinstance(item, dict):
        raise DecodeError("analytics totals are not an object")
    count, ingest, viewer = (_total(item.get(key), key) for key in _TOTALS_FIELDS)
    if not count.is_integer():
        raise DecodeError("analytics count is not a whole number")
    return Totals(
        count=int(count),
        ingest_seconds=ingest,
        viewer_seconds=viewer,
        day=day(item.get("date")) if dated else None,
    )


def _total(value: object, key: str) -> float:
    if value is None:
        return 0.0
    found = number(value)
    if found is None:  # the value itself is not quoted: it may be anything
        raise DecodeError(f"analytics {key} is not a number of at least 0")
    return found


def day(value: object) -> str | None:
    """An analytics date as ``YYYY-MM-DD``: such a date, or the date part of an ISO 8601
    timestamp (as written, not moved to UTC); ``None`` for anything else."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    found = _DAY.fullmatch(text)
    if found is None:
        return None
    try:
        date.fromisoformat(found.group(1))
    except ValueError:
        return None
    if len(text) > len(found.group(1)) and timestamp(text) is None:
        return None  # a date followed by something that is no time of day
    return found.group(1)


def status_value(value: object) -> str:
    """Upper-cased status, whatever it says; :data:`UNKNOWN_STATUS` when there is none.

    An odd status on one stream must not fail the whole listing: the set is open, and
    the poller asks the session endpoint about any status not known to mean "not live".
    """
    if not isinstance(value, str) or not value.strip():
        return UNKNOWN_STATUS
    return " ".join(_encodable(value).split()).upper()[:MAX_STATUS_LENGTH].rstrip()


def total_count(paging: object) -> int | None:
    """A paging block's ``total_count`` (its offsets are not needed: pages are counted
    from what came)."""
    if not isinstance(paging, dict):
        return None
    return _int(paging.get("total_count"))


def number(value: object) -> float | None:
    """A finite, non-negative number from a number or a numeric string; else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            result = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    if not math.isfinite(result) or result < 0:
        return None
    return result + 0.0  # -0.0 -> 0.0


def boolean(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def timestamp(value: object) -> float | None:
    """ISO 8601 (``Z`` or offset, any precision) or epoch seconds/milliseconds -> Unix seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            return None
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        return seconds / 1000.0 if seconds > 1e11 else seconds
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if _EPOCH_TEXT.match(text):
        return timestamp(float(text))
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        seconds = parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return seconds if seconds > 0 else None  # as for numbers: nothing at or before 1970


def _int(value: object) -> int | None:
    n = number(value)
    return int(n) if n is not None and n.is_integer() else None


def _error_message(value: object) -> str | None:
    """A session's ``err_message``, fit to show and log (:func:`_quoted`); None if empty."""
    text = _text(value)
    return (_quoted(text).strip() or None) if text is not None else None


def _quoted(message: str) -> str:
    """An API's error message, fit to log: secret-like runs redacted, then clipped (the
    other way round, a secret cut by the clip could slip under the length threshold)
    between words (a secret the clip cut in two would no longer be quoted whole, so the
    checks for the token and the stream key would miss its first characters)."""
    text = _SECRET_LIKE.sub(_redact, _encodable(message))
    if len(text) <= MAX_MESSAGE_LENGTH:
        return text
    clipped = text[:MAX_MESSAGE_LENGTH]
    if not text[MAX_MESSAGE_LENGTH].isspace():
        clipped = _LAST_WORD.sub("", clipped)  # the word the clip cut, whole
    # One word longer than the clip could hold anything: said to be there, not shown.
    return clipped if clipped.strip() else "<redacted>"


def _redact(match: re.Match[str]) -> str:
    return match[0] if _UUID.fullmatch(match[0]) else "<redacted>"


def _encodable(text: str) -> str:
    """``text`` with lone surrogates (valid in JSON, not in UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return _encodable(value).strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _optional_text(value: object) -> str | None:
    text = _text(value)
    return _clip(text) if text is not None else None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LABEL_LENGTH else text[:MAX_LABEL_LENGTH]
