"""The status page at ``/``: a snapshot and the recent poll errors as HTML (pure, no I/O).

:func:`render` shows, per app, its health and last successful poll, and a table of its
tracked livestreams (live ones first, at most ``max_rows``), then the last API errors.
Every value from the API or the configuration is escaped; the page has no script and
loads nothing else, so it works under ``Content-Security-Policy: default-src 'none'``.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.model import AppState, Session, Snapshot, StreamState, Unlisted
    from exporter.poller import PollError

MAX_ROWS: Final = 500  # livestreams shown per app; the rest are counted
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
    for app in snapshot.apps:
        parts.append(_app_section(app, now, max_rows))
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
        "<th>state</th><th>last successful poll</th><th>tracked streams</th><th>live</th>"
        f"<th>not in listing</th></tr></thead><tbody>\n{rows}</tbody></table>"
    )


def _app_row(app: AppState, now: float) -> str:
    live = sum(1 for s in app.streams if s.live)
    return (
        f'<tr data-account-id="{_e(app.account_id)}" data-app-id="{_e(app.app_id)}">'
        f'<td class="id account">{_e(app.account_id)}</td><td class="id app">{_e(app.app_id)}</td>'
        f'<td class="state">{_health(app)}</td>'
        f'<td class="last-success">{_when(app.last_success, now, never="never")}</td>'
        f'<td class="num tracked">{len(app.streams)}</td><td class="num live-count">{live}</td>'
        f'<td class="num unlisted">{len(app.unlisted)}</td></tr>\n'
    )


def _health(app: AppState) -> str:
    return '<span class="badge ok">up</span>' if app.up else '<span class="badge bad">down</span>'


def _app_section(app: AppState, now: float, max_rows: int) -> str:
    # Live streams first, so that a cap on thousands of streams never hides one.
    ordered = sorted(app.streams, key=lambda s: not s.live)
    shown = ordered[: max(0, max_rows)]
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
    hidden = len(ordered) - len(shown)
    if hidden > 0:
        parts.append(
            f'<p class="note more">{hidden} more not shown (the first {len(shown)} of '
            f"{len(ordered)} tracked livestreams are listed, live ones first).</p>"
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
