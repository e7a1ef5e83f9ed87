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
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit

import pytest
import yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
TERMINATE_GRACE = 10.0  # the exporter promises 5 s; Prometheus may take a little longer
HTTP_TIMEOUT = 5.0  # seconds for one request to a loopback server
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
    name: str,
    command: list[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    open_files: tuple[int, int] | None = None,
) -> Iterator[Proc]:
    """Start ``command`` (an absolute executable) with its output in ``log_path`` (and
    ``open_files`` as its soft and hard RLIMIT_NOFILE, if given); on the way out,
    terminate it and wait for it (kill after a grace period), even after a failure."""

    def limit() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

    with log_path.open("wb") as out:
        popen = subprocess.Popen(  # noqa: S603 (absolute executables, arguments from the test)
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else child_env(),
            preexec_fn=limit if open_files is not None else None,
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


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid``, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def own_open_files(count: int) -> Iterator[None]:
    """This test process may hold ``count`` sockets (the attacker's side)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before[1] != resource.RLIM_INFINITY and before[1] < count:
        pytest.skip(f"the hard open-files limit ({before[1]}) is below {count}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(before[0], count), before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


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
    timeout: float = HTTP_TIMEOUT,
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


# -- simulator, exporter and Prometheus as processes (shared by the end-to-end tests) -----
def prometheus_config(
    *,
    job: str,
    target: str,
    rule_files: Iterable[Path] = (),
    interval: str = "1s",
    alertmanager: str | None = None,
) -> str:
    """A prometheus.yml that scrapes ``target`` as ``job`` and evaluates ``rule_files``,
    both every ``interval``, sending alerts to ``alertmanager`` (``host:port``) if given."""
    rules = [json.dumps(str(path)) for path in rule_files]
    alerting = (
        [
            "alerting:",
            "  alertmanagers:",
            f"    - static_configs: [{{targets: [{json.dumps(alertmanager)}]}}]",
        ]
        if alertmanager is not None
        else []
    )
    return "\n".join(
        [
            *alerting,
            "global:",
            f"  scrape_interval: {interval}",
            f"  scrape_timeout: {interval}",
            f"  evaluation_interval: {interval}",
            f"rule_files: [{', '.join(rules)}]",
            "scrape_configs:",
            f"  - job_name: {json.dumps(job)}",
            "    static_configs:",
            f"      - targets: [{json.dumps(target)}]",
            "",
        ]
    )


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus (see :func:`spawned_prometheus`) and its HTTP API, as far as
    the tests need it. Every method fails with Prometheus' reason on a rejected request."""

    proc: Proc
    url: str  # http://127.0.0.1:PORT

    def data(self, path: str, **params: str) -> Any:
        """The ``data`` of the successful answer to GET ``path`` with ``params``."""
        body = _api_envelope(self.url, path, params, timeout=HTTP_TIMEOUT)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or range vector) ``promql`` evaluates to now."""
        return list(self.data("/api/v1/query", query=promql)["result"])

    def value(self, promql: str) -> float | None:
        """The value of a single-series instant query, None if it has no series."""
        result = self.query(promql)
        if len(result) > 1:
            raise AssertionError(f"more than one series for {promql}: {result}")
        return float(result[0]["value"][1]) if result else None

    def history(self, promql: str) -> str:
        """``promql``'s samples over the last 2 minutes, for failure messages."""
        try:
            result = self.query(f"{promql}[2m]")
        except (OSError, AssertionError) as exc:
            return f"{promql}: cannot query ({exc!r})"
        return (
            "; ".join(f"{r['metric']}: {[v for _, v in r['values']]}" for r in result)
            or f"{promql}: no samples"
        )

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts called ``name``."""
        alerts = self.data("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == name]


@contextlib.contextmanager
def spawned_prometheus(
    workdir: Path, config: str | Mapping[str, Any], *, watch: Iterable[Proc] = ()
) -> Iterator[Prometheus]:
    """Prometheus running ``config`` (the text of a prometheus.yml, such as
    :func:`prometheus_config` writes, or its content as a mapping), ready to be queried.
    While it starts, fail at once if a process in ``watch`` exits.

    Prometheus cannot listen on port 0: take a free port, and once more on a bind failure
    (someone took it in between)."""
    binary = require_tool("prometheus")
    config_path = workdir / "prometheus.yml"
    text = config if isinstance(config, str) else yaml.safe_dump(dict(config))
    config_path.write_text(text, encoding="utf-8")
    with _spawned_server(
        "prometheus",
        lambda port, attempt: [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / f'tsdb-{attempt}'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--log.level=info",
        ],
        workdir,
        timeout=30,
        watch=watch,
    ) as (proc, url):
        yield Prometheus(proc, url)


@contextlib.contextmanager
def _spawned_server(
    name: str,
    command: Callable[[int, int], list[str]],
    workdir: Path,
    *,
    timeout: float,
    watch: Iterable[Proc] = (),
) -> Iterator[tuple[Proc, str]]:
    """A server that cannot listen on port 0 (Prometheus, Alertmanager): ``command(port,
    attempt)`` on a free loopback port, once more on another if the first was taken in
    between; yields the process and its URL once ``/-/ready`` answers 200. While it
    starts, fail at once if a process in ``watch`` exits."""
    watched = list(watch)
    for attempt in (1, 2):
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        log_path = workdir / f"{name}-{attempt}.log"
        with spawned(name, command(port, attempt), log_path=log_path) as proc:

            def ready(proc: Proc = proc, url: str = url) -> bool:
                if proc.exited():
                    return True  # decided below
                return get(f"{url}/-/ready").status == 200

            wait_for(ready, timeout=timeout, what=f"{name} to be ready", watch=watched)
            if proc.exited():
                if attempt == 1 and "address already in use" in proc.log():
                    continue
                pytest.fail(f"{name} did not start\n{proc.describe()}", pytrace=False)
            yield proc, url
            return
    raise AssertionError("unreachable")  # pragma: no cover


def prometheus_api(url: str, path: str, **params: str) -> dict[str, Any]:
    """GET ``path`` of Prometheus' HTTP API at ``url``: the decoded envelope (``status``,
    ``data`` or ``errorType``/``error``), whatever the HTTP status, so that a rejected query
    can be reported with Prometheus' reason."""
    return _api_envelope(url, path, params, timeout=10.0)


def _api_envelope(
    url: str, path: str, params: Mapping[str, str], *, timeout: float
) -> dict[str, Any]:
    response = get(f"{url}{path}?{urlencode(params)}", timeout=timeout)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AssertionError(f"{path} {params}: HTTP {response.status}: {response.text[:500]}")
    return body


@contextlib.contextmanager
def spawned_simulator(workdir: Path, *args: str) -> Iterator[tuple[Proc, str]]:
    """``realtimekit-exporter simulate ARGS`` on a free loopback port: yields the process and
    its origin (``http://127.0.0.1:PORT``; the API is under /client/v4)."""
    command = exporter_command("simulate", "--listen", f"{LOOPBACK}:0", *args)
    with spawned("simulator", command, log_path=workdir / "simulator.log") as proc:
        origin = wait_for_log(proc, r"address=(http://127\.0\.0\.1:\d+)", timeout=20)[1]
        yield proc, origin


@contextlib.contextmanager
def spawned_exporter(
    workdir: Path,
    config_text: str | None,
    *args: str,
    open_files: tuple[int, int] | None = None,
) -> Iterator[tuple[Proc, str]]:
    """The exporter running ``config_text`` (none: no --config.file, for ``--demo``) and
    ``args`` on a free loopback port (with ``open_files`` as its RLIMIT_NOFILE, if
    given): yields the process and its ``host:port``."""
    config_args: list[str] = []
    if config_text is not None:
        config = workdir / "exporter.yaml"
        config.write_text(config_text, encoding="utf-8")
        config_args = ["--config.file", str(config)]
    command = exporter_command(*config_args, "--web.listen-address", f"{LOOPBACK}:0", *args)
    log_path = workdir / "exporter.log"
    with spawned("exporter", command, log_path=log_path, open_files=open_files) as proc:
        port = wait_for_log(proc, r"listening on 127\.0\.0\.1:(\d+)", timeout=20)[1]
        yield proc, f"{LOOPBACK}:{port}"


class Pipeline:
    """The simulator, the exporter polling it and Prometheus scraping the exporter, as
    processes on loopback. The test starts them in that order (preparing the simulator's
    world in between, as it needs); the ``with`` block reaps them all, last started first.

    The simulator serves ``account``/``app`` and accepts the token in ``token_file``.
    Prometheus' start-up fails at once if the simulator or the exporter exits."""

    def __init__(self, workdir: Path, *, account: str, app: str, token_file: Path) -> None:
        self.workdir = workdir
        self.account = account
        self.app = app
        self.token_file = token_file
        self.procs: list[Proc] = []  # started so far, in order: watch them while waiting
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def start_simulator(self, *args: str) -> str:
        """``realtimekit-exporter simulate ARGS`` for the account, app and token: its origin
        (``http://127.0.0.1:PORT``; the API is under /client/v4, its control under
        /-/simulator)."""
        ids = ("--account-id", self.account, "--app-id", self.app)
        proc, origin = self._stack.enter_context(
            spawned_simulator(self.workdir, *args, *ids, "--token-file", str(self.token_file))
        )
        self.procs.append(proc)
        self.origin = origin
        return origin

    def start_exporter(
        self,
        *args: str,
        max_staleness: str,
        expect_live: Iterable[str] = (),
        other_apps: Iterable[str] = (),
        interval: str = "1s",
        webhooks: Mapping[str, str] | None = None,
    ) -> tuple[Proc, str]:
        """The exporter with ARGS, polling the simulator with the token every ``interval``
        (2 s timeout; stale after ``max_staleness``): the app, its streams discovered and
        those in ``expect_live`` expected live, then the account's ``other_apps``,
        discovered; with ``webhooks`` as its webhooks section, if given: the process and
        its ``host:port``. The config is ``workdir/exporter.yaml``."""
        streams = [{"id": stream_id, "expect_live": True} for stream_id in expect_live]
        apps = [{"account_id": self.account, "app_id": self.app, "discover": True}]
        if streams:
            apps[0]["livestreams"] = streams
        apps += [
            {"account_id": self.account, "app_id": app, "discover": True} for app in other_apps
        ]
        config = {
            "api": {
                "base_url": self.origin + "/client/v4",
                "token_file": str(self.token_file),
                "timeout": "2s",
            },
            "poll": {"interval": interval, "max_staleness": max_staleness},
            "apps": apps,
        }
        if webhooks is not None:
            config["webhooks"] = dict(webhooks)
        proc, target = self._stack.enter_context(
            spawned_exporter(self.workdir, yaml.safe_dump(config, sort_keys=False), *args)
        )
        self.procs.append(proc)
        self.target = target
        return proc, target

    def start_prometheus(
        self,
        *,
        job: str,
        rule_files: Iterable[Path],
        interval: str = "1s",
        alertmanager: str | None = None,
    ) -> Prometheus:
        """Prometheus scraping the exporter as ``job`` and evaluating ``rule_files``, both
        every ``interval``, alerting ``alertmanager`` if given, ready to be queried."""
        config = prometheus_config(
            job=job,
            target=self.target,
            rule_files=rule_files,
            interval=interval,
            alertmanager=alertmanager,
        )
        prometheus = self._stack.enter_context(
            spawned_prometheus(self.workdir, config, watch=self.procs)
        )
        self.procs.append(prometheus.proc)
        return prometheus


@contextlib.contextmanager
def spawned_alertmanager(workdir: Path, config: Path) -> Iterator[tuple[Proc, str]]:
    """Alertmanager running ``config`` on a free loopback port, alone (no cluster), ready:
    yields the process and its URL. As for Prometheus, a free port is taken, and once more
    on a bind failure (someone took it in between)."""
    binary = shutil.which("alertmanager") or require_tool("prometheus-alertmanager")
    with _spawned_server(
        "alertmanager",
        lambda port, attempt: [
            binary,
            f"--config.file={config}",
            f"--storage.path={workdir / f'alertmanager-data-{attempt}'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--cluster.listen-address=",
        ],
        workdir,
        timeout=20,
    ) as (proc, url):
        yield proc, url
