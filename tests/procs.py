"""Subprocesses for the end-to-end tests: spawn, always reap, and wait on conditions.

Every process writes stdout and stderr to one log file (a pipe nobody drains would fill and
block the child); :func:`spawned` terminates and waits for it on the way out, whatever
happened. Every wait is a bounded poll (:func:`wait_for`) that fails early, with the
child's log, if a child it depends on has exited. HTTP goes straight to loopback through
``http.client``, so no proxy setting of the environment can get in the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
TERMINATE_GRACE = 10.0  # the exporter promises 5 s; Prometheus may take a little longer
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def exporter_command(*args: str) -> list[str]:
    """``realtimekit-exporter ARGS`` run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "exporter", *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without proxy settings, unbuffered Python output, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def require_tool(name: str) -> str:
    """The absolute path of ``name``; without it, fail on CI (env CI set), else skip."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (not on PATH); it is needed for this test"
        if os.environ.get("CI"):
            pytest.fail(reason + " and CI is set", pytrace=False)
        pytest.skip(reason)
    return os.path.abspath(path)


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- processes ------------------------------------------------------------------------
@dataclass
class Proc:
    """A running child and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if not self.exited() else f"exited with {self.popen.returncode}"
        return f"--- {self.name} (pid {self.pid}, {state}), last log lines:\n{self.tail()}"


@contextlib.contextmanager
def spawned(
    name: str, command: list[str], *, log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Proc]:
    """Start ``command`` (an absolute executable) with its output in ``log_path``; on the way
    out, terminate it and wait for it (kill after a grace period), even after a failure."""
    with log_path.open("wb") as out:
        popen = subprocess.Popen(  # noqa: S603 (absolute executables, arguments from the test)
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else child_env(),
        )
    proc = Proc(name, popen, log_path)
    try:
        yield proc
    finally:
        reap(proc)


def reap(proc: Proc, grace: float = TERMINATE_GRACE) -> int:
    """Terminate ``proc`` if it still runs and wait for it; kill it if it will not go."""
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            return proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
    return proc.popen.wait(timeout=grace)


def run(
    command: list[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to completion (killed and reaped if it outlives ``timeout``)."""
    return subprocess.run(  # noqa: S603 (absolute executables, arguments from the test)
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else child_env(),
    )


# -- waiting --------------------------------------------------------------------------
def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str | Callable[[], str],
    watch: Iterable[Proc] = (),
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fails when ``timeout`` seconds pass, or at once when a process in ``watch`` exits. An
    ``OSError`` from the condition (a server not listening yet) counts as "not yet".
    """
    watched = list(watch)
    describe = what if callable(what) else lambda: what
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        for proc in watched:
            if proc.exited():
                pytest.fail(
                    f"{proc.name} exited while waiting for {describe()}\n{_details(watched)}",
                    pytrace=False,
                )
        try:
            value = condition()
        except OSError as exc:
            last_error, value = exc, None
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            error = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(
                f"timed out after {timeout:g} s waiting for {describe()}{error}\n"
                + _details(watched),
                pytrace=False,
            )
        time.sleep(min(interval, left))


def _details(procs: Iterable[Proc]) -> str:
    return "\n".join(proc.describe() for proc in procs)


def wait_for_log(proc: Proc, pattern: str, *, timeout: float) -> re.Match[str]:
    """The first match of ``pattern`` in ``proc``'s log, once it appears."""
    compiled = re.compile(pattern)
    return wait_for(
        lambda: compiled.search(proc.log()),
        timeout=timeout,
        what=f"{pattern!r} in the log of {proc.name}",
        watch=[proc],
    )


def wait_for_exit(proc: Proc, *, timeout: float) -> int:
    """``proc``'s exit code once it has exited (fails after ``timeout`` seconds)."""
    try:
        return proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{proc.name} did not exit within {timeout:g} s\n{proc.describe()}", pytrace=False
        )


# -- HTTP -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Response:
    """One request to a loopback ``http://`` URL; ``body``, if given, is sent as JSON."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != LOOPBACK or parts.port is None:
        raise ValueError(f"not a loopback http URL with a port: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    conn = HTTPConnection(LOOPBACK, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        return Response(
            answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        )
    finally:
        conn.close()


def get(url: str, **kwargs: Any) -> Response:
    return request("GET", url, **kwargs)


def post(url: str, body: Any = None, **kwargs: Any) -> Response:
    return request("POST", url, body=body, **kwargs)
