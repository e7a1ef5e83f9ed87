"""TLS and basic auth on the exporter's own endpoints (``--web.config.file``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import os
import ssl
import threading
import time
from types import MappingProxyType
from typing import TYPE_CHECKING

import aiohttp
import bcrypt
import pytest
import trustme
from prometheus_client import CollectorRegistry

from exporter import cli, webconfig
from exporter.config import read_file
from exporter.reload import Reloader
from exporter.server import Exporter, Server
from exporter.webconfig import BasicAuth, WebConfigError, WebState
from tests.conftest import add_stream, make_config
from tests.files import dev_zero, directory, fifo
from tests.procs import LOOPBACK
from tests.webauth import (
    HASH,
    PASSWORD,
    USER,
    Tls,
    basic,
    client_ca,
    exporter_config,
    fetch_over_tls,
    make_tls,
    requiring,
    write_web_config,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from exporter.simulator import Simulator

OTHER_HASH = bcrypt.hashpw(b"another password", bcrypt.gensalt(4)).decode()


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path / "tls")


# -- loading --------------------------------------------------------------------------
def test_a_valid_file_loads_with_paths_from_its_directory(tls: Tls) -> None:
    """Relative file paths are taken from the web config file's directory, as the
    exporter-toolkit does; users map to their hashes; the TLS context is built at once."""
    path = tls.cert_file.parent / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls.cert_file.name}\n  key_file: {tls.key_file.name}\n"
        f"  min_version: TLS13\nbasic_auth_users:\n  {USER}: '{HASH}'\n",
        encoding="utf-8",
    )
    loaded = webconfig.load(path)
    assert loaded.tls is not None
    assert loaded.tls.cert_file == tls.cert_file
    assert loaded.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert dict(loaded.users) == {USER: HASH.encode()}
    assert loaded.ssl_context is not None
    assert loaded.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_an_empty_file_means_plain_http_and_no_auth() -> None:
    """Like the exporter-toolkit, an empty web config changes nothing."""
    loaded = webconfig.loads("")
    assert loaded.tls is None and not loaded.users and loaded.ssl_context is None


def test_every_problem_is_reported_at_once(tls: Tls) -> None:
    """One error lists every problem, each with its key path."""
    text = (
        "tls_server_config:\n  key_file: nowhere.key\n  min_version: TLS9\n"
        "basic_auth_users:\n  alice: plain-password\n  bob: 3\nextra: 1\n"
    )
    with pytest.raises(WebConfigError) as caught:
        webconfig.loads(text, base_dir=tls.cert_file.parent)
    paths = [problem.split(":")[0] for problem in caught.value.problems]
    assert paths == [
        "extra",
        "tls_server_config.cert_file",
        "tls_server_config.key_file",
        "tls_server_config.min_version",
        "basic_auth_users.alice",
        "basic_auth_users.bob",
    ]
    assert "plain-password" not in str(caught.value)


def bad_cases(tls: Tls, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """id -> (file content, what the one-line error must say)."""
    other = make_tls(tmp_path / "other")
    ca = f"  client_ca_file: {tls.ca_file}\n"
    files = f"tls_server_config:\n  cert_file: {tls.cert_file}\n  key_file: {tls.key_file}\n"
    return {
        "not-yaml": ("tls_server_config: [\n", "not valid YAML at line"),
        "not-a-mapping": ("- a\n", "(top level): must be a mapping"),
        "unknown-key": ("basic_auth_user: {}\n", "basic_auth_user: unknown key"),
        "toolkit-only-key": (
            "http_server_config:\n  http2: false\n",
            "http_server_config: not supported by realtimekit-exporter",
        ),
        "duplicate-key": (
            f"basic_auth_users:\n  alice: '{HASH}'\n  alice: '{HASH}'\n",
            "duplicate key alice at line 3",
        ),
        "tls-not-a-mapping": (
            "tls_server_config: yes\n",
            "web.yml: 1 problem: tls_server_config: must be a mapping",
        ),
        "empty-tls": ("tls_server_config: {}\n", "tls_server_config: needs cert_file and key_file"),
        "no-key-file": (
            f"tls_server_config:\n  cert_file: {tls.cert_file}\n",
            "tls_server_config.key_file: is required",
        ),
        "missing-cert-file": (
            f"tls_server_config:\n  cert_file: {tmp_path}/absent.crt\n  key_file: {tls.key_file}\n",
            "tls_server_config.cert_file: cannot read",
        ),
        "unknown-tls-key": (files + "  certfile: x\n", "tls_server_config.certfile: unknown key"),
        "inline-cert": (files + "  cert: x\n", "tls_server_config.cert: not supported"),
        "key-of-another-cert": (
            f"tls_server_config:\n  cert_file: {tls.cert_file}\n  key_file: {other.key_file}\n",
            "tls_server_config: cannot use cert_file, key_file and client_ca_file",
        ),
        "cert-not-pem": (
            f"tls_server_config:\n  cert_file: {tls.ca_file.parent}/../web.yml\n"
            f"  key_file: {tls.key_file}\n",
            "tls_server_config: cannot use",
        ),
        "bad-client-auth": (
            files + ca + "  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type: must be one of",
        ),
        "unverified-client-auth": (
            files + ca + "  client_auth_type: RequireAnyClientCert\n",
            "tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
        ),
        "client-auth-without-ca": (
            files + "  client_auth_type: RequireAndVerifyClientCert\n",
            "needs tls_server_config.client_ca_file",
        ),
        "ca-without-client-auth": (
            files + ca,
            "tls_server_config.client_auth_type: client_ca_file",
        ),
        "bad-min-version": (files + "  min_version: TLS14\n", "tls_server_config.min_version"),
        "max-below-min": (
            files + "  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.max_version: must not be below min_version",
        ),
        "users-not-a-mapping": ("basic_auth_users: [alice]\n", "basic_auth_users: must be"),
        "password-not-hash": (
            "basic_auth_users:\n  alice: hunter2-in-the-clear\n",
            "basic_auth_users.alice: must be a bcrypt hash",
        ),
        # The salt's 22nd character can only be one of ".Oeu": bcrypt refuses any other.
        "salt-bcrypt-refuses": (
            "basic_auth_users:\n  alice: '"
            + HASH[:28]
            + ("Z" if HASH[28] != "Z" else "Y")
            + HASH[29:]
            + "'\n",
            "basic_auth_users.alice: must be a bcrypt hash",
        ),
        "cost-too-high": (
            "basic_auth_users:\n  alice: '$2y$32$" + HASH[7:] + "'\n",
            "basic_auth_users.alice: the bcrypt cost must be between 04 and 31",
        ),
        "colon-in-user": (
            f"basic_auth_users:\n  'a:b': '{HASH}'\n",
            "a user name cannot contain ':'",
        ),
    }


CASES = [
    "not-yaml",
    "not-a-mapping",
    "unknown-key",
    "toolkit-only-key",
    "duplicate-key",
    "tls-not-a-mapping",
    "empty-tls",
    "no-key-file",
    "missing-cert-file",
    "unknown-tls-key",
    "inline-cert",
    "key-of-another-cert",
    "cert-not-pem",
    "bad-client-auth",
    "unverified-client-auth",
    "client-auth-without-ca",
    "ca-without-client-auth",
    "bad-min-version",
    "max-below-min",
    "users-not-a-mapping",
    "password-not-hash",
    "cost-too-high",
    "colon-in-user",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_web_config_is_a_usage_error_naming_the_key(
    case: str, tls: Tls, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad web config file makes the exporter exit 2 at start, with one line naming
    the key path, never quoting a password or hash."""
    text, expected = bad_cases(tls, tmp_path)[case]
    (tmp_path / "web.yml").write_text(text, encoding="utf-8")
    code = cli.main(
        [
            "--config.file",
            str(exporter_config(tmp_path)),
            "--web.config.file",
            str(tmp_path / "web.yml"),
            "--web.listen-address",
            f"{LOOPBACK}:0",
            "--once",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("realtimekit-exporter: invalid web configuration: ")
    assert err.count("\n") == 1
    assert expected in err, err
    for secret in ("hunter2-in-the-clear", HASH[7:]):
        assert secret not in err


def test_repr_shows_no_hash(tls: Tls, tmp_path: Path) -> None:
    """Neither a loaded web config nor its auth shows a password hash in its repr."""
    loaded = webconfig.load(write_web_config(tmp_path / "web.yml", tls, {USER: HASH}))
    for shown in (repr(loaded), repr(BasicAuth(loaded.users)), repr(WebState(loaded).auth)):
        assert HASH[7:] not in shown


# -- basic auth, unit -----------------------------------------------------------------
class CountingHash:
    """bcrypt.hashpw, counting its calls and the hashes it was asked to match."""

    def __init__(self) -> None:
        self.against: list[bytes] = []

    def __call__(self, password: bytes, hashed: bytes) -> bytes:
        self.against.append(hashed)
        return bcrypt.hashpw(password, hashed)


async def test_bcrypt_runs_for_every_failure_and_unknown_users() -> None:
    """A wrong password, and an unknown user (against a configured hash, so it takes as
    long), cost a bcrypt run every time: failures are never remembered."""
    counting = CountingHash()
    auth = BasicAuth({USER: HASH.encode(), "other": OTHER_HASH.encode()}, hashpw=counting)
    for _ in range(2):
        assert not await auth.allows(basic(USER, "wrong"))
        assert not await auth.allows(basic("nobody", PASSWORD))
    assert len(counting.against) == 4
    assert all(h in (HASH.encode(), OTHER_HASH.encode()) for h in counting.against)
    # The unknown user's password matching a configured hash still does not let it in.
    assert not await auth.allows(basic("nobody", "another password"))


async def test_verified_credentials_are_remembered_within_a_bound() -> None:
    """Right credentials run bcrypt once, then hit the cache; the cache keeps at most
    cache_size entries, dropping the least recently used."""
    counting = CountingHash()
    users = {f"user{i}": HASH.encode() for i in range(3)}
    auth = BasicAuth(users, hashpw=counting, cache_size=2)
    assert await auth.allows(basic("user0", PASSWORD))
    assert await auth.allows(basic("user0", PASSWORD))
    assert len(counting.against) == 1
    assert await auth.allows(basic("user1", PASSWORD))
    assert await auth.allows(basic("user2", PASSWORD))  # user0 falls out
    assert len(counting.against) == 3
    assert await auth.allows(basic("user0", PASSWORD))
    assert len(counting.against) == 4
    # A cached user with a wrong password is checked, and refused.
    assert not await auth.allows(basic("user0", "wrong"))
    assert len(counting.against) == 5


async def test_at_most_two_bcrypt_runs_at_once() -> None:
    """A burst of wrong credentials runs bcrypt two at a time, leaving the loop's other
    executor threads (which render /metrics) free."""
    running = peak = 0
    lock = threading.Lock()
    pair = threading.Barrier(2, timeout=5)  # two runs must overlap, or this breaks

    def slow(password: bytes, hashed: bytes) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        pair.wait()
        time.sleep(0.02)  # room for a third run to overlap, were it let in
        with lock:
            running -= 1
        return b""

    auth = BasicAuth({USER: HASH.encode()}, hashpw=slow)
    results = await asyncio.gather(
        *(auth.allows(basic(USER, f"guess{i}"), client=f"10.0.0.{i}") for i in range(6))
    )
    assert not any(results) and peak == webconfig.BCRYPT_CONCURRENCY == 2


class GatedHash:
    """A hashpw that counts its runs and holds each until ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = 0
        self.lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bytes:
        with self.lock:
            self.started += 1
        assert self.gate.wait(10)
        return b"never a match"


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (another thread's progress) for at most 5 s."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def test_checks_of_clients_gone_before_their_turn_never_run() -> None:
    """A check cancelled while it waits for a bcrypt thread (its client hung up, and the
    server cancels the request) is never run: 300 dropped wrong passwords cost only the
    two runs already under way."""
    gated = GatedHash()
    auth = BasicAuth({USER: HASH.encode()}, hashpw=gated)
    checks = [
        asyncio.ensure_future(auth.allows(basic(USER, f"guess{i}"), client=f"10.0.0.{i}"))
        for i in range(8)
    ]
    await wait_until(lambda: gated.started == webconfig.BCRYPT_CONCURRENCY)
    for check in checks:
        check.cancel()
    await asyncio.gather(*checks, return_exceptions=True)
    gated.gate.set()
    assert not await auth.allows(basic(USER, "one more"))
    assert gated.started == webconfig.BCRYPT_CONCURRENCY + 1
    auth.close()


async def fill_and_drain(auth: BasicAuth) -> list[bool]:
    """Fill ``auth``'s queue of checks until one is refused (AuthOverloaded), then let it
    drain: what the checks that queued answered."""
    gated = GatedHash()
    auth._hashpw = gated  # this burst's checks wait for its gate
    checks = [
        asyncio.ensure_future(auth.allows(basic(USER, f"guess{i}"), client=f"10.0.0.{i}"))
        for i in range(webconfig.MIN_QUEUE)
    ]
    await wait_until(lambda: gated.started == webconfig.BCRYPT_CONCURRENCY)
    with pytest.raises(webconfig.AuthOverloaded):
        await auth.allows(basic(USER, PASSWORD))
    gated.gate.set()
    return await asyncio.gather(*checks)


async def test_a_full_queue_of_checks_is_refused_at_once_then_drains() -> None:
    """When more checks wait than run in about a second, the next one raises
    AuthOverloaded at once instead of queueing; once the queue drains, checks run again."""
    auth = BasicAuth({USER: HASH.encode()})
    assert not any(await fill_and_drain(auth))
    assert not await auth.allows(basic(USER, "again"))
    auth.close()


async def test_a_queue_filled_and_drained_again_and_again_logs_twice_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An attacker filling the queue of checks and letting it drain, over and over, gets
    one warning and one info line a minute, not two lines a burst."""
    now = [1000.0]
    checks = webconfig.PasswordChecks(clock=lambda: now[0])
    # bcrypt runs taking no time: the queue's bound stays at its least, MIN_QUEUE.
    auth = BasicAuth(
        {USER: HASH.encode()}, hashpw=lambda p, h: b"", checks=checks, clock=lambda: 0.0
    )
    caplog.set_level(logging.INFO, logger="exporter.webconfig")
    for _ in range(5):
        await fill_and_drain(auth)
        now[0] += 5.0
    messages = [r.getMessage() for r in caplog.records if r.name == "exporter.webconfig"]
    assert len(messages) == 2, messages
    assert "answering 503" in messages[0] and "no longer queue" in messages[1]
    checks.close()


class CostClock:
    """A clock that each hash moves on by 2**cost microseconds, as bcrypt's time grows
    (not tests.clock.FakeClock: time here is moved by hashing, and sleep is synchronous)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def hashpw(self, password: bytes, hashed: bytes) -> bytes:
        self.now += 2 ** int(hashed[4:6]) / 1e6
        return bcrypt.hashpw(password, hashed)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_a_failure_takes_as_long_as_the_costliest_hash_whoever_the_user() -> None:
    """With hashes of different costs, a wrong password for a cheap user is answered no
    sooner than a run at the top cost (what an unknown user's check takes), so response
    times do not tell which user names exist; successes are not held back."""
    cheap = bcrypt.hashpw(b"cheap password", bcrypt.gensalt(4))
    dear = bcrypt.hashpw(b"dear password", bcrypt.gensalt(6))
    clock = CostClock()
    auth = BasicAuth(
        {"cheap": cheap, "dear": dear},
        hashpw=clock.hashpw,
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )
    top, low = 2**6 / 1e6, 2**4 / 1e6
    assert not await auth.allows(basic("nobody", "x"))  # a run at the top cost: no wait
    assert clock.slept == []
    assert not await auth.allows(basic("cheap", "wrong"))
    assert clock.slept == [pytest.approx(top - low)]
    assert not await auth.allows(basic("dear", "wrong"))
    assert len(clock.slept) == 1
    assert await auth.allows(basic("cheap", "cheap password"))
    assert len(clock.slept) == 1
    auth.close()


async def test_the_first_cheap_failure_learns_the_top_cost_first() -> None:
    """Before any run at the top cost, a cheap user's failure times one (against the
    costliest hash) to know how long to take."""
    cheap = bcrypt.hashpw(b"cheap password", bcrypt.gensalt(4))
    dear = bcrypt.hashpw(b"dear password", bcrypt.gensalt(6))
    clock = CostClock()
    counting = CountingHash()

    def both(password: bytes, hashed: bytes) -> bytes:
        counting(password, hashed)
        return clock.hashpw(password, hashed)

    auth = BasicAuth(
        {"cheap": cheap, "dear": dear}, hashpw=both, clock=lambda: clock.now, sleep=clock.sleep
    )
    assert not await auth.allows(basic("cheap", "wrong"))
    assert counting.against == [cheap, dear]
    assert clock.slept == [pytest.approx(2**6 / 1e6 - 2**4 / 1e6)]
    auth.close()


async def test_the_result_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt's output is compared with hmac.compare_digest, for hits and misses alike."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = BasicAuth({USER: HASH.encode()})
    assert not await auth.allows(basic(USER, "wrong"))
    assert not await auth.allows(basic("nobody", "wrong"))
    assert await auth.allows(basic(USER, PASSWORD))
    assert len(calls) == 3 and all(b == HASH.encode() for _, b in calls)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic !!!not-base64",
        "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:" + PASSWORD.encode()).decode(),
    ],
    ids=["none", "empty", "no-credentials", "not-base64", "bearer", "no-colon", "not-utf8"],
)
async def test_malformed_headers_are_refused(header: str | None) -> None:
    """Anything but a well-formed Basic header is refused."""
    assert not await BasicAuth({USER: HASH.encode()}).allows(header)


async def test_only_the_first_72_bytes_of_a_password_count() -> None:
    """As in every bcrypt implementation (htpasswd, Go's): longer passwords are cut at 72
    bytes instead of failing, so hashes made by those tools keep working."""
    long = "x" * 72
    auth = BasicAuth({USER: bcrypt.hashpw(long.encode(), bcrypt.gensalt(4))})
    assert await auth.allows(basic(USER, long + "ignored"))
    assert not await auth.allows(basic(USER, "x" * 71))


# -- the server -----------------------------------------------------------------------
class Secured:
    def __init__(self, server: Server, http: aiohttp.ClientSession, tls: Tls | None) -> None:
        host, port = server.addresses[0]
        self.url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.http = http
        self.tls = tls

    async def request(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> tuple[int, dict[str, str], str]:
        headers = {"Authorization": auth} if auth is not None else {}
        context = ssl_context or (self.tls.client() if self.tls else None)
        async with self.http.request(
            method, self.url + path, headers=headers, ssl=context or False
        ) as response:
            return response.status, dict(response.headers), await response.text()


@contextlib.asynccontextmanager
async def serving(
    sim: Simulator,
    web_state: WebState,
    tls: Tls | None,
    *,
    web_config_file: Path | None = None,
) -> AsyncIterator[Secured]:
    """The exporter polling ``sim``, serving with ``web_state`` (whose certificate
    ``tls`` made), reloading ``web_config_file`` on POST /-/reload."""
    add_stream(sim, "ls-1")
    config = make_config(sim.base_url, streams=("ls-1",), interval=1.0)
    async with Exporter(config, registry=CollectorRegistry(), process_metrics=False) as exporter:
        reloader = Reloader(
            exporter=exporter,
            config_file=None,
            web_config_file=str(web_config_file) if web_config_file else None,
            web_state=web_state,
        )
        server = Server(
            exporter, host=LOOPBACK, port=0, web_state=web_state, reload=reloader.reload
        )
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Secured(server, http, tls)
        finally:
            await server.close()


def state_for(path: Path, *, healthy_open: bool = False) -> WebState:
    return WebState(webconfig.load(path), unauthenticated=["/-/healthy"] if healthy_open else [])


async def test_tls_is_served_with_the_configured_certificate(
    sim: Simulator, tls: Tls, tmp_path: Path
) -> None:
    """HTTPS works with the test's CA; a client that does not trust it, or speaks plain
    HTTP to the TLS port, gets no answer."""
    path = write_web_config(tmp_path / "web.yml", tls)
    async with serving(sim, state_for(path), tls) as secured:
        status, _, body = await secured.request("GET", "/-/healthy")
        assert status == 200 and body == "OK\n"
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await secured.request("GET", "/-/healthy", ssl_context=ssl.create_default_context())
        plain = secured.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with secured.http.get(plain + "/-/healthy") as response:
                await response.read()


PROTECTED = [("GET", "/metrics"), ("GET", "/"), ("GET", "/-/ready"), ("POST", "/-/reload")]


@pytest.mark.parametrize(
    "auth",
    [
        None,
        basic(USER, "wrong"),
        basic("nobody", PASSWORD),
        basic(USER.upper(), PASSWORD),
        "Basic %%%",
        "Bearer " + PASSWORD,
    ],
    ids=["none", "wrong-password", "unknown-user", "user-case", "malformed", "other-scheme"],
)
async def test_wrong_or_missing_credentials_get_401(
    sim: Simulator, tls: Tls, tmp_path: Path, auth: str | None
) -> None:
    """Every endpoint, /-/healthy and /-/reload included, answers 401 with
    WWW-Authenticate: Basic to missing, wrong, unknown or malformed credentials."""
    path = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    async with serving(sim, state_for(path), tls) as secured:
        for method, endpoint in [*PROTECTED, ("GET", "/-/healthy")]:
            status, headers, body = await secured.request(method, endpoint, auth=auth)
            assert status == 401, endpoint
            assert headers["WWW-Authenticate"].startswith("Basic realm=")
            assert "realtimekit" not in body.replace("realtimekit-exporter", "")


async def test_right_credentials_get_200(sim: Simulator, tls: Tls, tmp_path: Path) -> None:
    """The configured user with the right password reaches every endpoint over TLS;
    /-/reload only by POST (GET is 405)."""
    path = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    async with serving(sim, state_for(path), tls, web_config_file=path) as secured:
        auth = basic(USER, PASSWORD)
        for method, endpoint in [*PROTECTED, ("GET", "/-/healthy")]:
            status, _, _ = await secured.request(method, endpoint, auth=auth)
            assert status in (200, 503), endpoint  # /-/ready: 503 before the first cycle
        status, _, body = await secured.request("GET", "/metrics", auth=auth)
        assert status == 200 and "realtimekit_exporter_build_info" in body
        assert (await secured.request("GET", "/-/reload", auth=auth))[0] == 405


async def test_auth_without_tls(sim: Simulator, tmp_path: Path) -> None:
    """basic_auth_users alone protects a plain HTTP server."""
    path = write_web_config(tmp_path / "web.yml", None, {USER: HASH})
    async with serving(sim, state_for(path), None) as secured:
        assert (await secured.request("GET", "/metrics"))[0] == 401
        assert (await secured.request("GET", "/metrics", auth=basic(USER, PASSWORD)))[0] == 200


async def test_healthy_is_open_only_when_asked(sim: Simulator, tls: Tls, tmp_path: Path) -> None:
    """With --web.healthy-without-auth, /-/healthy answers without credentials (over TLS
    still); every other path keeps asking for them."""
    path = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    async with serving(sim, state_for(path, healthy_open=True), tls) as secured:
        assert (await secured.request("GET", "/-/healthy"))[0] == 200
        for method, endpoint in PROTECTED:
            assert (await secured.request(method, endpoint))[0] == 401, endpoint


async def test_reload_replaces_users_and_certificate(
    sim: Simulator, tls: Tls, tmp_path: Path
) -> None:
    """POST /-/reload re-reads the web config: new users and a new certificate apply to
    the next request and handshake, old credentials stop working."""
    path = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    async with serving(sim, state_for(path), tls, web_config_file=path) as secured:
        renewed = make_tls(tmp_path / "renewed")
        write_web_config(path, renewed, {"new-user": OTHER_HASH})
        status, _, body = await secured.request("POST", "/-/reload", auth=basic(USER, PASSWORD))
        assert (status, body) == (200, "configuration reloaded\n")
        new_auth = basic("new-user", "another password")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await secured.request("GET", "/metrics", auth=new_auth)  # the old CA
        status, _, _ = await secured.request(
            "GET", "/metrics", auth=new_auth, ssl_context=renewed.client()
        )
        assert status == 200
        status, _, _ = await secured.request(
            "GET", "/metrics", auth=basic(USER, PASSWORD), ssl_context=renewed.client()
        )
        assert status == 401


async def test_reload_cannot_turn_tls_off(sim: Simulator, tls: Tls, tmp_path: Path) -> None:
    """Dropping tls_server_config needs a restart: the reload is refused with a 500 and
    the reason, and TLS and the old users stay."""
    path = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    async with serving(sim, state_for(path), tls, web_config_file=path) as secured:
        write_web_config(path, None, {USER: HASH})
        auth = basic(USER, PASSWORD)
        status, _, body = await secured.request("POST", "/-/reload", auth=auth)
        assert status == 500 and "turning TLS off needs a restart" in body
        assert (await secured.request("GET", "/metrics", auth=auth))[0] == 200


async def test_client_certificates_when_required(sim: Simulator, tmp_path: Path) -> None:
    """client_auth_type RequireAndVerifyClientCert: only a client with a certificate from
    client_ca_file completes the handshake."""
    tls = make_tls(tmp_path / "tls")
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(tmp_path / "clients.crt"))
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls.cert_file}\n  key_file: {tls.key_file}\n"
        f"  client_ca_file: clients.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
        encoding="utf-8",
    )
    async with serving(sim, state_for(path), tls) as secured:
        with pytest.raises(aiohttp.ClientError):
            await secured.request("GET", "/-/healthy")
        with_cert = tls.client()
        clients.issue_cert("client@example.invalid").configure_cert(with_cert)
        assert (await secured.request("GET", "/-/healthy", ssl_context=with_cert))[0] == 200


@contextlib.asynccontextmanager
async def _tls_echo(switch: webconfig.TlsSwitch) -> AsyncIterator[int]:
    """An asyncio TLS server with ``switch``'s context (as the exporter listens), which
    answers every request with ``ok`` and closes cleanly: its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"ok")
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()

    server = await asyncio.start_server(answer, LOOPBACK, 0, ssl=switch.context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.interpreter
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_no_tls_session_is_ever_resumed(tmp_path: Path, version: ssl.TLSVersion) -> None:
    """The server keeps no session a client could resume (no tickets, no TLS 1.2 session
    cache), so every connection goes through the handshake and its client certificate
    check, also after a reload that trusts another client CA."""
    tls = make_tls(tmp_path / "tls")
    old_ca, old_file = client_ca(tmp_path, "old")
    new_ca, new_file = client_ca(tmp_path, "new")
    loaded = webconfig.loads(requiring(tls, old_file))
    assert loaded.ssl_context is not None
    switch = webconfig.TlsSwitch(loaded.ssl_context)
    assert not switch.resumable
    client = tls.client()
    client.minimum_version = client.maximum_version = version
    old_ca.issue_cert("client@example.invalid").configure_cert(client)
    async with _tls_echo(switch) as port:
        answer, session, _ = await asyncio.to_thread(fetch_over_tls, port, client)
        assert answer == b"ok"
        answer, session, reused = await asyncio.to_thread(fetch_over_tls, port, client, session)
        assert answer == b"ok" and not reused
        new = webconfig.loads(requiring(tls, new_file)).ssl_context
        assert new is not None
        switch.replace(new)
        answer, _, reused = await asyncio.to_thread(fetch_over_tls, port, client, session)
        assert (answer, reused) == (b"", False), "a client of the old CA got in"
        fresh = tls.client()
        new_ca.issue_cert("client@example.invalid").configure_cert(fresh)
        assert (await asyncio.to_thread(fetch_over_tls, port, fresh))[0] == b"ok"


@pytest.mark.interpreter
async def test_where_the_cache_stays_on_old_sessions_are_refused(tmp_path: Path) -> None:
    """Where this Python cannot turn the TLS 1.2 session cache off, a session resumes
    until a reload, and a handshake resuming it after the reload is refused."""
    tls = make_tls(tmp_path / "tls")
    old_ca, old_file = client_ca(tmp_path, "old")
    _, new_file = client_ca(tmp_path, "new")
    loaded = webconfig.loads(requiring(tls, old_file))
    assert loaded.ssl_context is not None
    now = [1000.5]
    switch = webconfig.TlsSwitch(
        loaded.ssl_context, clock=lambda: now[0], disable_cache=lambda _: False
    )
    assert switch.resumable
    client = tls.client()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    old_ca.issue_cert("client@example.invalid").configure_cert(client)
    now[0] = time.time() - 5  # the test's sessions are made after the switch began
    async with _tls_echo(switch) as port:
        answer, session, _ = await asyncio.to_thread(fetch_over_tls, port, client)
        assert answer == b"ok"
        answer, session, reused = await asyncio.to_thread(fetch_over_tls, port, client, session)
        assert answer == b"ok" and reused  # the cache is on: the test shows the fallback
        new = webconfig.loads(requiring(tls, new_file)).ssl_context
        assert new is not None
        now[0] = time.time() + 1  # the reload comes after the session
        switch.replace(new)
        answer, _, reused = await asyncio.to_thread(fetch_over_tls, port, client, session)
        assert answer == b"", "a session from before the reload was resumed"


# -- files out of bounds --------------------------------------------------------------
def web_fifo(path: Path) -> None:
    os.mkfifo(path)


def web_oversized(path: Path) -> None:
    path.write_text("# " + "x" * webconfig.MAX_WEB_CONFIG_FILE_BYTES + "\n", encoding="utf-8")


def web_deep(path: Path) -> None:
    path.write_text(f"basic_auth_users:\n  {USER}: " + "[" * 500 + "]" * 500 + "\n", "utf-8")


WEB_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "500-deep brackets": (web_deep, "nested deeper than 64 levels at line 2, column 77"),
    "a FIFO": (web_fifo, "cannot read file: it is a FIFO (named pipe), not a regular file"),
    "over 256 KiB": (
        web_oversized,
        "cannot read file: it is over the limit of 256 KiB "
        f"({webconfig.MAX_WEB_CONFIG_FILE_BYTES + 3} bytes)",
    ),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("make", "problem"), WEB_FILES.values(), ids=list(WEB_FILES))
def test_a_web_config_file_out_of_bounds_is_one_problem(
    tmp_path: Path, make: Callable[[Path], None], problem: str
) -> None:
    """The web config is read and parsed as the config is: bounded, at once, one line."""
    path = tmp_path / "web.yml"
    make(path)
    with pytest.raises(WebConfigError) as caught:
        webconfig.load(path)
    assert caught.value.problems == [problem] and caught.value.source == str(path)


def pem_oversized(path: Path) -> None:
    with path.open("a", encoding="utf-8") as out:  # still a valid PEM: text around is ignored
        out.write("x" * webconfig.MAX_PEM_FILE_BYTES)


PEM_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "a FIFO": (fifo, "it is a FIFO (named pipe), not a regular file"),
    "/dev/zero": (dev_zero, "it is a character device, not a regular file"),
    "a directory": (directory, "it is a directory, not a regular file"),
    "over 1 MiB": (pem_oversized, "it is over the limit of 1 MiB ("),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("make", "reason"), PEM_FILES.values(), ids=list(PEM_FILES))
def test_a_certificate_file_that_is_not_a_small_regular_file_is_one_problem(
    tls: Tls, tmp_path: Path, make: Callable[[Path], None], reason: str
) -> None:
    """cert_file (as key_file and client_ca_file) is checked before OpenSSL reads it,
    which would wait forever on a FIFO or read /dev/zero without end."""
    make(tls.cert_file)
    with pytest.raises(WebConfigError) as caught:
        webconfig.load(write_web_config(tmp_path / "web.yml", tls))
    (problem,) = caught.value.problems
    assert problem.startswith(f"tls_server_config.cert_file: cannot read {tls.cert_file}: {reason}")


@pytest.mark.timeout(10)
def test_certificates_are_loaded_from_the_bytes_that_were_checked(
    tls: Tls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each PEM file is read once, safely, and OpenSSL loads those bytes: a FIFO swapped
    in after the read (which would block OpenSSL opening the path) changes nothing."""
    ca = trustme.CA()
    ca_file = tmp_path / "clients.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    config = webconfig.TlsConfig(
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        client_ca_file=ca_file,
        client_auth_type="RequireAndVerifyClientCert",
    )
    real = read_file  # what webconfig calls, until patched below

    def read_then_swap(path: Path, *, limit: int) -> bytes:
        data = real(path, limit=limit)
        fifo(path)
        return data

    monkeypatch.setattr(webconfig, "read_file", read_then_swap)
    context = config.context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


async def test_a_cheap_failure_holds_its_bcrypt_thread_as_long_as_a_costly_one() -> None:
    """The wait that makes a cheap user's failure as slow as the top cost is spent in the
    bcrypt thread, holding it: so failures for a cheap user do not come back faster when
    many are sent at once either (8 at a time once told a cost-4 user apart, 70 against
    250 ms)."""
    cheap = bcrypt.hashpw(b"cheap password", bcrypt.gensalt(4))
    dear = bcrypt.hashpw(b"dear password", bcrypt.gensalt(6))
    clock = CostClock()
    waited_in: list[str] = []

    def sleep(seconds: float) -> None:
        waited_in.append(threading.current_thread().name)
        clock.sleep(seconds)

    auth = BasicAuth(
        {"cheap": cheap, "dear": dear}, hashpw=clock.hashpw, clock=lambda: clock.now, sleep=sleep
    )
    assert not await auth.allows(basic("cheap", "wrong"))
    assert waited_in and all(name.startswith("bcrypt") for name in waited_in)
    auth.close()


async def test_one_client_address_cannot_fill_the_queue_of_checks() -> None:
    """A client address may have PER_CLIENT checks waiting or running; beyond, its own are
    refused at once while another address's check still gets its turn (an attacker
    keeping 40 wrong-password requests open made a right one wait for 9 s of 503s)."""
    gated = GatedHash()
    auth = BasicAuth({USER: HASH.encode()}, hashpw=gated)
    flood = [
        asyncio.ensure_future(auth.allows(basic(USER, f"guess{i}"), client="10.0.0.66"))
        for i in range(webconfig.PER_CLIENT)
    ]
    await wait_until(lambda: gated.started == webconfig.BCRYPT_CONCURRENCY)
    with pytest.raises(webconfig.AuthOverloaded):
        await auth.allows(basic(USER, "one more"), client="10.0.0.66")
    other = asyncio.ensure_future(auth.allows(basic(USER, PASSWORD), client="10.0.0.1"))
    gated.gate.set()
    await asyncio.gather(*flood)
    assert not await other  # checked (the gated hash never matches), not refused
    auth.close()


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, ""),
    ],
)
def test_client_addresses_are_keyed_by_host(address: str | None, key: str) -> None:
    """An IPv6 host picks addresses from a whole /64: its checks count as one client."""
    assert webconfig.client_key(address) == key


async def test_a_reload_keeps_the_threads_and_the_remembered_credentials() -> None:
    """A web config reload that changes the users checks in the same two bcrypt threads
    (20 reloads once ran 22 at once) and keeps remembering credentials still configured
    (each reload once forgot them, sending Prometheus back into the queue)."""

    def bcrypt_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("bcrypt"))

    before = bcrypt_threads()  # left by other tests' checks
    counting = CountingHash()
    users = {USER: HASH.encode()}
    state = WebState(webconfig.WebConfig(users=MappingProxyType(users)))
    assert state.auth is not None
    state.auth._hashpw = counting
    assert await state.auth.allows(basic(USER, PASSWORD))
    checks = state.checks
    for i in range(20):
        state.replace(
            webconfig.WebConfig(users=MappingProxyType({**users, f"u{i}": HASH.encode()}))
        )
        assert state.checks is checks
        assert state.auth is not None
        state.auth._hashpw = counting
        assert await state.auth.allows(basic(USER, PASSWORD))
    assert len(counting.against) == 1
    assert bcrypt_threads() - before <= webconfig.BCRYPT_CONCURRENCY
    state.close()
