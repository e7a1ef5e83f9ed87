"""The status page at ``/``: a snapshot, the credentials' budgets and the recent poll
errors as HTML (pure, no I/O).

:func:`render` shows, per app, its health and last successful poll; per credentials
(:class:`CredentialsStatus`, read by the caller on the event loop), the poll interval, the
budget in force, the requests it grants now, the API's rate limit remaining and the poll
plan; per app, a table of its tracked livestreams; then the last API errors.

Streams that need attention come first, so that the caps never hide one while a quiet
stream is shown: expected live but not live, then ERRORED (status or session error), then
live, then the rest, each group by name and id. At most ``max_rows`` streams are shown per
app and ``max_total`` on the whole page (the page is fetched again every poll interval); a
note says how many each app leaves out. Configured streams missing from the listing are
few (they come from the configuration) and always shown.

A stream's session values are shown as current only while it is live with an active
session. Any other stream shows its last session's values in one cell headed "last
session" (when it ended, its counters, its error), never in the current session's columns.
A session's error message is shown as the decoder and client left it (runs that look like
a secret redacted, the whole message withheld if it quotes the token or the stream key),
and escaped here.

Ids are set in monospace and never broken across lines: a UUID stays whole on one line,
and an id longer than a UUID is cut with an ellipsis, whole in its ``title``. The "values
read" column is empty for a row read at the app's last cycle (its time is said once,
above the table); otherwise it says how long ago the row was read, or, for a live stream whose
counters are read in turn (the lanes plan), how long ago its counters were.

Every value from the API or the configuration is escaped; the page has no script and
loads nothing else, so it works under ``Content-Security-Policy: default-src 'none'``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from exporter.model import ERRORED

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.model import AppState, PollError, Snapshot, StreamState, Unlisted

MAX_ROWS: Final = 500  # livestreams shown per app; the rest are counted
# Livestream rows on the whole page (about 0.6 kB each): 20 apps of 10,000 streams once made
# a 5.75 MB page, fetched again at every refresh.
MAX_TOTAL_ROWS: Final = 2000
MAX_ERRORS: Final = 20
NONE: Final = "\u2014"  # an em dash: no value
UUID_LENGTH: Final = 36  # ids up to this long are shown whole; longer ones are cut
# Statuses with a colour of their own; any other status (the set is open) is plain text.
_STATUS_CLASS: Final = {"LIVE": "ok", "ERRORED": "bad", "INVOKED": "warn"}
# A row read this much before the app's last cycle says when it was read.
_SAME_CYCLE: Final = 1.0
_SEP: Final = ' <span class="muted">\u00b7</span> '

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#1d2329;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
table{border-collapse:collapse;margin:.3em 0 .6em}
th,td{border-bottom:1px solid #d6dbe0;padding:.25em .7em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,monospace;font-size:.92em;overflow-wrap:anywhere}
.id{font-family:ui-monospace,monospace;font-size:.92em;white-space:nowrap}
.clip{display:inline-block;max-width:36ch;overflow:hidden;text-overflow:ellipsis;
vertical-align:bottom}
.badge{display:inline-block;padding:0 .5em;border-radius:.6em;font-weight:600;white-space:nowrap}
.ok{background:#d7f5dd;color:#0b5d1e}.bad{background:#fbdada;color:#8a1010}
.warn{background:#fff1c2;color:#6b4e00}.muted,.ago{color:#65707b}.ago{font-size:.9em}
.t{white-space:nowrap}td .ago{display:block}td.read .ago{display:inline}
.note{background:#f5f7f9;border-left:3px solid #9aa5b1;padding:.4em .8em}
tr.alert td{background:#fff5f5}tr.alert td:first-child{box-shadow:inset 3px 0 #c62828}
.label{font-weight:600;color:#4a5560}.err{color:#8a1010;font-weight:600}
td.last-session{color:#39434d}
td.name,td.errored,td.last-session,td.message{overflow-wrap:anywhere}td.name{min-width:9em}
"""


@dataclass(frozen=True, slots=True)
class CredentialsStatus:
    """What the page shows of one credentials' polling (read on the event loop, where
    the budget and the poller live, and handed to :func:`render` as plain data)."""

    name: str
    apps: int  # apps read with them
    interval: float  # poll.interval, seconds
    requests: int  # the budget in force: requests per window
    window: float
    available: int  # requests the budget would grant right now
    from_policy: bool = False  # the API's stated limit (Ratelimit-Policy) is what is in force
    remaining: int | None = None  # the API's last Ratelimit remaining; None if none seen
    mode: str | None = None  # the poll plan: "full", "lanes", or None before a first cycle
    counter_period: float = 0.0  # lanes: about how often each live stream's counters are read
    listing_period: float = 0.0  # lanes: about how often the full listing is read


def render(
    snapshot: Snapshot,
    errors: Sequence[PollError],
    now: float,
    version: str,
    *,
    credentials: Sequence[CredentialsStatus] = (),
    refresh: float | None = None,
    max_rows: int = MAX_ROWS,
    max_total: int = MAX_TOTAL_ROWS,
    max_errors: int = MAX_ERRORS,
) -> str:
    """The whole page; ``refresh`` (seconds) adds a ``<meta http-equiv="refresh">``."""
    head = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
    ]
    if refresh is not None:
        head.append(f'<meta http-equiv="refresh" content="{max(1, round(refresh))}">')
    head.append(f"<title>RealtimeKit exporter</title><style>{_STYLE}</style></head><body>")
    parts = [
        "".join(head),
        "<h1>RealtimeKit exporter</h1>",
        f"<p>Prometheus exporter for Cloudflare RealtimeKit livestreams, version {_e(version)}."
        "</p>",
        "<ul>",
        '<li><a href="/metrics">/metrics</a>: the metrics</li>',
        '<li><a href="/-/healthy">/-/healthy</a>: 200 while the process runs</li>',
        '<li><a href="/-/ready">/-/ready</a>: 200 once the first poll cycle has completed</li>',
        "</ul>",
        _summary(snapshot, now),
    ]
    if credentials:
        parts.append(_credentials(credentials))
    shown = _select(snapshot.apps, max_rows, max_total)
    hidden = sum(len(app.streams) for app in snapshot.apps) - sum(map(len, shown))
    if hidden > 0:
        parts.append(
            f'<p class="note" id="capped">{hidden} tracked livestreams are not shown: at most '
            f"{max(0, max_rows)} per app and {max(0, max_total)} on the page, those that need "
            "attention first (expected live but not live, then ERRORED, then live).</p>"
        )
    for app, rows in zip(snapshot.apps, shown, strict=True):
        parts.append(_app_section(app, rows, now, snapshot.taken_at))
    parts.append(_errors(errors, now, max_errors))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary(snapshot: Snapshot, now: float) -> str:
    if snapshot.cycles == 0:
        return '<p class="note" id="no-poll">No poll yet: the first cycle has not completed.</p>'
    up = sum(1 for app in snapshot.apps if app.up)
    missing_by_app = [_missing_expected(app) for app in snapshot.apps]
    missing = sum(missing_by_app)
    expected = ""
    if missing:
        expected = (
            f' <span class="badge bad">{missing} expected live</span> '
            f"{'stream is' if missing == 1 else 'streams are'} not live."
        )
    rows = "".join(
        _app_row(app, n, now) for app, n in zip(snapshot.apps, missing_by_app, strict=True)
    )
    return (
        f'<p id="last-cycle">Last poll cycle ended {_when(snapshot.taken_at, now)}; '
        f"{snapshot.cycles} cycles since start; {up} of {len(snapshot.apps)} apps up."
        f"{expected}</p>\n"
        '<h2>Apps</h2>\n<table id="apps"><thead><tr><th>account_id</th><th>app_id</th>'
        "<th>credentials</th><th>state</th><th>last successful poll</th>"
        "<th>tracked streams</th><th>live</th><th>expected live, not live</th>"
        f"<th>not in listing</th></tr></thead><tbody>\n{rows}</tbody></table>"
    )


def _missing_expected(app: AppState) -> int:
    """The app's streams expected live that are not live, or not in its listing."""
    return sum(1 for s in app.streams if s.expected_live and not s.live) + sum(
        1 for u in app.unlisted if u.expected_live
    )


def _app_row(app: AppState, missing: int, now: float) -> str:
    """The app's row; ``missing``: its streams expected live that are not live."""
    live = sum(1 for s in app.streams if s.live)
    shown = f'<span class="badge bad">{missing}</span>' if missing else "0"
    return (
        f'<tr data-account-id="{_e(app.account_id)}" data-app-id="{_e(app.app_id)}">'
        f'<td class="id account">{_id(app.account_id)}</td>'
        f'<td class="id app">{_id(app.app_id)}</td>'
        f'<td class="credentials">{_e(app.credentials)}</td><td class="state">{_health(app)}</td>'
        f'<td class="last-success">{_when(app.last_success, now, never="never")}</td>'
        f'<td class="num tracked">{len(app.streams)}</td><td class="num live-count">{live}</td>'
        f'<td class="num expected-down">{shown}</td>'
        f'<td class="num unlisted">{len(app.unlisted)}</td></tr>\n'
    )


def _credentials(rows: Sequence[CredentialsStatus]) -> str:
    body = "".join(_credentials_row(c) for c in rows)
    return (
        '<h2>Credentials</h2>\n<table id="credentials"><thead><tr><th>credentials</th>'
        "<th>apps</th><th>poll interval</th><th>budget in force</th>"
        "<th>requests left now</th><th>API rate limit remaining</th><th>plan</th>"
        f"</tr></thead><tbody>\n{body}</tbody></table>"
    )


def _credentials_row(c: CredentialsStatus) -> str:
    budget = f"{c.requests} per {c.window:g} s"
    if c.from_policy:
        budget += ' <span class="muted">(the API\'s Ratelimit-Policy)</span>'
    left = str(c.available)
    if c.available <= 0:
        left = '<span class="badge bad">0</span> <span class="muted">(waiting)</span>'
    elif c.available * 10 < c.requests:
        left = f'<span class="badge warn">{c.available}</span>'
    remaining = (
        str(c.remaining) if c.remaining is not None else '<span class="muted">not stated</span>'
    )
    return (
        f'<tr data-credentials="{_e(c.name)}"><td class="name">{_e(c.name)}</td>'
        f'<td class="num apps">{c.apps}</td><td class="interval">{_seconds(c.interval)}</td>'
        f'<td class="budget">{budget}</td><td class="num available">{left}</td>'
        f'<td class="num remaining">{remaining}</td><td class="plan">{_plan(c)}</td></tr>\n'
    )


def _plan(c: CredentialsStatus) -> str:
    if c.mode is None:
        return f'{NONE} <span class="muted">(no cycle yet)</span>'
    if c.mode == "full":
        return "every stream each cycle"
    counters = (
        f"counters about every {_seconds(c.counter_period)}"
        if math.isfinite(c.counter_period)
        else "no budget left for counters"
    )
    return (
        '<span class="badge warn">budget short</span> statuses each cycle, '
        f"{counters}, the full listing about every {_seconds(c.listing_period)}"
    )


def _health(app: AppState) -> str:
    return '<span class="badge ok">up</span>' if app.up else '<span class="badge bad">down</span>'


def _group(stream: StreamState) -> int:
    """0: expected live but not live; 1: ERRORED or a session error; 2: live; 3: the rest."""
    if stream.expected_live and not stream.live:
        return 0
    if stream.in_error:
        return 1
    return 2 if stream.live else 3


def _order(stream: StreamState) -> tuple[int, str, str]:
    return (_group(stream), stream.livestream.name or "", stream.id)


def _select(apps: Sequence[AppState], max_rows: int, max_total: int) -> list[list[StreamState]]:
    """The streams each app shows, in order: at most ``max_rows`` of an app, at most
    ``max_total`` in all. The page's budget goes by group over all apps (every app's
    streams that need attention before any app's quiet ones), round robin within a group."""
    ordered = [sorted(app.streams, key=_order)[: max(0, max_rows)] for app in apps]
    candidates: list[tuple[int, int, int, int]] = []  # group, rank in it, app, position
    for index, streams in enumerate(ordered):
        start: dict[int, int] = {}  # group -> the position of its first stream
        for position, s in enumerate(streams):
            group = _group(s)
            rank = position - start.setdefault(group, position)
            candidates.append((group, rank, index, position))
    candidates.sort()
    keep = [0] * len(apps)  # an app's shown streams are a prefix of its ordered ones
    for *_, index, position in candidates[: max(0, max_total)]:
        keep[index] = max(keep[index], position + 1)
    return [streams[:n] for streams, n in zip(ordered, keep, strict=True)]


def _app_section(app: AppState, shown: Sequence[StreamState], now: float, taken_at: float) -> str:
    # The app's last cycle: when its streams were last read together (a webhook's
    # refresh after the cycle reads one stream later, and is not the cycle).
    cycle = max((s.last_update for s in app.streams if s.last_update <= taken_at), default=None)
    rows = [_stream_row(s, now, cycle) for s in shown] + [_unlisted_row(u) for u in app.unlisted]
    title = f"{_e(app.account_id)} / {_e(app.app_id)}"
    parts = [
        f"<section>\n<h2>Livestreams of {title} {_health(app)}</h2>",
    ]
    if not app.up:
        parts.append(
            '<p class="note">The last poll of this app failed: the values below are the '
            "last ones fetched, until they are older than poll.max_staleness.</p>"
        )
    if rows:
        if cycle is not None:
            parts.append(
                f'<p class="muted read-at">Values below were read {_when(cycle, now)}, '
                "unless \u201cvalues read\u201d says otherwise.</p>"
            )
        parts.append(
            f'<table class="streams" data-account-id="{_e(app.account_id)}" '
            f'data-app-id="{_e(app.app_id)}"><thead><tr><th>name</th><th>livestream_id</th>'
            "<th>status</th><th>live</th><th>live since</th><th>viewer seconds</th>"
            "<th>ingest seconds</th><th>session error</th><th>values read</th></tr></thead>"
            "<tbody>\n" + "".join(rows) + "</tbody></table>"
        )
    else:
        parts.append('<p class="muted">No livestreams tracked.</p>')
    hidden = len(app.streams) - len(shown)
    if hidden > 0:
        shown_ids = {s.id for s in shown}
        urgent = sum(1 for s in app.streams if _group(s) < 2 and s.id not in shown_ids)
        of_them = f", {urgent} of them expected live but not live or ERRORED" if urgent else ""
        parts.append(
            f'<p class="note more">{hidden} more not shown{of_them} (the first {len(shown)} '
            f"of {len(app.streams)} tracked livestreams are listed, those that need attention "
            "first, then live ones).</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _stream_row(stream: StreamState, now: float, cycle: float | None) -> str:
    ls = stream.livestream
    status_class = _STATUS_CLASS.get(ls.status)
    status = _e(ls.status)
    if status_class is not None:
        status = f'<span class="badge {status_class}">{status}</span>'
    alert = ' class="alert"' if stream.expected_live and not stream.live else ""
    if stream.session_current:
        session = _current_session(stream, now)
    else:
        session = f'<td class="last-session" colspan="4">{_last_session(stream, now)}</td>'
    return (
        f'<tr data-livestream-id="{_e(stream.id)}"{alert}>'
        f'<td class="name">{_e(ls.name) if ls.name else NONE}</td>'
        f'<td class="id">{_id(stream.id)}</td><td class="status">{status}</td>'
        f'<td class="live">{_live(stream.live, stream.expected_live)}</td>{session}'
        f'<td class="read">{_read(stream, now, cycle)}</td></tr>\n'
    )


def _live(live: bool, expected: bool | None) -> str:
    """Whether the stream is live, and what its configuration expects (``expect_live``):
    an expected live stream that is not live stands out."""
    if live:
        return '<span class="badge ok">yes</span>' + (
            ' <span class="muted">expected</span>' if expected else ""
        )
    if expected:
        return 'no <span class="badge bad">expected live</span>'
    return 'no <span class="muted">(may be off)</span>' if expected is False else "no"


def _current_session(stream: StreamState, now: float) -> str:
    session = stream.session
    assert session is not None  # session_current
    since = NONE if session.started_time is None else _when(session.started_time, now)
    error = "no"
    if session.err_message:
        error = f'<span class="err">{_e(session.err_message)}</span>'
    return (
        f'<td class="since">{since}</td>'
        f'<td class="num viewer">{_counter(session.viewer_seconds)}</td>'
        f'<td class="num ingest">{_counter(session.ingest_seconds)}</td>'
        f'<td class="errored">{error}</td>'
    )


def _last_session(stream: StreamState, now: float) -> str:
    """The values of a stream that is not live (or live without its session read yet):
    those of its last session, said to be so, or why there are none."""
    session = stream.session
    errored = stream.livestream.status == ERRORED
    if stream.live:
        return f'<span class="muted">{NONE} session not read yet</span>'
    if session is None:
        if errored:
            return (
                '<span class="label">last session</span> not seen by the exporter: its '
                "error message is not known"
            )
        return f'<span class="muted">{NONE} no session seen</span>'
    parts = ['<span class="label">last session</span>']
    if session.stopped_time is not None:
        parts[0] += f" ended {_when(session.stopped_time, now, inline=True)}"
    elif session.ended:
        parts[0] += " ended"
    elif session.started_time is not None:
        started = _when(session.started_time, now, inline=True)
        parts[0] += f" started {started}, its final values not read"
    else:
        parts[0] += ", its final values not read"
    if session.viewer_seconds is not None:
        parts.append(f"viewer seconds {_counter(session.viewer_seconds)}")
    if session.ingest_seconds is not None:
        parts.append(f"ingest seconds {_counter(session.ingest_seconds)}")
    if session.err_message:
        parts.append(f'error: <span class="err">{_e(session.err_message)}</span>')
    elif errored and session.active:
        parts.append("error: not known until its final values are read")
    elif errored:
        parts.append("error: none given by the API")
    else:
        parts.append("no error")
    return _SEP.join(parts)


def _read(stream: StreamState, now: float, cycle: float | None) -> str:
    """Empty for a row read at the app's last cycle; else how long ago it was read (or,
    for a live stream whose counters wait their turn, how long ago those were)."""
    if cycle is None:
        return ""
    if stream.last_update < cycle - _SAME_CYCLE:
        return _age(stream.last_update, now)
    if stream.session_current and stream.counters_at < stream.last_update - _SAME_CYCLE:
        return "counters " + _age(stream.counters_at, now)
    return ""


def _unlisted_row(gone: Unlisted) -> str:
    alert = ' class="unlisted alert"' if gone.expected_live else ' class="unlisted"'
    return (
        f'<tr data-livestream-id="{_e(gone.id)}"{alert}>'
        f'<td class="name">{NONE}</td><td class="id">{_id(gone.id)}</td>'
        '<td class="status"><span class="badge warn">not in listing</span></td>'
        f'<td class="live">{_live(False, gone.expected_live)}</td>'
        f'<td colspan="4">{NONE}</td><td>{NONE}</td></tr>\n'
    )


def _counter(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.0f}" if float(value).is_integer() or value >= 1e6 else f"{value:.1f}"


def _errors(errors: Sequence[PollError], now: float, max_errors: int) -> str:
    # Newest first whatever the order given; sorted() is stable for errors of one cycle.
    shown = sorted(errors, key=lambda e: e.time, reverse=True)[: max(0, max_errors)]
    head = f'<h2>Recent API errors</h2>\n<p class="muted">At most {max_errors}, newest first.</p>'
    if not shown:
        return head + '\n<p id="no-errors">No API errors since the exporter started.</p>'
    rows = "".join(
        f'<tr><td class="time">{_when(e.time, now)}</td><td class="id">{_id(e.account_id)}</td>'
        f'<td class="id">{_id(e.app_id)}</td><td>{_e(e.endpoint) or NONE}</td>'
        f'<td class="reason"><code>{_e(e.reason)}</code></td>'
        f'<td class="message">{_e(e.message)}</td></tr>\n'
        for e in shown
    )
    return (
        f'{head}\n<table id="errors"><thead><tr><th>time</th><th>account_id</th>'
        "<th>app_id</th><th>endpoint</th><th>reason</th><th>message</th></tr></thead>"
        f"<tbody>\n{rows}</tbody></table>"
    )


def _id(value: str) -> str:
    """An id, whole if it is no longer than a UUID, else cut by CSS with the whole id in
    its title (and still in the text, so that a copy takes all of it)."""
    if len(value) <= UUID_LENGTH:
        return _e(value)
    return f'<span class="clip" title="{_e(value)}">{_e(value)}</span>'


def _when(timestamp: float | None, now: float, *, never: str = NONE, inline: bool = False) -> str:
    """``2026-11-27 10:00:00 UTC`` and how long ago, or ``never`` without a time;
    ``inline`` keeps the age beside the time."""
    if timestamp is None:
        return never
    shown = _utc(timestamp)
    if shown is None:  # a time no calendar holds
        return _e(f"{timestamp:g}")
    age = f'<span class="{"muted" if inline else "ago"}">({ago(now - timestamp)})</span>'
    return f'<span class="t">{shown}</span> {age}'


def _age(timestamp: float, now: float) -> str:
    """How long ago, with the time itself in a title."""
    shown = _utc(timestamp) or f"{timestamp:g}"
    return f'<span class="ago" title="{_e(shown)}">{ago(now - timestamp)}</span>'


def _utc(timestamp: float) -> str | None:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return None


def _seconds(seconds: float) -> str:
    """A duration: ``30 s``, ``5 min`` from 2 min, ``2 h`` from 2 h (rounded)."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:g} s" if seconds < 10 else f"{seconds:.0f} s"


def ago(seconds: float) -> str:
    """``12 s ago``; minutes from 2 min, hours from 2 h, days from 2 d; ``in 3 s`` ahead."""
    if seconds < 0:
        return f"in {-seconds:.0f} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _e(value: str) -> str:
    return html.escape(value, quote=True)
