"""Log formatting (logfmt or JSON) with a last line of defence against leaked secrets.

Fields passed with ``extra={...}`` (account_id, app_id, livestream_id, reason) become
key=value pairs. Whatever a record says, every secret the caller registers is replaced by
``<redacted>`` in the final line: the token should never reach a log call, and if a bug
ever lets it, it still does not reach the log.

The exporter's own loggers write on state changes only. The libraries' (asyncio, aiohttp)
may write one line per event: asyncio logged a traceback on every turn of the loop while
``accept()`` lacked file descriptors, 350 MB in 30 s. :class:`Throttle` lets through at
most :data:`BURST` records a minute of each of their messages, and says how many it held
back on the next one it lets through (field ``suppressed``). So it does for the
exporter's own messages that a client can repeat at will (a reload asked for over HTTP),
logged with ``extra=THROTTLED``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

Format = Literal["logfmt", "json"]
Level = Literal["debug", "info", "warn", "error"]
LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_FIELDS: Final = (
    "credentials",
    "account_id",
    "app_id",
    "livestream_id",
    "livestream_name",
    "reason",
    "address",
    "suppressed",
)
# Bidirectional controls: in a terminal, an override in a stream's name turns the rest of
# the line around (``level=error`` then reads otherwise); escaped in both formats.
_BIDI: Final = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# Characters that make a logfmt value quoted; of them, those escaped inside the quotes
# (C0 and C1 controls, DEL, the Unicode line and paragraph separators, bidi controls).
_LOGFMT_QUOTED: Final = re.compile(rf'[\s="\\\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]')
_LOGFMT_ESCAPED: Final = re.compile(rf'["\\\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]')
_JSON_ESCAPED: Final = re.compile(f"[{_BIDI}]")  # JSON escapes the rest itself
_LOGFMT_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
REDACTED: Final = "<redacted>"
MIN_REDACTED_LENGTH: Final = 8
BURST: Final = 3  # records a minute of one library message
THROTTLE_WINDOW: Final = 60.0
_MAX_THROTTLED_MESSAGES: Final = 1000  # messages tracked at once (a bound on memory)
# ``extra`` for a message of the exporter's own that a client can make it repeat.
THROTTLED: Final = {"throttled": True}


class Throttle(logging.Filter):
    """At most ``burst`` records per ``window`` seconds for each message (logger, level and
    unformatted text) of a logger outside the ``exporter`` package, or logged with
    ``extra=THROTTLED``."""

    def __init__(
        self,
        *,
        burst: int = BURST,
        window: float = THROTTLE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._window = window
        self._clock = clock
        # message -> (window start, records let through, records held back)
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "exporter" or record.name.startswith("exporter.")
        if ours and not getattr(record, "throttled", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        start, passed, held = self._seen.pop(key, (now, 0, 0))
        if now - start >= self._window:
            if held:
                record.suppressed = f"{held} like it in the {self._window:g}s before"
            start, passed, held = now, 0, 0
        if len(self._seen) >= _MAX_THROTTLED_MESSAGES:
            del self._seen[next(iter(self._seen))]  # the one seen longest ago
        if passed < self._burst:
            self._seen[key] = (start, passed + 1, held)
            return True
        self._seen[key] = (start, passed, held + 1)
        return False


class _Formatter(logging.Formatter):
    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": {"WARNING": "warn", "CRITICAL": "error"}.get(
                record.levelname, record.levelname.lower()
            ),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = str(value)
        if record.exc_info:
            ours = record.name == "exporter" or record.name.startswith("exporter.")
            out["exc"] = (
                self.formatException(record.exc_info)
                if ours
                else _exception_kinds(record.exc_info[1])
            )
        return out

    def format(self, record: logging.LogRecord) -> str:
        line = self.render(self.fields(record))
        for secret in self._secrets():
            # Replacing a very short string would mangle every line and, by its gaps,
            # show the secret; real API tokens are 40 characters.
            if len(secret) >= MIN_REDACTED_LENGTH:
                line = line.replace(secret, REDACTED)
        return line

    def render(self, fields: dict[str, str]) -> str:
        raise NotImplementedError


class LogfmtFormatter(_Formatter):
    def render(self, fields: dict[str, str]) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


class JsonFormatter(_Formatter):
    def render(self, fields: dict[str, str]) -> str:
        # A bidi control can only be inside a string: its \uXXXX escape is the same text.
        return _JSON_ESCAPED.sub(_unicode_escape, json.dumps(fields, ensure_ascii=False))


def _exception_kinds(exc: BaseException | None) -> str:
    """An exception a library logged, without its text: the text of a parser's error may
    quote what a client sent (a webhook body holds a stream key), which no log may show.
    The type and where it was raised, for each exception of the chain."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(parts) < 5:
        seen.add(id(exc))
        where = ""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        parts.append(f"{type(exc).__module__}.{type(exc).__qualname__}{where}")
        exc = exc.__cause__ or exc.__context__
    return "; from ".join(parts)


def _logfmt_value(value: str) -> str:
    """``value`` as one logfmt value: quoted if it holds a space, ``=``, a quote, a
    backslash or a control character, and then with those escaped, so that no text (a
    stream's name from the API) can end the line, start a field or move the cursor."""
    if value and not _LOGFMT_QUOTED.search(value):
        return value
    return '"' + _LOGFMT_ESCAPED.sub(_logfmt_escape, value) + '"'


def _logfmt_escape(match: re.Match[str]) -> str:
    return _LOGFMT_ESCAPES.get(match[0]) or _unicode_escape(match)


def _unicode_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


def configure(
    *,
    level: Level = "info",
    fmt: Format = "logfmt",
    secrets: Callable[[], Iterable[str]] = tuple,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger to ``stream`` (stderr) in ``fmt``; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter(secrets) if fmt == "json" else LogfmtFormatter(secrets)
    handler.setFormatter(formatter)
    handler.addFilter(Throttle())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # aiohttp logs every request at info; scrapes are not news.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
