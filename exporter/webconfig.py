"""TLS and basic auth for the exporter's own endpoints, from ``--web.config.file``.

The file has the format of the Prometheus exporter-toolkit's web configuration, so one
file can serve this exporter and Go exporters alike::

    tls_server_config:
      cert_file: server.crt          # relative paths: from the file's directory
      key_file: server.key
      client_ca_file: clients.crt    # optional, with client_auth_type
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 prometheus)

:func:`load` turns it into a :class:`WebConfig` or raises :class:`WebConfigError` naming
every problem with its key path; unknown keys are problems, and the keys of the toolkit
this exporter does not implement are named as such. :class:`WebState` is what the running
server consults: the current :class:`BasicAuth` and a :class:`TlsSwitch`, both replaced
by a reload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import ssl
import statistics
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, TypeVar

import bcrypt

from exporter.config import ConfigError, UnreadableFile, YamlError, parse_yaml, read_file, read_text
from exporter.config.checks import Checker
from exporter.tlssessions import disable_session_cache
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping
    from concurrent.futures import Executor

T = TypeVar("T")

ClientAuth = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
CLIENT_AUTH: Final[dict[str, ssl.VerifyMode]] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
BCRYPT_MAX_BYTES: Final = 72  # bcrypt reads no further; every implementation cuts here
VERIFIED_CACHE_SIZE: Final = 100
# bcrypt runs at most this many at once: a flood of wrong credentials takes no more CPU.
BCRYPT_CONCURRENCY: Final = 2
# Checks may queue for about this long (at the top cost's speed); beyond, 503 at once.
QUEUE_SECONDS: Final = 1.0
MIN_QUEUE: Final = 8
PER_CLIENT: Final = 4  # checks one client address may have waiting or running
TIMING_SAMPLES: Final = 9  # runs at the top cost whose median a failure takes
OVERLOAD_LOG_INTERVAL: Final = 60.0  # seconds between two warnings of a full queue
log = logging.getLogger(__name__)
WWW_AUTHENTICATE: Final = 'Basic realm="realtimekit-exporter", charset="UTF-8"'

_TOP_KEYS: Final = frozenset({"tls_server_config", "basic_auth_users"})
_TLS_KEYS: Final = frozenset(
    {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"} | {"max_version"}
)
# The exporter-toolkit's other keys: named as unsupported rather than unknown.
_TOOLKIT_ONLY: Final = frozenset(
    {"http_server_config", "rate_limit", "cert", "key", "client_ca", "cipher_suites"}
    | {"curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"}
)
# Go's tls offers these; OpenSSL cannot ask for a certificate without verifying it.
_UNVERIFIED_CLIENT_AUTH: Final = frozenset({"RequestClientCert", "RequireAnyClientCert"})
# The salt's 22nd character carries 2 bits: only ".Oeu" decode, and bcrypt refuses others.
_BCRYPT_HASH = re.compile(r"\$2[abxy]\$([0-9]{2})\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}")
_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.@\-]{1,32}")


class WebConfigError(ConfigError):
    """The web configuration cannot be used; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str], *, source: str = "web config") -> None:
        super().__init__(problems, source=source)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: ClientAuth = "NoClientCert"
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None

    def context(self) -> ssl.SSLContext:
        """A server context with these files read now; ``ssl.SSLError``, ``OSError`` or
        :class:`~exporter.config.UnreadableFile`.

        Each file is read once by :func:`~exporter.config.read_file` (a small regular
        file, never blocking), and OpenSSL is handed those very bytes: given the path, it
        would open the file again, and a FIFO put there in between would block it."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        if self.max_version is not None:
            ctx.maximum_version = self.max_version
        with _in_memory(self.cert_file) as cert, _in_memory(self.key_file) as key:
            # A password callback, so that an encrypted key fails instead of prompting.
            ctx.load_cert_chain(cert, key, password=_no_password)
        if self.client_ca_file is not None:
            with _in_memory(self.client_ca_file) as ca:
                ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]
        return ctx


@contextlib.contextmanager
def _in_memory(path: Path) -> Iterator[str]:
    """A path at which OpenSSL reads what ``path`` holds now: an anonymous in-memory file
    (``memfd_create``, Linux), which nothing can swap; elsewhere ``path`` itself."""
    data = read_file(path, limit=MAX_PEM_FILE_BYTES)
    try:
        fd = os.memfd_create("pem", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux: the file, as it is by then
        yield str(path)
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _no_password() -> bytes:
    return b""


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A checked web configuration. ``ssl_context`` was built from ``tls`` when loaded."""

    tls: TlsConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    source: str = "web config"
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def summary(self) -> str:
        tls = "TLS" if self.tls is not None else "no TLS"
        if self.tls is not None and self.tls.client_auth_type != "NoClientCert":
            tls += f" ({self.tls.client_auth_type})"
        return f"{tls}, basic auth for {len(self.users)} user(s)"


# What load reads (exporter.config.read_file): a web config of some 3,000 users, and PEM
# files of 4 times Debian's whole CA bundle (ca-certificates.crt: 0.21 MiB, 144 CAs).
MAX_WEB_CONFIG_FILE_BYTES: Final = 256 * 1024
MAX_PEM_FILE_BYTES: Final = 1024 * 1024


def load(path: str | Path) -> WebConfig:
    """Read and check a web config file, its certificates and keys included."""
    try:
        text = read_text(path, limit=MAX_WEB_CONFIG_FILE_BYTES)
    except ConfigError as exc:
        raise WebConfigError(exc.problems, source=exc.source) from None
    return loads(text, source=str(path), base_dir=Path(path).parent)


def loads(text: str, *, source: str = "web config", base_dir: Path | None = None) -> WebConfig:
    """Check YAML text; see :func:`load`. Relative paths are taken from ``base_dir``."""
    try:
        # Never more than the position: the offending line could hold a password hash.
        document = parse_yaml(text, shown=_shown)
    except YamlError as exc:
        raise WebConfigError([str(exc)], source=source) from None
    checker = _Checker(base_dir or Path.cwd())
    config = checker.web_config(document, source)
    checker.raise_if_any(WebConfigError, source)
    return config


class _Checker(Checker):
    """Builds the web config from its document, collecting every problem."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(shown=_shown, unsupported=_TOOLKIT_ONLY)
        self.base_dir = base_dir

    def web_config(self, document: object, source: str) -> WebConfig:
        root = self.mapping("", document, _TOP_KEYS)
        tls = None
        context = None
        if root.get("tls_server_config") is not None:
            tls = self.tls(root["tls_server_config"])
            if tls is not None:
                context = self.context(tls)
        users = self.users(root.get("basic_auth_users"))
        return WebConfig(tls=tls, users=users, source=source, ssl_context=context)

    def path(self, where: str, value: object) -> Path | None:
        if not isinstance(value, str) or not value:
            self.fail(where, "must be a file path")
            return None
        path = Path(value)
        path = path if path.is_absolute() else self.base_dir / path
        try:
            # Read here to be refused with its key's name; TlsConfig.context reads it again,
            # as safely, for OpenSSL (a few KiB, once per load).
            read_file(path, limit=MAX_PEM_FILE_BYTES)
        except UnreadableFile as exc:
            self.fail(where, f"cannot read {path}: {exc}")
            return None
        return path

    def tls(self, value: object) -> TlsConfig | None:
        base = "tls_server_config"
        if not isinstance(value, dict):
            self.fail(base, "must be a mapping")
            return None
        raw = self.mapping(base, value, _TLS_KEYS)
        if not value:
            self.fail(base, "needs cert_file and key_file (leave the key out for plain HTTP)")
            return None
        files: dict[str, Path | None] = {}
        for name in ("cert_file", "key_file"):
            if name not in raw:
                self.fail(f"{base}.{name}", "is required")
                files[name] = None
            else:
                files[name] = self.path(f"{base}.{name}", raw[name])
        ca = None
        has_ca = raw.get("client_ca_file") is not None
        if has_ca:
            ca = self.path(f"{base}.client_ca_file", raw["client_ca_file"])
        auth = self.client_auth(raw.get("client_auth_type"), has_ca=has_ca)
        low = self.version(f"{base}.min_version", raw.get("min_version", "TLS12"))
        high = None
        if raw.get("max_version") is not None:
            high = self.version(f"{base}.max_version", raw["max_version"])
        if low is not None and high is not None and high < low:
            self.fail(f"{base}.max_version", "must not be below min_version")
        cert, key = files["cert_file"], files["key_file"]
        if cert is None or key is None or auth is None or low is None:
            return None
        if has_ca and ca is None:
            return None
        return TlsConfig(
            cert_file=cert,
            key_file=key,
            client_ca_file=ca,
            client_auth_type=auth,
            min_version=low,
            max_version=high,
        )

    def client_auth(self, value: object, *, has_ca: bool) -> ClientAuth | None:
        where = "tls_server_config.client_auth_type"
        text = "NoClientCert" if value is None or value == "" else value
        if text in _UNVERIFIED_CLIENT_AUTH:
            self.fail(
                where,
                f"{text} is not supported (client certificates are always verified): "
                "use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            )
            return None
        if not isinstance(text, str) or text not in CLIENT_AUTH:
            self.fail(where, f"must be one of {', '.join(CLIENT_AUTH)}")
            return None
        if text == "NoClientCert" and has_ca:
            self.fail(
                where,
                "client_ca_file is set but client certificates are not asked for: set "
                "VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            )
            return None
        if text != "NoClientCert" and not has_ca:
            self.fail(where, f"{text} needs tls_server_config.client_ca_file")
            return None
        auth: ClientAuth = text  # type: ignore[assignment]  # checked against CLIENT_AUTH
        return auth

    def version(self, where: str, value: object) -> ssl.TLSVersion | None:
        if not isinstance(value, str) or value not in TLS_VERSIONS:
            self.fail(where, f"must be one of {', '.join(TLS_VERSIONS)}")
            return None
        return TLS_VERSIONS[value]

    def context(self, tls: TlsConfig) -> ssl.SSLContext | None:
        try:
            return tls.context()
        except ssl.SSLError as exc:
            # The reason is OpenSSL's code (KEY_VALUES_MISMATCH, ...), never file content.
            self.fail(
                "tls_server_config",
                f"cannot use cert_file, key_file and client_ca_file: {exc.reason or exc}",
            )
        except (OSError, ValueError, UnreadableFile) as exc:
            self.fail("tls_server_config", f"cannot use the files: {exc}")
        return None

    def users(self, value: object) -> Mapping[str, bytes]:
        base = "basic_auth_users"
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, dict):
            self.fail(base, "must be a mapping of user name to bcrypt hash")
            return MappingProxyType({})
        users: dict[str, bytes] = {}
        for name, hashed in value.items():
            where = f"{base}.{_shown(name)}"
            if not isinstance(name, str) or not name:
                self.fail(where, "a user name must be non-empty text")
            elif ":" in name:
                self.fail(where, "a user name cannot contain ':' in basic auth")
            elif not isinstance(hashed, str) or not (m := _BCRYPT_HASH.fullmatch(hashed)):
                # Never quoted: it might be a password written where its hash belongs.
                self.fail(where, "must be a bcrypt hash ($2y$..., e.g. from htpasswd -nB)")
            elif not 4 <= int(m.group(1)) <= 31:
                self.fail(where, "the bcrypt cost must be between 04 and 31")
            else:
                users[name] = hashed.encode("ascii")
        return MappingProxyType(users)


def _shown(key: object) -> str:
    """A key or user name as an error may show it: plain and short, else described."""
    text = str(key)
    if _SHOWN_NAME.fullmatch(text):
        return text
    return f"<key of {len(text)} characters>"


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])  # $2y$NN$...


def basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    """User and password of an ``Authorization: Basic`` header; None if it is not one."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, ValueError):  # includes UnicodeDecodeError
        return None


class AuthOverloaded(Exception):
    """More password checks are waiting than can be answered in about a second (or than
    one client address may have waiting): the request is answered 503 at once, its
    credentials unchecked."""


def client_key(address: str | None) -> str:
    """Whose check it is, for fairness: an IPv4 address, or the /64 of an IPv6 one (one
    host has a whole /64 to pick from)."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class PasswordChecks:
    """Where a server's bcrypt checks run and wait: :data:`BCRYPT_CONCURRENCY` daemon
    threads (a flood of wrong credentials takes no more CPU than that, never the threads
    /metrics renders in, and never keeps a stopping process waiting), shared by every
    :class:`BasicAuth` a reload makes, with a count of the checks waiting or running,
    overall and per client address.

    A check whose client hung up before its turn never runs (the server cancels its
    request). A check is refused at once (:class:`AuthOverloaded`) when more are waiting
    than run in about :data:`QUEUE_SECONDS`, or when its client address has
    :data:`PER_CLIENT` waiting already: one address flooding cannot keep another out.
    """

    def __init__(
        self,
        *,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        per_client: int = PER_CLIENT,
    ) -> None:
        self.executor = executor or DaemonExecutor(BCRYPT_CONCURRENCY, name="bcrypt")
        self._clock = clock
        self._per_client = per_client
        self._waiting = 0
        self._by_client: dict[str, int] = {}
        self._overloaded = False
        self._warned_at = -OVERLOAD_LOG_INTERVAL
        self._drained_at = -OVERLOAD_LOG_INTERVAL

    def close(self) -> None:
        """Drop the checks still waiting; the threads end with the ones running."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, client: str, limit: int, check: Callable[[], T]) -> T:
        """``check()`` in a bcrypt thread, in turn; :class:`AuthOverloaded` if ``limit``
        checks are waiting already, or :data:`PER_CLIENT` of ``client``'s."""
        mine = self._by_client.get(client, 0)
        if self._waiting >= limit or mine >= self._per_client:
            self._overload(True)
            raise AuthOverloaded
        self._waiting += 1
        self._by_client[client] = mine + 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, check)
        finally:
            self._waiting -= 1
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]
            if self._waiting == 0:
                self._overload(False)

    def _overload(self, overloaded: bool) -> None:
        """Log when checks start being refused and when the queue drains: at most once a
        minute each, however often an attacker fills and drains it."""
        if overloaded == self._overloaded:
            return
        self._overloaded = overloaded
        now = self._clock()
        if overloaded and now - self._warned_at >= OVERLOAD_LOG_INTERVAL:
            self._warned_at = now
            log.warning(
                "password checks are queueing beyond %gs of bcrypt (or %d from one "
                "client address): answering 503 to new ones until the queue drains",
                QUEUE_SECONDS,
                self._per_client,
            )
        elif not overloaded and self._warned_at > self._drained_at:
            self._drained_at = now
            log.info("password checks no longer queue")


class BasicAuth:
    """Checks basic auth credentials against bcrypt hashes, in constant time.

    Every check runs bcrypt, in turn, in the threads of ``checks``
    (:class:`PasswordChecks`): for an unknown user against the most costly configured
    hash, and the result is compared with :func:`hmac.compare_digest`.

    A wrong user name takes as long as a wrong password: a failed check holds its bcrypt
    thread until a run at the most costly configured cost would have ended (the median of
    the last such runs), so a user whose hash is cheaper is told apart neither by the
    time of one answer nor by how many answers come in a second.

    bcrypt is slow on purpose (milliseconds to seconds, by cost), so credentials that
    passed are remembered (at most :data:`VERIFIED_CACHE_SIZE`, as keyed digests, never
    the password) and a scrape with them skips bcrypt; wrong ones never do. A reload
    that replaces the users hands the remembered credentials (and what a top-cost run
    takes) to the next :class:`BasicAuth` (``previous``): a credential still configured
    stays remembered.
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        *,
        checks: PasswordChecks | None = None,
        previous: BasicAuth | None = None,
        hashpw: Callable[[bytes, bytes], bytes] = bcrypt.hashpw,
        cache_size: int = VERIFIED_CACHE_SIZE,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``clock`` and ``sleep`` are used in the bcrypt threads."""
        if not users:
            raise ValueError("basic auth needs at least one user")
        self._users = dict(users)
        self._dummy = max(self._users.values(), key=_cost)
        self._top_cost = _cost(self._dummy)
        self._owns_checks = checks is None
        self._checks = checks if checks is not None else PasswordChecks()
        self._hashpw = hashpw
        self._clock = clock
        self._sleep = sleep
        self._cache_size = cache_size
        # Durations of recent runs at the top cost: what every failure takes.
        self._top_runs: deque[float] = deque(maxlen=TIMING_SAMPLES)
        self._key: bytes = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        if previous is not None:
            # Keyed digests of (user, hash, password): an entry whose user or hash has
            # changed can never match again, so all of them may stay.
            self._key, self._verified = previous._key, previous._verified
            if previous._top_cost == self._top_cost:
                self._top_runs.extend(previous._top_runs)

    def __repr__(self) -> str:
        return f"BasicAuth(users={len(self._users)})"

    def close(self) -> None:
        """Drop the checks still waiting, if their threads are this one's own."""
        if self._owns_checks:
            self._checks.close()

    async def allows(self, header: str | None, *, client: str = "") -> bool:
        """Whether ``header`` holds the right credentials; :class:`AuthOverloaded` if too
        many checks are waiting (or too many of ``client``'s, a :func:`client_key`) to
        check them in time."""
        credentials = basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        hashed = self._dummy if stored is None else stored
        key = self._cache_key(user, hashed, password)
        if stored is not None and key in self._verified:
            self._verified.move_to_end(key)
            return True
        check = functools.partial(self._check, password, hashed, known=stored is not None)
        if not await self._checks.run(client, self._queue_limit(), check):
            return False
        self._verified[key] = None
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return True

    def _check(self, password: bytes, hashed: bytes, *, known: bool) -> bool:
        """In a bcrypt thread: whether ``password`` matches ``hashed``; a failure returns
        no sooner than a run at the top cost would have."""
        computed, seconds = self._hash(password, hashed)
        matches = hmac.compare_digest(computed, hashed)  # for unknown users too: same time
        if known and matches:
            return True
        if _cost(hashed) == self._top_cost:
            self._top_runs.append(seconds)
        else:
            if not self._top_runs:  # once: how long the top cost takes here
                self._top_runs.append(self._hash(password, self._dummy)[1])
            self._sleep(max(0.0, statistics.median(self._top_runs) - seconds))
        return False

    def _queue_limit(self) -> int:
        run = statistics.median(self._top_runs) if self._top_runs else None
        if run is None or run <= 0:
            return MIN_QUEUE
        return max(MIN_QUEUE, int(QUEUE_SECONDS / run * BCRYPT_CONCURRENCY))

    def _hash(self, password: bytes, hashed: bytes) -> tuple[bytes, float]:
        started = self._clock()
        try:
            computed = self._hashpw(password[:BCRYPT_MAX_BYTES], hashed)
        except ValueError:  # cannot happen for a checked hash; never a match
            computed = b""
        return computed, self._clock() - started

    def _cache_key(self, user: str, hashed: bytes, password: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (user.encode("utf-8"), hashed, password):
            mac.update(len(part).to_bytes(8, "big") + part)
        return mac.digest()


class TlsSwitch:
    """The server's TLS context, whose settings a reload replaces for new connections.

    A listening socket keeps the context it was opened with, so the server listens with
    :attr:`context` and, on each handshake, hands the connection the current context
    (certificate, key, client CAs). The verify mode and protocol versions are copied into
    a connection before that point, so :meth:`replace` sets them on :attr:`context` too.

    No session is resumed: a resumed session skips the handshake, and with it the client
    certificate policy and CAs a reload may have changed. Tickets are off, and so is the
    TLS 1.2 session cache (:mod:`exporter.tlssessions`). Where this Python cannot turn the
    cache off (:attr:`resumable`), a handshake that resumes a session made before the last
    :meth:`replace` is refused instead, and the client connects anew.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        clock: Callable[[], float] = time.time,
        disable_cache: Callable[[ssl.SSLContext], bool] = disable_session_cache,
    ) -> None:
        self.context = context
        self._current = context
        self._clock = clock
        self._disable_cache = disable_cache
        context.sni_callback = self._handshake
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        # Sessions are cached in the listening context, whichever context a handshake
        # switches to.
        self.resumable = not disable_cache(context)
        if self.resumable:
            log.warning(
                "this Python cannot turn off the TLS 1.2 session cache: a session made "
                "before a reload of the web configuration is refused after it"
            )
        self._since = clock()

    def replace(self, context: ssl.SSLContext) -> None:
        # Its own cache is never used, but off it hands clients no session ID to keep.
        self._disable_cache(context)
        self.context.verify_mode = context.verify_mode
        self.context.minimum_version = context.minimum_version
        self.context.maximum_version = context.maximum_version
        self._current = context
        self._since = self._clock()

    def _handshake(
        self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext
    ) -> int | None:
        # Called with name None as well when the client sends no server name; by then the
        # server has decided whether the handshake resumes a session.
        if self._current is not self.context:
            connection.context = self._current
        if self.resumable and connection.session_reused:
            session = connection.session
            # Session times are whole seconds: one made in the second of a reload goes too.
            if session is None or session.time <= self._since:
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None


class WebState:
    """What the server checks each request against; :meth:`replace` installs a reloaded
    :class:`WebConfig` (turning TLS on or off needs a restart: the socket is open)."""

    def __init__(self, config: WebConfig, *, unauthenticated: Collection[str] = ()) -> None:
        self.config = config
        self.unauthenticated = frozenset(unauthenticated)
        self.checks = PasswordChecks()
        self.auth = BasicAuth(config.users, checks=self.checks) if config.users else None
        self.tls = TlsSwitch(config.ssl_context) if config.ssl_context is not None else None

    def close(self) -> None:
        self.checks.close()

    def problem(self, config: WebConfig) -> str | None:
        """Why ``config`` cannot replace the current one, if it cannot."""
        if (config.ssl_context is None) != (self.tls is None):
            turn = "off" if config.ssl_context is None else "on"
            return f"turning TLS {turn} needs a restart"
        return None

    def replace(self, config: WebConfig) -> None:
        if (problem := self.problem(config)) is not None:
            raise WebConfigError([problem], source=config.source)
        if config.users != self.config.users:
            # Checks already waiting finish by the old users, in the same two threads.
            self.auth = (
                BasicAuth(config.users, checks=self.checks, previous=self.auth)
                if config.users
                else None
            )
        if self.tls is not None and config.ssl_context is not None:
            self.tls.replace(config.ssl_context)
        self.config = config
