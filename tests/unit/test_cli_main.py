"""The command line's parts that run in the test process: listen addresses and their
default, SIGTERM before the event loop handles it, mistyped flags (the command line as a real
subprocess: tests/process/test_cli.py)."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from exporter import cli, logs
from exporter import config as config_module
from exporter.cliargs import (
    EXIT_FAILURE,
    EXIT_USAGE,
    UsageError,
    parse_args,
    parse_listen,
    unknown_flag,
)
from tests.reloading import cli_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":10241", (None, 10241)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:80", ("localhost", 80)),
    ],
    ids=["all-interfaces", "ipv4", "ipv6", "name"],
)
def test_parse_listen(address: str, expected: tuple[str | None, int]) -> None:
    """Listen addresses take the Prometheus HOST:PORT forms."""
    assert parse_listen(address) == expected


@pytest.mark.parametrize(
    "address", ["10241", "host:", "host:99999", "::1:80", "[]:80", ":\u0661\u0660\u0662"], ids=str
)
def test_parse_listen_rejects(address: str) -> None:
    """Malformed listen addresses are usage errors."""
    with pytest.raises(UsageError):
        parse_listen(address)


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # interrupted at once; the sleep only bounds a failure


@pytest.mark.interpreter
def test_sigterm_interrupts_before_the_event_loop_handles_it() -> None:
    """As PID 1 a SIGTERM without a handler is ignored: main() makes it a KeyboardInterrupt
    from the start, and main's caller gets the old handler back."""
    before = signal.getsignal(signal.SIGTERM)
    previous = cli.interrupt_on_sigterm()
    try:
        assert previous == before
        with pytest.raises(KeyboardInterrupt):
            _terminate_self()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_default_listen_address_is_every_interface_on_10241() -> None:
    """Containers, Kubernetes probes and Services reach the exporter from outside its own
    loopback: the default must bind every interface (host None), on port 10241."""
    assert cli.DEFAULT_LISTEN == ":10241"
    assert parse_listen(cli.DEFAULT_LISTEN) == (None, 10241)
    assert cli.build_parser().parse_args(["--config.file", "x.yaml"]).listen == cli.DEFAULT_LISTEN


@pytest.mark.interpreter
def test_a_signal_while_the_config_is_read_ends_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while the configuration is being read (before the event loop handles it)
    ends main() with exit 1 and one line, not a traceback, and gives the caller its
    SIGTERM handler back."""
    config = cli_config(tmp_path, "http://127.0.0.1:9")
    before = signal.getsignal(signal.SIGTERM)

    def interrupted(*args: object, **kwargs: object) -> None:
        _terminate_self()

    monkeypatch.setattr(config_module, "load", interrupted)  # cli calls it as config.load
    assert cli.main(["--config.file", str(config), "--config.check"]) == EXIT_FAILURE
    assert capsys.readouterr().err == "realtimekit-exporter: interrupted while starting\n"
    assert signal.getsignal(signal.SIGTERM) == before


class _Configured(Exception):
    """Raised by the stand-in for logs.configure, to stop main() once logging is set."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__("configured")
        self.secrets = secrets


@pytest.mark.parametrize(
    "argv",
    [["--once", "--config.file", "{path}"], ["webhooks", "list", "--config.file", "{path}"]],
    ids=["exporter", "webhooks command"],
)
def test_logs_redact_every_credentials_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """The log lines of the exporter and of the webhooks command hide the token of every
    credential in the configuration, not the api section's alone."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "api: {token: default-token-0123456789}\n"
        "credentials:\n  b: {token: b-token-0123456789}\n  c: {token: c-token-0123456789}\n"
        "apps:\n  - {account_id: a, app_id: x, discover: true, credentials: b}\n"
    )

    def configure(*, secrets: Callable[[], Iterable[str]], **kwargs: object) -> None:
        raise _Configured(tuple(secrets()))

    monkeypatch.setattr(logs, "configure", configure)
    with pytest.raises(_Configured) as caught:
        cli.main([word.replace("{path}", str(path)) for word in argv])
    assert sorted(caught.value.secrets) == [
        "b-token-0123456789",
        "c-token-0123456789",
        "default-token-0123456789",
    ]


MISTYPED_FLAGS: dict[str, tuple[list[str], str]] = {
    "an underscore for a dash": (
        ["--web.listen_address", ":1"],
        "unknown flag --web.listen_address (did you mean --web.listen-address?)",
    ),
    "with its value attached": (
        ["--config.file", "x.yaml", "--web.listen_address=:1"],
        "unknown flag --web.listen_address (did you mean --web.listen-address?)",
    ),
    "a dash for a dot": (
        ["--log-level", "debug", "--config.file", "x.yaml"],
        "unknown flag --log-level (did you mean --log.level?)",
    ),
    "Go style, one dash": (
        ["-config.file", "x.yaml"],
        "unknown flag -config.file: flags take two dashes, as in --config.file",
    ),
    "Go style with its value attached": (
        ["-web.listen-address=:1", "--config.file", "x.yaml"],
        "unknown flag -web.listen-address: flags take two dashes, as in --web.listen-address",
    ),
    "one dash and a typo": (
        ["-config_file", "x.yaml"],
        "unknown flag -config_file (flags take two dashes; did you mean --config.file?)",
    ),
    "nothing close": (["--bogus", "--config.file", "x.yaml"], "unknown flag --bogus"),
    "a command's flag": (
        ["simulate", "--listn", ":1"],
        "unknown flag --listn (did you mean --listen?)",
    ),
    "a subcommand's flag": (
        ["webhooks", "list", "--config_file", "x.yaml"],
        "unknown flag --config_file (did you mean --config.file?)",
    ),
}


@pytest.mark.parametrize(("argv", "message"), MISTYPED_FLAGS.values(), ids=list(MISTYPED_FLAGS))
def test_a_mistyped_flag_is_named_with_the_flag_meant(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag the command does not know is named, with the known one closest to it (``_``
    and ``-`` alike), and Go's one-dash flags are told they take two; its value is never
    taken for a command (``invalid choice: ':1'``). Exit 2, one line."""
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"usage error: {message} (see " in err
    assert "invalid choice" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["--config.file", "simulate"], "config_file", "simulate"),
        (["--config.f", "x.yaml"], "config_file", "x.yaml"),
        (["--web.listen-address=:1", "--config.file", "x.yaml"], "listen", ":1"),
        (["--config.file", "x.yaml", "--", "-x"], "config_file", "x.yaml"),
    ],
    ids=["a value that names a command", "an abbreviation", "a value attached", "after --"],
)
def test_known_flags_pass_the_check(argv: list[str], dest: str, value: str) -> None:
    """A flag's value is not judged as a flag or a command; an abbreviation argparse takes
    still goes; nothing after ``--`` is a flag."""
    parser = cli.build_parser()
    if "--" in argv:
        assert unknown_flag(parser, argv) is None
    else:
        assert getattr(parse_args(parser, argv), dest) == value


@pytest.mark.parametrize("value", ["0s", "-5s", "0", "soon"])
def test_a_duration_flag_says_what_it_takes(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A duration flag refuses zero, a negative duration and a word in the one message of
    configuration durations, naming what was written."""
    assert cli.main(["simulate", f"--fault.throttle-seconds={value}"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"argument --fault.throttle-seconds: {value!r} is not a duration above zero: " in err
    assert "(ms, s, m, h, d, w or y)" in err


def test_a_duration_flag_takes_days() -> None:
    """Duration flags take Prometheus's units, days among them."""
    args = parse_args(cli.build_parser(), ["simulate", "--fault.throttle-seconds=1d"])
    assert args.throttle_seconds == 86400.0


def test_an_unknown_flag_that_could_be_a_token_is_not_quoted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A word the length of an API token, given where a flag goes, is described, not
    quoted: it could be the token."""
    token = "-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-x"
    assert cli.main(["--config.file", "x.yaml", token]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown flag <a flag of 40 characters>" in err and token not in err
