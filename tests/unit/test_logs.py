"""Log lines: logfmt and JSON, structured fields, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest

from exporter import logs

SECRET = "tok-very-secret-0123"


def emit(fmt: logs.Format, level: logs.Level = "info") -> tuple[str, logging.Logger]:
    stream = io.StringIO()
    logs.configure(level=level, fmt=fmt, secrets=lambda: (SECRET,), stream=stream)
    logger = logging.getLogger("exporter.test")
    logger.info("stream went LIVE", extra={"app_id": "app 1", "livestream_id": "ls-1"})
    logger.warning("bad answer: %s", f"Bearer {SECRET} rejected")
    logger.debug("hidden at info")
    return stream.getvalue(), logger


def test_logfmt_lines_carry_fields_and_quote_values(restore_root: None) -> None:
    """logfmt: one line per record, level names Prometheus-style, values with spaces quoted."""
    text, _ = emit("logfmt")
    first, second = text.splitlines()
    assert ' level=info logger=exporter.test msg="stream went LIVE" ' in first
    assert first.endswith('app_id="app 1" livestream_id=ls-1')
    assert " level=warn " in second
    assert "hidden at info" not in text


def test_json_lines_parse(restore_root: None) -> None:
    """JSON: every line is an object with ts, level, logger, msg and the extra fields."""
    text, _ = emit("json")
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0]["msg"] == "stream went LIVE"
    assert records[0]["livestream_id"] == "ls-1" and records[0]["level"] == "info"
    assert records[0]["ts"].endswith("Z")


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_secrets_are_redacted_whatever_the_message(restore_root: None, fmt: logs.Format) -> None:
    """A registered secret never reaches the output, even if a message contains it."""
    text, _ = emit(fmt)
    assert SECRET not in text
    assert logs.REDACTED in text


def test_secrets_in_tracebacks_are_redacted(restore_root: None) -> None:
    """Exception text inside a logged traceback is redacted too."""
    stream = io.StringIO()
    logs.configure(fmt="logfmt", secrets=lambda: (SECRET,), stream=stream)
    try:
        raise ValueError(f"token {SECRET} in an exception")
    except ValueError:
        logging.getLogger("exporter.test").exception("failed")
    assert "ValueError" in stream.getvalue() and SECRET not in stream.getvalue()


def test_debug_level_shows_debug(restore_root: None) -> None:
    """--log.level debug lets debug lines through."""
    text, _ = emit("logfmt", level="debug")
    assert "hidden at info" in text


def test_too_short_secrets_are_not_replaced(restore_root: None) -> None:
    """A secret under 8 characters is not substituted: that would mangle and reveal it."""
    stream = io.StringIO()
    logs.configure(fmt="logfmt", secrets=lambda: ("t",), stream=stream)
    logging.getLogger("exporter.test").info("listening on the network")
    assert "listening on the network" in stream.getvalue()


def test_a_library_message_is_throttled_and_the_held_back_count_said(
    restore_root: None,
) -> None:
    """A library (asyncio, aiohttp) message repeated on every event is let through at most
    BURST times a minute; the next one let through says how many were held back. The
    exporter's own messages are never held back."""
    stream = io.StringIO()
    handler = logs.configure(stream=stream)
    now = [0.0]
    handler.filters = [logs.Throttle(clock=lambda: now[0])]
    flood = logging.getLogger("asyncio")
    ours = logging.getLogger("exporter.test")
    for _ in range(1000):
        flood.error("socket.accept() out of system resource", exc_info=OSError(24, "EMFILE"))
        ours.info("livestream went LIVE")
    lines = stream.getvalue().splitlines()
    assert sum("accept()" in line for line in lines) == logs.BURST
    assert sum("went LIVE" in line for line in lines) == 1000
    now[0] += logs.THROTTLE_WINDOW
    flood.error("socket.accept() out of system resource")
    last = stream.getvalue().splitlines()[-1]
    assert "accept()" in last and f'suppressed="{1000 - logs.BURST} like it' in last


def test_an_own_message_a_client_can_repeat_is_throttled_too(restore_root: None) -> None:
    """A message of the exporter's own logged with extra=THROTTLED (a reload asked for over
    HTTP) is let through BURST times a minute; the same logger's other messages are not
    held back."""
    stream = io.StringIO()
    logs.configure(stream=stream)
    logger = logging.getLogger("exporter.reload")
    for _ in range(400):
        logger.info("configuration reloaded: %s", "c.yaml", extra=logs.THROTTLED)
        logger.info("a state change")
    lines = stream.getvalue().splitlines()
    assert sum("configuration reloaded" in line for line in lines) == logs.BURST
    assert sum("a state change" in line for line in lines) == 400


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        ("line\nbreak\rreturn\ttab", '"line\\nbreak\\rreturn\\ttab"'),
        ("esc\x1b[2J del\x7f c1\x85", '"esc\\u001b[2J del\\u007f c1\\u0085"'),
        ("sep\u2028par\u2029", '"sep\\u2028par\\u2029"'),
        ("Bühne🎤", "Bühne🎤"),
    ],
    ids=["plain", "space", "quotes", "breaks", "controls", "separators", "unicode"],
)
def test_logfmt_values_cannot_break_the_line_or_move_the_cursor(
    restore_root: None, value: str, shown: str
) -> None:
    """Text from the API (a stream's name, a session's error) in a message or a field:
    one line whatever it holds, with line breaks, control characters and Unicode line
    separators escaped inside quotes."""
    stream = io.StringIO()
    logs.configure(fmt="logfmt", stream=stream)
    logging.getLogger("exporter.test").info("%s", value, extra={"livestream_name": value})
    [line] = stream.getvalue().split("\n")[:-1]
    assert line.endswith(f" msg={shown} livestream_name={shown}")
