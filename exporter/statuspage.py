"""The status page at ``/``: a snapshot and the recent poll errors as HTML (pure, no I/O).

:func:`render` shows, per app, its health and last successful poll, and a table of its
tracked livestreams, then the last API errors. Streams that need attention come first, so
that the caps never hide one while a quiet stream is shown: expected live but not live,
then ERRORED (status or session error), then live, then the rest, each group by name and
id. At most ``max_rows`` streams are shown per app and ``max_total`` on the whole page (the
page is fetched again every poll interval); a note says how many each app leaves out.
Configured streams missing from the listing are few (they come from the configuration) and
always shown.
Every value from the API or the configuration is escaped; the page has no script and
loads nothing else, so it works under ``Content-Security-Policy: default-src 'none'``.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.model import AppState, PollError, Session, Snapshot, StreamState, Unlisted

MAX_ROWS: Final = 500  # livestreams shown per app; the rest are counted
# Livestream rows on the whole page (about 0.6 kB each): 20 apps of 10,000 streams once made
# a 5.75 MB page, fetched again at every refresh.
MAX_TOTAL_ROWS: Final = 2000
MAX_ERRORS: Final = 20
NONE: Final = "\u2014"  # an em dash: no value
# Statuses with a colour of their own; any other status (the set is open) is plain text.
_STATUS_CLASS: Final = {"LIVE": "ok", "ERRORED": "bad", "INVOKED": "warn"}

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#1d2329;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
table{border-collapse:collapse;margin:.3em 0 .6em}
th,td{border-bottom:1px solid #d6dbe0;padding:.25em .7em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.id{font-family:ui-monospace,monospace;font-size:.92em;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 .5em;border-radius:.6em;font-weight:600;white-space:nowrap}
.ok{background:#d7f5dd;color:#0b5d1e}.bad{background:#fbdada;color:#8a1010}
.warn{background:#fff1c2;color:#6b4e00}.muted,.ago{color:#65707b}.ago{font-size:.9em}
.t{white-space:nowrap}td .ago{display:block}
.note{background:#f5f7f9;border-left:3px solid #9aa5b1;padding:.4em .8em}
"""


def render(
    snapshot: Snapshot,
    errors: Sequence[PollError],
    now: float,
    version: str,
    *,
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
    shown = _select(snapshot.apps, max_rows, max_total)
    hidden = sum(len(app.streams) for app in snapshot.apps) - sum(map(len, shown))
    if hidden > 0:
        parts.append(
            f'<p class="note" id="capped">{hidden} tracked livestreams are not shown: at most '
            f"{max(0, max_rows)} per app and {max(0, max_total)} on the page, those that need "
            "attention first (expected live but not live, then ERRORED, then live).</p>"
        )
    for app, rows in zip(snapshot.apps, shown, strict=True):
        parts.append(_app_section(app, rows, now))
    parts.append(_errors(errors, now, max_errors))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary(snapshot: Snapshot, now: float) -> str:
    if snapshot.cycles == 0:
        return '<p class="note" id="no-poll">No poll yet: the first cycle has not completed.</p>'
    up = sum(1 for app in snapshot.apps if app.up)
    rows = "".join(_app_row(app, now) for app in snapshot.apps)
    return (
        f'<p id="last-cycle">Last poll cycle ended {_when(snapshot.taken_at, now)}; '
        f"{snapshot.cycles} cycles since start; {up} of {len(snapshot.apps)} apps up.</p>\n"
        '<h2>Apps</h2>\n<table id="apps"><thead><tr><th>account_id</th><th>app_id</th>'
        "<th>credentials</th><th>state</th><th>last successful poll</th>"
        "<th>tracked streams</th><th>live</th>"
        f"<th>not in listing</th></tr></thead><tbody>\n{rows}</tbody></table>"
    )


def _app_row(app: AppState, now: float) -> str:
    live = sum(1 for s in app.streams if s.live)
    return (
        f'<tr data-account-id="{_e(app.account_id)}" data-app-id="{_e(app.app_id)}">'
        f'<td class="id account">{_e(app.account_id)}</td><td class="id app">{_e(app.app_id)}</td>'
        f'<td class="credentials">{_e(app.credentials)}</td><td class="state">{_health(app)}</td>'
        f'<td class="last-success">{_when(app.last_success, now, never="never")}</td>'
        f'<td class="num tracked">{len(app.streams)}</td><td class="num live-count">{live}</td>'
        f'<td class="num unlisted">{len(app.unlisted)}</td></tr>\n'
    )


def _health(app: AppState) -> str:
    return '<span class="badge ok">up</span>' if app.up else '<span class="badge bad">down</span>'


def _group(stream: StreamState) -> int:
    """0: expected live but not live; 1: ERRORED or a session error; 2: live; 3: the rest."""
    if stream.expected_live and not stream.live:
        return 0
    if stream.livestream.status == "ERRORED" or (
        stream.session is not None and stream.session.errored
    ):
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


def _app_section(app: AppState, shown: Sequence[StreamState], now: float) -> str:
    rows = [_stream_row(s, now) for s in shown] + [_unlisted_row(u) for u in app.unlisted]
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
        parts.append(
            f'<table class="streams" data-account-id="{_e(app.account_id)}" '
            f'data-app-id="{_e(app.app_id)}"><thead><tr><th>name</th><th>livestream_id</th>'
            "<th>status</th><th>live</th><th>live since</th><th>viewer seconds</th>"
            "<th>ingest seconds</th><th>session error</th><th>last update</th></tr></thead>"
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


def _stream_row(stream: StreamState, now: float) -> str:
    ls = stream.livestream
    session = stream.session
    status_class = _STATUS_CLASS.get(ls.status)
    status = _e(ls.status)
    if status_class is not None:
        status = f'<span class="badge {status_class}">{status}</span>'
    live = '<span class="badge ok">yes</span>' if stream.live else "no"
    if stream.expected_live and not stream.live:
        live = 'no <span class="badge bad">expected live</span>'
    since = NONE
    if stream.session_current and session is not None and session.started_time is not None:
        since = _when(session.started_time, now)
    return (
        f'<tr data-livestream-id="{_e(stream.id)}">'
        f'<td class="name">{_e(ls.name) if ls.name else NONE}</td>'
        f'<td class="id">{_e(stream.id)}</td><td class="status">{status}</td>'
        f'<td class="live">{live}</td><td class="since">{since}</td>'
        f'<td class="num viewer">{_counter(session, "viewer")}</td>'
        f'<td class="num ingest">{_counter(session, "ingest")}</td>'
        f'<td class="errored">{_errored(session)}</td>'
        f'<td class="updated">{_when(stream.last_update, now)}</td></tr>\n'
    )


def _unlisted_row(gone: Unlisted) -> str:
    empty = f"<td>{NONE}</td>"
    return (
        f'<tr data-livestream-id="{_e(gone.id)}" class="unlisted">'
        f'<td class="name">{NONE}</td><td class="id">{_e(gone.id)}</td>'
        '<td class="status"><span class="badge warn">not in listing</span></td>'
        f"{empty * 6}</tr>\n"
    )


def _counter(session: Session | None, which: str) -> str:
    if session is None:
        return NONE
    value = session.viewer_seconds if which == "viewer" else session.ingest_seconds
    if value is None:
        return NONE
    return f"{value:.0f}" if float(value).is_integer() or value >= 1e6 else f"{value:.1f}"


def _errored(session: Session | None) -> str:
    if session is None:
        return NONE
    return '<span class="badge bad">yes</span>' if session.errored else "no"


def _errors(errors: Sequence[PollError], now: float, max_errors: int) -> str:
    # Newest first whatever the order given; sorted() is stable for errors of one cycle.
    shown = sorted(errors, key=lambda e: e.time, reverse=True)[: max(0, max_errors)]
    head = f'<h2>Recent API errors</h2>\n<p class="muted">At most {max_errors}, newest first.</p>'
    if not shown:
        return head + '\n<p id="no-errors">No API errors since the exporter started.</p>'
    rows = "".join(
        f'<tr><td class="time">{_when(e.time, now)}</td><td class="id">{_e(e.account_id)}</td>'
        f'<td class="id">{_e(e.app_id)}</td><td>{_e(e.endpoint) or NONE}</td>'
        f'<td class="reason"><code>{_e(e.reason)}</code></td>'
        f'<td class="message">{_e(e.message)}</td></tr>\n'
        for e in shown
    )
    return (
        f'{head}\n<table id="errors"><thead><tr><th>time</th><th>account_id</th>'
        "<th>app_id</th><th>endpoint</th><th>reason</th><th>message</th></tr></thead>"
        f"<tbody>\n{rows}</tbody></table>"
    )


def _when(timestamp: float | None, now: float, *, never: str = NONE) -> str:
    """``2026-11-27 10:00:00 UTC`` and how long ago, or ``never`` without a time."""
    if timestamp is None:
        return never
    try:
        shown = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return _e(f"{timestamp:g}")
    return f'<span class="t">{shown}</span> <span class="ago">({ago(now - timestamp)})</span>'


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
