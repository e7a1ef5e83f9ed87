"""YAML configuration -> frozen :class:`~exporter.config.records.Config`, or one
:class:`~exporter.config.checks.ConfigError` naming every problem.

Parse at the edge, then trust the types. Validation walks the whole document and collects
each problem with its key path (``apps[0].livestreams[1].id: ...``); unknown keys are
problems too. Error text never quotes a value that could be a secret.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from exporter.config.checks import Checker, ConfigError, join
from exporter.config.files import (
    MAX_CONFIG_FILE_BYTES,
    UnreadableFile,
    UnreadableTokenFile,
    read_file,
    read_token_file,
)
from exporter.config.records import (
    DEFAULT_ANALYTICS_INTERVAL,
    DEFAULT_BASE_URL,
    DEFAULT_CREDENTIALS,
    DEFAULT_MAX_LIVESTREAMS,
    DEFAULT_WEBHOOK_PORT,
    DURATION_UNITS,
    ApiConfig,
    AppConfig,
    Config,
    Credentials,
    Limits,
    LivestreamConfig,
    PollConfig,
    RateLimit,
    Shard,
    WebhooksConfig,
    default_max_staleness,
    format_duration,
)
from exporter.config.secret import Secret
from exporter.config.yamldoc import YamlError, parse_yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_T = TypeVar("_T")

TOKEN_ENV: Final = "CLOUDFLARE_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
# decode.MAX_LABEL_LENGTH: a longer configured id could never match a listed one, and would
# be exported uncut as an unlisted stream's label.
MAX_LIVESTREAM_ID_LENGTH: Final = 256
# Upper bounds on the numbers a config gives, far beyond any use: each is turned into a
# float somewhere (a gauge, a rate), and a number of 400 digits passed validation only to
# fail every scrape with OverflowError.
MAX_LIVESTREAMS_LIMIT: Final = 1_000_000
MAX_RATE_LIMIT_REQUESTS: Final = 1_000_000_000
MAX_CONCURRENCY: Final = 1000

_UNIT_ORDER: Final = tuple(DURATION_UNITS)
# ASCII digits (\d alone is any Unicode digit: a fullwidth "1s" was one second).
_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|[ywdhms])")
_PLAIN_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# The shortest and the longest duration, as Prometheus bounds its own (a millisecond, and
# 292 years of nanoseconds): 1e307 s passed, and the poller's first plan overflowed.
MIN_DURATION: Final = 0.001
MAX_DURATION: Final = 292 * DURATION_UNITS["y"]
DURATION_FORM: Final = "write a number and a unit (ms, s, m, h, d, w or y), such as 30s, 5m or 1d"
_SHOWN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,23}")
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_ID = re.compile(r"[A-Za-z0-9_.\-]+")  # used with fullmatch: no trailing newline
_LISTEN_PORT = re.compile(r"[0-9]{1,5}")
_WEBHOOK_PATH = re.compile(r"(/[A-Za-z0-9._~\-]+)+")  # fullmatch: plain segments, no dot ones
# A name of the credentials section (a label value of the budget metrics, shown in logs
# and errors): no longer than a key an error may quote (_SHOWN_KEY), as a longer word may
# be a token pasted where the name goes (API tokens are 40 characters).
MAX_CREDENTIALS_NAME: Final = 24
_CREDENTIALS_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_CREDENTIALS_NAME}}}")  # fullmatch

# The keys of each mapping; together, the keys an error may name (anything else might be
# a misplaced secret).
_ROOT: Final = frozenset({"api", "credentials", "poll", "apps", "limits", "webhooks"})
_API: Final = frozenset(
    {"base_url", "token", "token_file", "timeout", "max_concurrency", "rate_limit"}
)
_CREDENTIALS: Final = frozenset({"token", "token_file", "rate_limit"})
_POLL: Final = frozenset(
    {"interval", "max_staleness", "full_listing_interval", "analytics_interval"}
)
_WEBHOOKS: Final = frozenset({"listen_address", "path", "public_key_url", "public_key_file"})
_LIMITS: Final = frozenset({"max_livestreams"})
_APP: Final = frozenset({"account_id", "app_id", "discover", "livestreams", "credentials"})
_LIVESTREAM: Final = frozenset({"id", "expect_live"})
WHOLE: Final = Shard()  # no sharding
_DEFAULT_RATE_LIMIT: Final = RateLimit(1000, 300.0)
_SCHEMA_KEYS: Final = _ROOT | _API | _CREDENTIALS | _POLL | _WEBHOOKS | _LIMITS | _APP | _LIVESTREAM


def parse_duration(value: object, *, alternative: str = "") -> float:
    """``500ms``, ``30s``, ``5m``, ``1h``, ``1d``, ``1w``, ``1y``, a combination in that
    order (``1h30m``, as Prometheus writes them), or a plain number of seconds -> seconds.

    Anything else, zero and negative durations among them, and any shorter than 1ms or
    longer than 292y, raises one ValueError that names the value written (when it may be
    shown) and says what is accepted; its text ends with ``alternative`` (", or off")
    when something else is accepted too.
    """
    seconds = _seconds(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"{_shown_value(value)} is not a duration above zero: {DURATION_FORM}{alternative}"
        )
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        beyond = "longer than 292y" if seconds > MAX_DURATION else "shorter than 1ms"
        raise ValueError(
            f"{_shown_value(value)} is {beyond}: a duration is at least 1ms and at most "
            f"292y{alternative}"
        )
    return seconds


def _seconds(value: object) -> float | None:
    """The seconds ``value`` says, or None if it is not a duration (nor a number)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return float(value)
        if not isinstance(value, str):
            return None
        text = value.strip()
        if _PLAIN_SECONDS.fullmatch(text):
            return float(text)
        total, pos, last = 0.0, 0, -1
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            if m is None:
                return None
            rank = _UNIT_ORDER.index(m.group(2))
            if rank <= last:  # each unit once, the longest first ("1m1h" is a mistake)
                return None
            total += float(m.group(1)) * DURATION_UNITS[m.group(2)]
            pos, last = m.end(), rank
    except OverflowError:  # an integer too large for a float
        return math.inf
    return total if last >= 0 else None


def _shown_value(value: object) -> str:
    """A value written where a duration goes, as an error may show it: quoted when short
    (a long one could be a token pasted in the wrong key, as for :func:`_shown_key`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "an empty value"
    if isinstance(value, int) and abs(value) >= 10**24:  # str() of 5,000 digits raises
        return "the number written"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        if len(value) <= 24 and value.isprintable():
            return repr(value)
        return f"the value written ({len(value)} characters)"
    return "a list" if isinstance(value, list) else "a mapping"


def parse_analytics_interval(value: object) -> float | None:
    """A duration, or ``off`` (None: never read); YAML reads a bare ``off`` as false."""
    if value is False or value == "off":
        return None
    return parse_duration(value, alternative=", or off")


def parse_rate_limit(value: object) -> RateLimit:
    """``1000/5m`` -> 1000 requests per 300 s."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("must look like 1000/5m (requests per window)")
    count_text, window_text = value.split("/", 1)
    try:
        count = int(count_text.strip())
    except ValueError:
        raise ValueError("must look like 1000/5m (requests per window)") from None
    if count < 1:
        raise ValueError("the request count must be at least 1")
    if count > MAX_RATE_LIMIT_REQUESTS:
        raise ValueError(f"the request count must be at most {MAX_RATE_LIMIT_REQUESTS:,}")
    try:
        window = parse_duration(window_text.strip())
    except ValueError as exc:
        raise ValueError(f"the window {exc}") from None
    return RateLimit(count, window)


def parse_listen_address(
    address: str, *, shown: str | None = None, example: str | None = None
) -> tuple[str | None, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (every interface) -> (host, port); raises
    ValueError saying what is wrong, naming the address as ``shown`` (default: quoted) and
    offering ``example`` as a right one."""
    name = repr(address) if shown is None else shown
    host, sep, port_text = address.rpartition(":")
    if not sep or not _LISTEN_PORT.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        hint = f" (for example {example!r})" if example is not None else ""
        raise ValueError(f"{name} is not HOST:PORT{hint}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{name}: empty brackets")
    elif ":" in host:
        raise ValueError(f"{name}: write IPv6 hosts as [addr]:port")
    return (host or None), int(port_text)


def load(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    shard: Shard = WHOLE,
    read_files: bool = True,
) -> Config:
    """Read and validate a config file for this process's ``shard``; raise
    :class:`ConfigError` listing every problem. Without ``read_files`` the token files it
    names are not read, only their paths checked, and their tokens are empty: a config to
    check (``--config.check.skip-files``), never to run."""
    text = read_text(path)
    return loads(
        text,
        source=str(path),
        environ=environ,
        base_dir=Path(path).parent,
        shard=shard,
        read_files=read_files,
    )


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_CONFIG_FILE_BYTES) -> str:
    """A configuration file's text, of at most ``limit`` bytes; :class:`ConfigError` (its
    source the path) if it cannot be read (see :func:`read_file`) or is not UTF-8."""
    try:
        return read_file(path, limit=limit).decode("utf-8")
    except UnreadableFile as exc:
        raise ConfigError([f"cannot read file: {exc}"], source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["file is not UTF-8 text"], source=str(path)) from None


def loads(
    text: str,
    *,
    source: str = "config",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    shard: Shard = WHOLE,
    read_files: bool = True,
) -> Config:
    """Validate YAML text; see :func:`load`."""
    try:
        # Name only our own keys: anything else might be a misplaced secret.
        document = parse_yaml(text, shown=lambda key: str(key) if key in _SCHEMA_KEYS else None)
    except YamlError as exc:
        raise ConfigError([str(exc)], source=source) from None
    env = os.environ if environ is None else environ
    validator = _Validator(env, base_dir or Path.cwd(), read_files=read_files)
    return validator.config(document, source, shard)


class _Validator(Checker):
    """Builds the config from its document; each check returns a usable default."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path, *, read_files: bool) -> None:
        super().__init__(shown=_shown_key)
        self.environ = environ
        self.base_dir = base_dir
        self.read_files = read_files
        self.unread: list[str] = []  # keys of the files named that could not be read

    def config(self, document: object, source: str, shard: Shard) -> Config:
        if document is None:
            document = {}
        if not isinstance(document, dict):
            # Nothing below can be checked; the missing api/apps would only be noise.
            raise ConfigError(["(top level): must be a mapping"], source=source)
        root = self.mapping("", document, _ROOT)
        api, token_given = self.api(root.get("api", {}), shard)
        token_problem_at = len(self.problems)
        credentials = self.credentials(root.get("credentials"), shard)
        poll = self.poll(root.get("poll", {}))
        names = (DEFAULT_CREDENTIALS, *(c.name for c in credentials))
        apps = self.apps(root.get("apps"), names)
        # The api section's token is needed by the apps read with it (or, with no app, to
        # say so), known only now; the problem is listed among the api section's.
        if not token_given and (
            not apps or any(app.credentials == DEFAULT_CREDENTIALS for app in apps)
        ):
            self.problems.insert(
                token_problem_at,
                f"api: no API token: set api.token, api.token_file or {TOKEN_ENV}",
            )
        self.one_name_per_token(api, credentials, apps)
        limits = self.limits(root.get("limits", {}), apps)
        webhooks = self.webhooks(root["webhooks"]) if root.get("webhooks") is not None else None
        if self.problems:
            raise ConfigError(self.problems, source=source, unread=self.unread)
        return Config(
            api=api,
            poll=poll,
            apps=apps,
            source=source,
            shard=shard,
            limits=limits,
            webhooks=webhooks,
            credentials=credentials,
        )

    def expand(self, path: str, value: str) -> str | None:
        """``${VAR}`` from the environment, ``$$`` -> ``$``; None (reported) if a VAR is unset."""
        missing: list[str] = []

        def substitute(m: re.Match[str]) -> str:
            name = m.group(1)
            if name is None:
                return "$"
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        expanded = _ENV_REF.sub(substitute, value)
        for name in dict.fromkeys(missing):
            self.fail(path, f"environment variable {name} is not set")
        return None if missing else expanded

    def string(self, path: str, value: object, *, secret: bool = False) -> str | None:
        """The expanded string, or None once a problem has been reported."""
        if isinstance(value, str):
            return self.expand(path, value)
        got = "" if secret else f" (got {type(value).__name__})"
        self.fail(path, f"must be a string{got}; quote it")
        return None

    def checked(
        self, path: str, value: object, parse: Callable[[object], Any], default: Any
    ) -> tuple[Any, bool]:
        """``(parse(value), True)``, or ``(default, False)`` after reporting the problem."""
        if isinstance(value, str):
            expanded = self.expand(path, value)
            if expanded is None:
                return default, False
            value = expanded
        try:
            return parse(value), True
        except ValueError as exc:
            self.fail(path, str(exc))
            return default, False

    def api(self, value: object, shard: Shard) -> tuple[ApiConfig, bool]:
        """The api section, and whether it gives a token (when it does not, the token is
        Secret("") and no problem is reported yet)."""
        raw = self.mapping("api", value, _API)
        base_url = DEFAULT_BASE_URL
        if "base_url" in raw and (url := self.string("api.base_url", raw["base_url"])) is not None:
            base_url = self.base_url(url)
        timeout, _ = self.checked("api.timeout", raw.get("timeout", 10.0), parse_duration, 10.0)
        concurrency = raw.get("max_concurrency", 8)
        if not _whole(concurrency, 1, MAX_CONCURRENCY):
            self.fail("api.max_concurrency", f"must be a whole number from 1 to {MAX_CONCURRENCY}")
            concurrency = 8
        rate = self.rate_limit("api", raw, shard)
        given = self.token("api", raw, env=TOKEN_ENV)
        token, token_file = given or (Secret(""), None)
        api = ApiConfig(
            token=token,
            base_url=base_url,
            token_file=token_file,
            timeout=timeout,
            max_concurrency=concurrency,
            rate_limit=rate,
        )
        return api, given is not None

    def rate_limit(self, where: str, raw: dict[str, Any], shard: Shard) -> RateLimit:
        """The ``rate_limit`` of section ``where``, which every shard must have a share of."""
        path = f"{where}.rate_limit"
        rate: RateLimit
        rate, rate_ok = self.checked(
            path, raw.get("rate_limit", "1000/5m"), parse_rate_limit, _DEFAULT_RATE_LIMIT
        )
        if rate_ok:
            try:
                shard.budget(rate)
            except ValueError:
                self.fail(
                    path,
                    f"{rate} is fewer requests than --total-shards={shard.total}: every "
                    "shard needs one of its own",
                )
        return rate

    def credentials(self, value: object, shard: Shard) -> tuple[Credentials, ...]:
        """The credentials section: each name's token and budget, in file order."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail("credentials", "must be a mapping of names to token and rate_limit")
            return ()
        out: list[Credentials] = []
        for name, item in value.items():
            if name == DEFAULT_CREDENTIALS:
                self.fail(
                    f"credentials.{name}",
                    "is the api section's token: set it there (api.token, api.token_file or "
                    f"{TOKEN_ENV})",
                )
            elif not isinstance(name, str) or not _CREDENTIALS_NAME.fullmatch(name):
                self.fail(
                    join("credentials", _shown_key(name, "a name")),
                    f"a name must be 1 to {MAX_CREDENTIALS_NAME} letters, digits, '_', '-' and '.'",
                )
            else:
                out.append(self.credential(name, item, shard))
        return tuple(out)

    def credential(self, name: str, value: object, shard: Shard) -> Credentials:
        where = f"credentials.{name}"
        if value is not None and not isinstance(value, dict):
            # Never "no token" as well: the value written may be the token itself.
            self.fail(where, "must be a mapping with token or token_file (and rate_limit)")
            return Credentials(name=name, token=Secret(""))
        raw = self.mapping(where, value, _CREDENTIALS)
        rate = self.rate_limit(where, raw, shard)
        given = self.token(where, raw)
        if given is None:  # no environment fallback: that is the api section's
            self.fail(where, f"no API token: set {where}.token or {where}.token_file")
        token, token_file = given or (Secret(""), None)
        return Credentials(name=name, token=token, token_file=token_file, rate_limit=rate)

    def one_name_per_token(
        self, api: ApiConfig, credentials: tuple[Credentials, ...], apps: tuple[AppConfig, ...]
    ) -> None:
        """Credentials the apps use must hold different tokens: each name has a budget of
        its own, and two budgets of one token could together go over the API's limit."""
        used = {app.credentials for app in apps}
        named = [("api", DEFAULT_CREDENTIALS, api.token)]
        named += [(f"credentials.{c.name}", c.name, c.token) for c in credentials]
        first: dict[str, str] = {}
        for where, name, token in named:
            value = token.reveal()
            if name not in used or not value:
                continue
            if value in first:
                self.fail(
                    where,
                    f"holds the same token as {first[value]}: one token has one budget, so "
                    "read their apps with one of them",
                )
            else:
                first[value] = where

    def base_url(self, url: str) -> str:
        # Messages never quote the URL: it may carry a password.
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:  # e.g. an unbalanced IPv6 bracket
            self.fail("api.base_url", "must be an http:// or https:// URL")
            return DEFAULT_BASE_URL
        if parts.scheme not in ("http", "https") or not hostname:
            self.fail("api.base_url", "must be an http:// or https:// URL")
        elif parts.username is not None or parts.password is not None:
            self.fail("api.base_url", "must not carry credentials; use api.token or api.token_file")
        elif parts.query or parts.fragment:
            self.fail("api.base_url", "must not have a query or fragment")
        return url.rstrip("/")

    def token(
        self, where: str, raw: dict[str, Any], *, env: str | None = None
    ) -> tuple[Secret, Path | None] | None:
        """The token section ``where`` gives (``api``, ``credentials.NAME``) and the file it
        is read from: its ``token``, the file its ``token_file`` names, or else environment
        variable ``env``. A stand-in once a problem is reported; None if none is given."""
        if "token" in raw and "token_file" in raw:
            self.fail(where, f"set {where}.token or {where}.token_file, not both")
            return Secret(""), None
        if "token_file" in raw:
            key = f"{where}.token_file"
            named = self.file_path(key, raw["token_file"])
            if named is None:
                return Secret(""), None
            name, path = named
            if not self.read_files:
                return Secret(""), path
            try:
                shown = _shown_path(name, path, key)
                return Secret(read_token_file(path, shown=shown)), path
            except ValueError as exc:
                if isinstance(exc, UnreadableTokenFile):
                    self.unread.append(key)
                self.fail(key, str(exc))
                return Secret(""), path
        if "token" in raw:
            key = f"{where}.token"
            if raw["token"] is None:
                self.fail(key, "is empty")
                return Secret(""), None
            text = self.string(key, raw["token"], secret=True)
            if text is None:
                return Secret(""), None
            text = text.strip()
            if problem := _token_problem(text):
                self.fail(key, problem)
            return Secret(text), None
        env_token = self.environ.get(env, "").strip() if env is not None else ""
        if not env_token:
            return None
        if problem := _token_problem(env_token):
            self.fail(where, f"{env} {problem}")
        return Secret(env_token), None

    def file_path(self, key: str, value: object) -> tuple[str, Path] | None:
        """The file ``key`` names, as written (expanded) and as a path (relative to the
        config file's directory), if it can name one; None once a problem is reported."""
        name = self.string(key, value)
        if name is None:
            return None
        if not name or "\0" in name or name.endswith("/") or Path(name).name in ("", ".", ".."):
            self.fail(key, "must be the path of a file")
            return None
        path = Path(name)
        return name, path if path.is_absolute() else self.base_dir / path

    def poll(self, value: object) -> PollConfig:
        raw = self.mapping("poll", value, _POLL)
        interval, interval_ok = self.checked(
            "poll.interval", raw.get("interval", 30.0), parse_duration, 30.0
        )
        # What the others are compared with: poll.interval as written, or its default (an
        # error then speaks of "the poll interval", a key the user did not write); None
        # when the written one is not valid, so that only valid values are compared.
        least = _Least(interval, written="interval" in raw) if interval_ok else None
        staleness = self.slower(
            "max_staleness", raw, parse_duration, default_max_staleness(interval), least
        )
        full_every = self.slower("full_listing_interval", raw, parse_duration, None, least)
        analytics_every = self.slower(
            "analytics_interval",
            raw,
            parse_analytics_interval,
            max(DEFAULT_ANALYTICS_INTERVAL, interval),
            least,
        )
        return PollConfig(
            interval=interval,
            max_staleness=staleness,
            full_listing_interval=full_every,
            analytics_interval=analytics_every,
        )

    def slower(
        self,
        key: str,
        raw: dict[str, Any],
        parse: Callable[[object], _T],
        default: _T,
        least: _Least | None,
    ) -> _T:
        """``poll.KEY`` parsed, or ``default`` when it is not written (or null); it must be
        at least ``least``, the poll interval."""
        path = f"poll.{key}"
        if raw.get(key) is None:
            return default
        every: _T
        every, ok = self.checked(path, raw[key], parse, default)
        if ok and least is not None and isinstance(every, float) and every < least.seconds:
            self.fail(path, f"{format_duration(every)} is shorter than {least}")
        return every

    def webhooks(self, value: object) -> WebhooksConfig:
        raw = self.mapping("webhooks", value, _WEBHOOKS)
        out = WebhooksConfig()
        if "listen_address" in raw:
            text = self.string("webhooks.listen_address", raw["listen_address"])
            if text is not None:
                try:
                    host, port = parse_listen_address(
                        text, shown=_shown_address(text), example=f":{DEFAULT_WEBHOOK_PORT}"
                    )
                    out = replace(out, host=host, port=port)
                except ValueError as exc:
                    self.fail("webhooks.listen_address", str(exc))
        if "path" in raw and (path := self.string("webhooks.path", raw["path"])) is not None:
            if _WEBHOOK_PATH.fullmatch(path) and not any(
                part in (".", "..") for part in path.split("/")
            ):
                out = replace(out, path=path)
            else:
                self.fail(
                    "webhooks.path",
                    "must start with '/' and use only letters, digits and '-', '_', '.', '~'"
                    " between single slashes",
                )
        if "public_key_url" in raw and "public_key_file" in raw:
            self.fail("webhooks", "set public_key_url or public_key_file, not both")
        elif "public_key_file" in raw:
            named = self.file_path("webhooks.public_key_file", raw["public_key_file"])
            if named is not None:
                out = replace(out, public_key_url=None, public_key_file=named[1])
        elif "public_key_url" in raw:
            url = self.string("webhooks.public_key_url", raw["public_key_url"])
            if url is not None:
                out = replace(out, public_key_url=self.key_url(url))
        return out

    def key_url(self, url: str) -> str:
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:
            hostname, parts = None, None
        if parts is None or parts.scheme not in ("http", "https") or not hostname:
            self.fail("webhooks.public_key_url", "must be an http:// or https:// URL")
        elif parts.username is not None or parts.password is not None:
            self.fail("webhooks.public_key_url", "must not carry credentials")
        return url

    def limits(self, value: object, apps: tuple[AppConfig, ...]) -> Limits:
        raw = self.mapping("limits", value, _LIMITS)
        limit = raw.get("max_livestreams", DEFAULT_MAX_LIVESTREAMS)
        if not _whole(limit, 1, MAX_LIVESTREAMS_LIMIT):
            self.fail(
                "limits.max_livestreams",
                f"must be a whole number from 1 to {MAX_LIVESTREAMS_LIMIT:,}",
            )
            return Limits()
        # Configured streams are always tracked, so the limit must hold them all.
        configured = sum(len(app.livestreams) for app in apps)
        if configured > limit:
            self.fail(
                "limits.max_livestreams",
                f"must be at least the number of configured livestreams ({configured})",
            )
        return Limits(max_livestreams=limit)

    def apps(self, value: object, credentials: tuple[str, ...]) -> tuple[AppConfig, ...]:
        """The apps, each read with one of the ``credentials`` named."""
        if value is None:
            self.fail("apps", "at least one app is required")
            return ()
        if not isinstance(value, list) or not value:
            self.fail("apps", "must be a non-empty list")
            return ()
        apps: list[AppConfig] = []
        seen: set[tuple[str, str]] = set()
        for i, item in enumerate(value):
            app = self.app(f"apps[{i}]", item, credentials)
            if app is None:
                continue
            if app.key in seen:
                self.fail(f"apps[{i}]", "duplicate of an earlier app (same account_id and app_id)")
            seen.add(app.key)
            apps.append(app)
        return tuple(apps)

    def identifier(self, path: str, value: object, *, max_len: int | None = None) -> str | None:
        if value is None:
            self.fail(path, "is required")
            return None
        text = self.string(path, value)
        if text is None:
            return None
        if not _PATH_ID.fullmatch(text):
            self.fail(path, "must be non-empty and use only letters, digits, '-', '_' and '.'")
            return None
        if text in (".", ".."):  # identifiers become URL path segments
            self.fail(path, "must not be '.' or '..'")
            return None
        if max_len is not None and len(text) > max_len:
            self.fail(path, f"must be at most {max_len} characters")
            return None
        return text

    def boolean(self, path: str, value: object) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, "must be true or false")
            return None
        return value

    def app(self, path: str, value: object, credentials: tuple[str, ...]) -> AppConfig | None:
        if not isinstance(value, dict):  # includes a bare "-" (null) list item
            self.fail(path, "must be a mapping")
            return None
        raw = self.mapping(path, value, _APP)
        account = self.identifier(f"{path}.account_id", raw.get("account_id"), max_len=32)
        app_id = self.identifier(f"{path}.app_id", raw.get("app_id"), max_len=32)
        discover = self.boolean(f"{path}.discover", raw.get("discover", False))
        used = self.credentials_name(f"{path}.credentials", raw.get("credentials"), credentials)
        written = raw.get("livestreams")
        streams = self.livestreams(f"{path}.livestreams", written)
        # Judged on what was written, so a bad livestream entry or discover value is not
        # reported a second time as "nothing to poll".
        if discover is False and (written is None or written == []):
            self.fail(path, "lists no livestreams and discover is false: nothing to poll")
        if account is None or app_id is None:
            return None
        return AppConfig(
            account_id=account,
            app_id=app_id,
            discover=bool(discover),
            livestreams=streams,
            credentials=used,
        )

    def credentials_name(self, path: str, value: object, defined: tuple[str, ...]) -> str:
        """The credentials an app is read with: one of those ``defined``; left out or null,
        the api section's."""
        if value is None:
            return DEFAULT_CREDENTIALS
        name = self.string(path, value)
        if name is None:
            return ""
        if name not in defined:
            self.fail(
                path,
                f"no credentials named {_shown_key(name, 'a name')} "
                f"(defined: {', '.join(defined)})",
            )
        return name

    def livestreams(self, path: str, value: object) -> tuple[LivestreamConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return ()
        out: list[LivestreamConfig] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if not isinstance(item, dict):
                self.fail(where, "must be a mapping with an id")
                continue
            raw = self.mapping(where, item, _LIVESTREAM)
            stream_id = self.identifier(
                f"{where}.id", raw.get("id"), max_len=MAX_LIVESTREAM_ID_LENGTH
            )
            expect = None
            if "expect_live" in raw and raw["expect_live"] is not None:
                expect = self.boolean(f"{where}.expect_live", raw["expect_live"])
            if stream_id is None:
                continue
            if stream_id in seen:
                self.fail(f"{where}.id", "duplicate livestream id in this app")
                continue
            seen.add(stream_id)
            out.append(LivestreamConfig(id=stream_id, expect_live=expect))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class _Least:
    """The poll interval, as a problem with a slower key names it."""

    seconds: float
    written: bool  # poll.interval is in the file (else it is the default)

    def __str__(self) -> str:
        if self.written:
            return f"poll.interval ({format_duration(self.seconds)})"
        return f"the poll interval ({format_duration(self.seconds)}, the default)"


def _whole(value: object, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _token_problem(token: str) -> str | None:
    """Why a (stripped) token cannot be used, never quoting it; None if it can."""
    if not token:
        return "is empty"
    if any(ch.isspace() for ch in token):
        return "must be one token with no spaces or line breaks"
    if not token.isprintable():
        return "must not hold control characters (no request could carry it)"
    return None


def _shown_path(name: str, path: Path, key: str) -> str:
    """How an error may name the token file: by its path when ``name`` (as expanded) looks
    like one (a separator or a dot, or short). A long bare word could be the token itself
    put in the wrong key (API tokens are 40 characters of letters, digits, '-' and '_')."""
    if len(name) <= 24 or any(c in name for c in "/\\."):
        return str(path)
    return f"the file named by {key} ({len(name)} characters)"


def _shown_address(text: str) -> str:
    """How an error may name a listen address: quoted when it looks like one (a colon, a
    dot or a bracket) or is short; a long bare word could be the token put in the wrong
    key, as for :func:`_shown_path`."""
    if len(text) <= 24 or any(c in text for c in ":.["):
        return repr(text)
    return f"the address given ({len(text)} characters)"


def _shown_key(key: object, what: str = "unknown key") -> str:
    """A mistyped key (or name) as it may be shown: short and plain, else described as
    ``what``, never quoted.

    A long or odd key could be a secret pasted in the wrong place (API tokens are 40
    characters), and a control character would break the one-line error.
    """
    text = str(key)
    if _SHOWN_KEY.fullmatch(text):
        return text
    return f"<{what} of {len(text)} characters>"
