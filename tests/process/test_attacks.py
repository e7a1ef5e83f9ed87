"""Attacks on the running exporter, kept as tests (docs/reliability.md lists them all).

Each runs the exporter as a process on loopback, as an attacker meets it, and checks the
safe behaviour the docs promise. Bounds on time are generous multiples of what the
exporter needs here, and far below what each attack cost before it was fixed (the
numbers in each docstring). With ``REALTIMEKIT_ATTACK_REPORT`` set to a file, each test
appends what it measured there as JSON lines: ``python -m bench.attacks`` runs them on
each interpreter and prints the table in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import bcrypt
import pytest
import yaml

from tests.procs import (
    LOOPBACK,
    Proc,
    get,
    own_open_files,
    rss_bytes,
    spawned,
    spawned_exporter,
    spawned_simulator,
    wait_for,
    wait_for_exit,
    wait_for_log,
)
from tests.webauth import PASSWORD, basic, client_ca, fetch_over_tls, make_tls, requiring

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.interpreter

REPORT = "REALTIMEKIT_ATTACK_REPORT"


class Measured(Protocol):
    def __call__(self, **values: float | int | str) -> None: ...


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Measured:
    """Records what the test measured (a no-op unless REALTIMEKIT_ATTACK_REPORT is set)."""

    def record(**values: float | int | str) -> None:
        path = os.environ.get(REPORT)
        if not path:
            return
        entry = {"test": request.node.name, "python": sys.version.split()[0], **values}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    return record


def cpu_seconds(proc: Proc) -> float:
    """User plus system CPU time the process has used, from /proc."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_request(port: int, request: bytes, *, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``request`` on a new connection; the whole answer and the seconds it took."""
    started = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.perf_counter() - started


def get_request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


def web_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def users_config(users: dict[str, int]) -> tuple[str, dict[str, str]]:
    """basic_auth_users with a bcrypt hash of each user's cost; and their passwords."""
    passwords = {user: f"{PASSWORD} of {user}" for user in users}
    lines = ["basic_auth_users:"]
    for user, cost in users.items():
        hashed = bcrypt.hashpw(passwords[user].encode(), bcrypt.gensalt(cost)).decode()
        lines.append(f"  {user}: '{hashed}'")
    return "\n".join(lines) + "\n", passwords


# -- TLS ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"]
)
def test_a_client_of_a_ca_dropped_by_a_reload_cannot_resume_its_session(
    tmp_path: Path, version: ssl.TLSVersion, measured: Measured
) -> None:
    """A client that connected with a certificate of the trusted client CA, then comes
    back with its saved session after a SIGHUP made another CA the trusted one, is
    refused: the session is not resumed (before: 'Reused, TLSv1.2' and 200)."""
    tls = make_tls(tmp_path / "tls")
    old_ca, old_file = client_ca(tmp_path, "old")
    new_ca, new_file = client_ca(tmp_path, "new")
    clients = tmp_path / "clients.crt"
    clients.write_bytes(old_file.read_bytes())
    config = web_config(tmp_path, requiring(tls, clients))
    with spawned_exporter(tmp_path, None, "--demo", "--web.config.file", config) as (proc, host):
        port = int(host.rsplit(":", 1)[1])
        client = tls.client()
        client.minimum_version = client.maximum_version = version
        old_ca.issue_cert("client@example.invalid").configure_cert(client)
        answer, session, _ = fetch_over_tls(port, client, path="/-/healthy")
        assert b" 200 " in answer.split(b"\r\n", 1)[0]
        clients.write_bytes(new_file.read_bytes())
        proc.popen.send_signal(signal.SIGHUP)
        wait_for_log(proc, "configuration reloaded", timeout=10)
        answer, _, reused = fetch_over_tls(port, client, session, path="/-/healthy")
        measured(resumed=int(reused), answered=int(bool(answer)))
        assert (answer, reused) == (b"", False), "a client of the dropped CA got in"
        fresh = tls.client()
        new_ca.issue_cert("client@example.invalid").configure_cert(fresh)
        answer, _, _ = fetch_over_tls(port, fresh, path="/-/healthy")
        assert b" 200 " in answer.split(b"\r\n", 1)[0]


# -- connections ----------------------------------------------------------------------------
SLOW_CONNECTIONS = 1100


@pytest.mark.parametrize(
    "hard", [None, 1024], ids=["soft-1024-raised-to-hard", "soft-and-hard-1024"]
)
def test_slow_connections_neither_starve_probes_nor_flood_the_log(
    tmp_path: Path, hard: int | None, measured: Measured
) -> None:
    """1,100 connections that each trickle a header line, against a soft limit of 1024
    open files: the exporter raises its soft limit to the hard one, /-/healthy answers
    every probe, and the log stays short; also where the hard limit is 1024 too (before:
    20 of 20 probes timed out and asyncio logged 733,082 tracebacks)."""
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = (1024, own_hard if hard is None else hard)
    with (
        own_open_files(SLOW_CONNECTIONS + 200),
        spawned_exporter(tmp_path, None, "--demo", open_files=limits) as (proc, host),
    ):
        port = int(host.rsplit(":", 1)[1])
        limit_line = next(
            line
            for line in Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
            if line.startswith("Max open files")
        )
        assert limit_line.split()[3:5] == [str(limits[1])] * 2  # soft raised to hard
        attackers: list[socket.socket] = []
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(1.0):
                for sock in attackers:
                    with contextlib.suppress(OSError):
                        sock.send(b"X-Slow: 1\r\n")

        trickler = threading.Thread(target=trickle, daemon=True)
        try:
            for _ in range(SLOW_CONNECTIONS):
                sock = socket.create_connection((LOOPBACK, port), timeout=5)
                sock.setblocking(False)
                with contextlib.suppress(OSError):
                    sock.send(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")
                attackers.append(sock)
            trickler.start()
            latencies = []
            for _ in range(20):
                answer, seconds = raw_request(port, get_request("/-/healthy"), timeout=5)
                assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
                latencies.append(seconds)
                time.sleep(0.1)
            metrics = get(f"http://{host}/metrics").text
            proc.popen.send_signal(signal.SIGTERM)  # with the attackers still there
            started = time.monotonic()
            code = wait_for_exit(proc, timeout=15)
            stopped = time.monotonic() - started
        finally:
            stop.set()
            if trickler.is_alive():
                trickler.join(5)
            for sock in attackers:
                sock.close()
        lines = proc.log().splitlines()
        measured(
            probes=len(latencies),
            p50_ms=round(1000 * statistics.median(latencies), 1),
            max_ms=round(1000 * max(latencies), 1),
            log_lines=len(lines),
            stop_seconds=round(stopped, 2),
        )
        assert max(latencies) < 2.0, latencies
        assert "realtimekit_exporter_http_connections_closed_total" in metrics
        assert len(lines) < 100, "\n".join(lines[-20:])
        assert "out of system resource" not in proc.log()
        assert code == 0 and stopped < 5.0, (code, stopped)


# -- basic auth -----------------------------------------------------------------------------
def test_a_flood_of_dropped_wrong_passwords_costs_little_and_delays_no_one(
    tmp_path: Path, measured: Measured
) -> None:
    """300 wrong-password requests in a burst, each connection dropped at once: their
    checks are not run for clients that are gone, the CPU spent stays small, and a right
    password (not yet remembered) is answered within 2 s during and after the burst
    (before: 18.9 CPU-seconds, and the right password waited 11.6 s)."""
    users, passwords = users_config({"prometheus": 10})
    config = web_config(tmp_path, users)
    with spawned_exporter(tmp_path, None, "--demo", "--web.config.file", config) as (proc, host):
        port = int(host.rsplit(":", 1)[1])
        wrong = get_request("/metrics", "Authorization: " + basic("prometheus", "wrong"))
        before = cpu_seconds(proc)
        for _ in range(300):
            with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
                sock.sendall(wrong)
                # dropped at once, with a reset: the client is gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        right = get_request(
            "/-/healthy", "Authorization: " + basic("prometheus", passwords["prometheus"])
        )
        answer, seconds = raw_request(port, right, timeout=15)
        assert answer.startswith(b"HTTP/1.1 200") and seconds < 2.0, seconds
        time.sleep(2.0)  # whatever the burst left queued would run now
        spent = cpu_seconds(proc) - before
        after = raw_request(port, right, timeout=15)[1]  # remembered now: no bcrypt
        measured(right_password_ms=round(1000 * seconds, 1), cpu_seconds=round(spent, 2))
        assert after < 2.0
        assert spent < 3.0, f"{spent:.1f} CPU-seconds for 300 dropped checks"


def test_sigterm_during_a_long_password_check_stops_within_5s(
    tmp_path: Path, measured: Measured
) -> None:
    """A wrong password against a hash of cost 17 (8 s of bcrypt here), then SIGTERM: the
    process exits 0 within 5 s; the check's thread is not waited for (before: the
    default executor held the exit until bcrypt was done)."""
    # A well-formed hash need not be computed: the check is what takes the time.
    hashed = "$2b$17$" + "a" * 21 + "e" + "b" * 31
    config = web_config(tmp_path, f"basic_auth_users:\n  slow: '{hashed}'\n")
    with spawned_exporter(tmp_path, None, "--demo", "--web.config.file", config) as (proc, host):
        port = int(host.rsplit(":", 1)[1])
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(get_request("/metrics", "Authorization: " + basic("slow", "x")))
            time.sleep(0.5)  # the check is under way
            proc.popen.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = wait_for_exit(proc, timeout=20)
            stopped = time.monotonic() - started
        measured(exit_code=code, stop_seconds=round(stopped, 2))
        assert code == 0 and stopped < 5.0, (code, stopped)


def concurrent_401s(port: int, request: bytes, count: int) -> float:
    """Seconds for ``count`` copies of ``request`` sent at once to be answered (each 401)."""
    started = time.perf_counter()
    socks = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(request)
        for sock in socks:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
    finally:
        for sock in socks:
            sock.close()
    return time.perf_counter() - started


@pytest.mark.parametrize(
    ("at_once", "rounds"), [(1, 25), (4, 8)], ids=["one-at-a-time", "four-at-once"]
)
def test_response_times_do_not_tell_which_user_names_exist(
    tmp_path: Path, measured: Measured, at_once: int, rounds: int
) -> None:
    """With users hashed at costs 4 and 10, wrong passwords for the cost-4 user take as
    long as for an unknown user (checked at cost 10): one at a time (before: 1.7 against
    63 ms), and four at once, as many as one address may have checked (before, with
    eight: 70 against 250 ms, the padding was slept outside the bcrypt threads)."""
    users, _ = users_config({"cheap": 4, "dear": 10})
    config = web_config(tmp_path, users)
    with spawned_exporter(tmp_path, None, "--demo", "--web.config.file", config) as (_, host):
        port = int(host.rsplit(":", 1)[1])
        unknown = get_request("/-/healthy", "Authorization: " + basic("nobody", "x"))
        cheap = get_request("/-/healthy", "Authorization: " + basic("cheap", "wrong"))
        times: dict[bytes, list[float]] = {unknown: [], cheap: []}
        for round_ in range(rounds):
            for request in (unknown, cheap) if round_ % 2 else (cheap, unknown):
                seconds = concurrent_401s(port, request, at_once)
                if round_ >= rounds // 5:  # the first rounds warm up
                    times[request].append(seconds)
        ratio = statistics.median(times[cheap]) / statistics.median(times[unknown])
        measured(
            unknown_user_ms=round(1000 * statistics.median(times[unknown]), 2),
            wrong_password_ms=round(1000 * statistics.median(times[cheap]), 2),
            ratio=round(ratio, 3),
        )
        assert 0.7 < ratio < 1.4, ratio


def test_a_flood_from_one_address_leaves_room_for_another(
    tmp_path: Path, measured: Measured
) -> None:
    """40 wrong-password requests kept open from 127.0.0.2 fill that address's share of
    the password checks; a right password (not yet remembered) from 127.0.0.1 is checked
    and answered 200 within 2 s (before: 503s for 9 s)."""
    users, passwords = users_config({"prometheus": 10})
    config = web_config(tmp_path, users)
    with spawned_exporter(tmp_path, None, "--demo", "--web.config.file", config) as (_, host):
        port = int(host.rsplit(":", 1)[1])
        wrong = get_request("/metrics", "Authorization: " + basic("prometheus", "wrong"))
        attackers = []
        try:
            for _ in range(40):
                sock = socket.create_connection(
                    (LOOPBACK, port), timeout=10, source_address=("127.0.0.2", 0)
                )
                sock.sendall(wrong)
                attackers.append(sock)
            right = get_request(
                "/-/healthy", "Authorization: " + basic("prometheus", passwords["prometheus"])
            )
            answer, seconds = raw_request(port, right, timeout=15)
        finally:
            for sock in attackers:
                sock.close()
        measured(right_password_ms=round(1000 * seconds, 1), status=answer[9:12].decode())
        assert answer.startswith(b"HTTP/1.1 200") and seconds < 2.0, (answer[:40], seconds)


# -- shutdown -------------------------------------------------------------------------------
def test_no_signal_during_shutdown_changes_the_exit_status(
    tmp_path: Path, measured: Measured
) -> None:
    """SIGTERM, then SIGHUP, SIGTERM and SIGINT every millisecond until the process is
    gone: it exits 0 (before: a SIGHUP during shutdown killed it with status 129)."""
    with spawned_exporter(tmp_path, None, "--demo") as (proc, host):
        wait_for(
            lambda: get(f"http://{host}/-/ready").status == 200,
            timeout=20,
            what="ready",
            watch=[proc],
        )
        proc.popen.send_signal(signal.SIGTERM)
        started = time.monotonic()
        barrage = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        sent = 0
        while proc.popen.poll() is None and time.monotonic() - started < 10:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(barrage[sent % 3])
            sent += 1
            time.sleep(0.001)
        code = wait_for_exit(proc, timeout=5)
        stopped = time.monotonic() - started
        measured(signals_sent=sent, exit_code=code, stop_seconds=round(stopped, 2))
        assert code == 0
        assert stopped < 5
        assert sent > 10


def ignores_sighup(proc: Proc) -> bool:
    """Whether the process has SIGHUP ignored yet (its SigIgn mask in /proc)."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_sighup_while_starting_neither_kills_nor_stops_the_start(
    tmp_path: Path, measured: Measured
) -> None:
    """The process ignores SIGHUP first of all, before its imports and its config (20,000
    livestreams here) are read: SIGHUP every 20 ms from then until it listens, and it
    starts, then exits 0 on SIGTERM (before: SIGHUP was ignored only once the config
    was read, and one in the first 1.5 s killed it with status 129)."""
    streams = "".join(f"      - id: s{i}\n" for i in range(20_000))
    config = (
        "api:\n  token: attack-token-0123456789\n  base_url: http://127.0.0.1:9\n"
        "limits:\n  max_livestreams: 20000\n"
        f"apps:\n  - account_id: a\n    app_id: b\n    livestreams:\n{streams}"
    )
    path = tmp_path / "big.yaml"
    path.write_text(config, encoding="utf-8")
    command = [sys.executable, "-m", "exporter", "--config.file", str(path)]
    command += ["--web.listen-address", f"{LOOPBACK}:0"]
    with spawned("exporter", command, log_path=tmp_path / "exporter.log") as proc:
        spawned_at = time.monotonic()
        while not ignores_sighup(proc):
            assert proc.popen.poll() is None and time.monotonic() - spawned_at < 10
            time.sleep(0.002)
        ignored_at = time.monotonic()
        sent = 0
        while "listening on" not in proc.log():
            assert proc.popen.poll() is None, f"exited {proc.popen.returncode}: {proc.tail()}"
            proc.popen.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.02)
        listening_at = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        code = wait_for_exit(proc, timeout=10)
    share = (listening_at - ignored_at) / (listening_at - spawned_at)
    measured(sighups_while_starting=sent, exit_code=code, ignored_for_share=round(share, 2))
    assert code == 0 and sent > 10, (code, sent)
    assert share > 0.5, f"SIGHUP was ignored for only {share:.0%} of the start"


# -- 10,000 livestreams ---------------------------------------------------------------------
STREAMS = 10_000


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    """A simulator of one app of 10,000 livestreams (100 live), no rate limits."""
    workdir = tmp_path_factory.mktemp("simulator")
    token = workdir / "token"
    token.write_text("attack-test-token-0123456789\n")
    args = (
        "--livestreams", str(STREAMS), "--live", "100", "--ip-rate-limit", "off",
        "--rate-limit", "1000000/5m", "--max-per-page", "1000", "--token-file", str(token),
        "--account-id", "acc", "--app-id", "app",
    )  # fmt: skip
    with spawned_simulator(workdir, *args) as (_, origin):
        yield workdir, origin, token


@contextlib.contextmanager
def big_exporter(tmp_path: Path, simulated: tuple[Path, str, Path]) -> Iterator[tuple[Proc, str]]:
    """The exporter discovering the 10,000 streams, polling every minute, ready."""
    _, origin, token = simulated
    config = {
        "api": {
            "base_url": origin + "/client/v4",
            "token_file": str(token),
            "rate_limit": "1000/5m",
        },
        "poll": {"interval": "60s"},
        "limits": {"max_livestreams": 20_000},
        "apps": [{"account_id": "acc", "app_id": "app", "discover": True}],
    }
    with spawned_exporter(tmp_path, yaml.safe_dump(config)) as (proc, host):
        wait_for(
            lambda: get(f"http://{host}/-/ready").status == 200,
            timeout=60,
            what="the first poll of 10,000 streams",
            watch=[proc],
        )
        yield proc, host


@pytest.mark.parametrize(
    ("clients", "distinct"), [(60, False), (200, True)], ids=["60-same", "200-distinct-versions"]
)
def test_clients_that_never_read_do_not_multiply_the_memory(
    tmp_path: Path,
    simulated: tuple[Path, str, Path],
    measured: Measured,
    clients: int,
    distinct: bool,
) -> None:
    """Clients that ask for /metrics (13 MB at 10,000 streams) and never read it, with
    one Accept or each with an OpenMetrics version of its own, keep the exporter's
    resident memory within 1.5 times what it was without them (before: 60 of them took
    Python 3.11 from 114 to 731 MiB, a copy of the body each; 200 distinct versions took
    both Pythons from 85 to 1,800 MiB, a render each)."""
    with big_exporter(tmp_path, simulated) as (proc, host):
        port = int(host.rsplit(":", 1)[1])
        # The variant the clients ask for, rendered, cached and sent: the baseline's peak.
        warm = "application/openmetrics-text;version=1.0.0" if distinct else "*/*"
        for _ in range(3):
            answer = raw_request(port, get_request("/metrics", f"Accept: {warm}"), timeout=30)[0]
            assert len(answer) > 10_000_000
        baseline = rss_bytes(proc.pid)
        stalled = []
        try:
            for i in range(clients):
                accept = f"application/openmetrics-text;version=1.0.{i}" if distinct else "*/*"
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((LOOPBACK, port))
                sock.sendall(get_request("/metrics", f"Accept: {accept}"))
                stalled.append(sock)
            peak = baseline
            deadline = time.monotonic() + 5  # well within the 30 s write timeout
            while time.monotonic() < deadline:
                peak = max(peak, rss_bytes(proc.pid))
                time.sleep(0.2)
        finally:
            for sock in stalled:
                sock.close()
        measured(
            rss_without_mib=round(baseline / 2**20, 1),
            rss_with_stalled_mib=round(peak / 2**20, 1),
            ratio=round(peak / baseline, 3),
        )
        assert peak < 1.5 * baseline, f"{peak / 2**20:.0f} MiB against {baseline / 2**20:.0f} MiB"


def test_sigterm_with_hundreds_of_uncached_scrapes_in_flight_stops_within_5s(
    tmp_path: Path, simulated: tuple[Path, str, Path], measured: Measured
) -> None:
    """300 concurrent scrapes in Accept variants beyond the cached ones, at 10,000 streams,
    then SIGTERM: the process exits 0 within 5 s (before: 20.1 s, 1.86 GB)."""
    accepts = [
        "text/plain",
        *(
            f"application/openmetrics-text; version=1.0.0; escaping={escaping}"
            for escaping in ("underscores", "dots", "values", "allow-utf-8")
        ),
        "application/openmetrics-text; version=0.0.1",
    ]
    with big_exporter(tmp_path, simulated) as (proc, host):
        port = int(host.rsplit(":", 1)[1])
        socks = []
        try:
            for i in range(300):
                sock = socket.create_connection((LOOPBACK, port), timeout=5)
                sock.sendall(get_request("/metrics", f"Accept: {accepts[i % len(accepts)]}"))
                socks.append(sock)
            time.sleep(0.5)  # the scrapes are under way
            proc.popen.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = wait_for_exit(proc, timeout=15)
            stopped = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
        measured(exit_code=code, stop_seconds=round(stopped, 2))
        assert code == 0
        assert stopped < 5.0, f"stopped after {stopped:.1f} s"
