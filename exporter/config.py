"""YAML configuration -> frozen :class:`Config`, or one :class:`ConfigError` naming every problem.

Parse at the edge, then trust the types. Validation walks the whole document and collects
each problem with its key path (``apps[0].livestreams[1].id: ...``); unknown keys are
problems too. Error text never quotes a value that could be a secret.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

try:  # libyaml's parser: the same events as PyYAML's, for loads about 3 times as fast
    from yaml._yaml import CParser as _Events
except ImportError:  # pragma: no cover (a PyYAML built without libyaml)
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Events(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DEFAULT_BASE_URL: Final = "https://api.cloudflare.com/client/v4"
TOKEN_ENV: Final = "CLOUDFLARE_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
API_RATE_LIMIT: Final = (1200, 300.0)  # what Cloudflare allows per token
# Twice what one token's default budget polls at a 60 s interval (docs/scaling.md), and
# about 260,000 series (a 43 MB text scrape): beyond that, more likely a runaway listing.
DEFAULT_MAX_LIVESTREAMS: Final = 20_000
# decode.MAX_LABEL_LENGTH: a longer configured id could never match a listed one, and would
# be exported uncut as an unlisted stream's label.
MAX_LIVESTREAM_ID_LENGTH: Final = 256
# Upper bounds on the numbers a config gives, far beyond any use: each is turned into a
# float somewhere (a gauge, a rate), and a number of 400 digits passed validation only to
# fail every scrape with OverflowError.
MAX_LIVESTREAMS_LIMIT: Final = 1_000_000
MAX_RATE_LIMIT_REQUESTS: Final = 1_000_000_000
MAX_CONCURRENCY: Final = 1000

# The most read_file reads of a config file and a token file. Parse time follows the
# number of nodes, not bytes, so MAX_YAML_NODES is what bounds it; the byte bound leaves
# room for DEFAULT_MAX_LIVESTREAMS livestreams with ids of MAX_LIVESTREAM_ID_LENGTH and
# expect_live (5.9 MB). Measured by bench/config_limits.py with libyaml: 20,000 livestreams
# load in 1.1-1.4 s, MAX_YAML_NODES in 1.4-1.8 s, one 8 MiB scalar in 0.07 s; PyYAML on
# its own takes about 3 times as long.
MAX_CONFIG_FILE_BYTES: Final = 8 * 1024 * 1024
MAX_TOKEN_FILE_BYTES: Final = 4096  # API tokens are 40 characters
# Bounds on the YAML document, far beyond any real configuration, checked while it is
# composed: PyYAML's recursive composer overflows Python's stack at about 500 levels (this
# configuration has 5), Python refuses to convert integers of over 4300 digits, and aliases
# let a small file stand for a document the validators would walk in full.
MAX_YAML_DEPTH: Final = 64
# Aliases counted as copies of what they refer to; 20,000 livestreams with expect_live
# are 100,000 nodes.
MAX_YAML_NODES: Final = 125_000
# Far below Python's limit, yet long enough that a number too large for its setting is
# still reported against its key by the validators.
MAX_YAML_INT_LENGTH: Final = 1000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SHOWN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,23}")
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_ID = re.compile(r"[A-Za-z0-9_.\-]+")  # used with fullmatch: no trailing newline


# Problems named in an error's one line; the rest are counted (20,000 bad livestream ids
# would make a line of a megabyte).
MAX_SHOWN_PROBLEMS: Final = 20
# The webhook receiver (webhooks section): where RealtimeKit's public key is served, the
# path deliveries are posted to, and the port it listens on, by default.
DEFAULT_KEY_URL: Final = "https://api.realtime.cloudflare.com/.well-known/webhooks.json"
DEFAULT_WEBHOOK_PATH: Final = "/webhooks/realtimekit"
DEFAULT_WEBHOOK_PORT: Final = 10243
MAX_KEY_FILE_BYTES: Final = 64 * 1024
_LISTEN_PORT = re.compile(r"[0-9]{1,5}")
_WEBHOOK_PATH = re.compile(r"(/[A-Za-z0-9._~\-]+)+")  # fullmatch: plain segments, no dot ones


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists each one with its key path
    (the message names the first :data:`MAX_SHOWN_PROBLEMS` and counts the others)."""

    def __init__(self, problems: list[str], *, source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        shown = "; ".join(self.problems[:MAX_SHOWN_PROBLEMS])
        if count > MAX_SHOWN_PROBLEMS:
            shown += f"; and {count - MAX_SHOWN_PROBLEMS} more"
        super().__init__(f"{source}: {count} {noun}: {shown}")


class Secret:
    """A string that never shows itself in ``repr``/``str``; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    window: float  # seconds

    @property
    def per_second(self) -> float:
        return self.requests / self.window

    def __str__(self) -> str:
        return f"{self.requests}/{format_duration(self.window)}"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    token: Secret
    base_url: str = DEFAULT_BASE_URL
    token_file: Path | None = None
    timeout: float = 10.0
    max_concurrency: int = 8
    rate_limit: RateLimit = RateLimit(1000, 300.0)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one process holds, over all its apps (memory is per process)."""

    max_livestreams: int = DEFAULT_MAX_LIVESTREAMS


@dataclass(frozen=True, slots=True)
class PollConfig:
    interval: float = 30.0
    max_staleness: float = 300.0
    # How often the whole listing is read when the budget cannot afford it every cycle
    # (None: as often as the budget allows; exporter.lanes).
    full_listing_interval: float | None = None


@dataclass(frozen=True, slots=True)
class LivestreamConfig:
    id: str
    expect_live: bool | None = None


@dataclass(frozen=True, slots=True)
class AppConfig:
    account_id: str
    app_id: str
    discover: bool = False
    livestreams: tuple[LivestreamConfig, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.app_id)

    def expectations(self) -> dict[str, bool | None]:
        """``expect_live`` by configured livestream id (``None`` where it is not set)."""
        return {ls.id: ls.expect_live for ls in self.livestreams}


@dataclass(frozen=True, slots=True)
class Shard:
    """This process's part of the livestreams (``--shard``, ``--total-shards``).

    A livestream belongs to the shard its id hashes to (SHA-256, so every process and
    every Python version agrees), whatever else the listing holds: a stream never moves
    between shards while the shard count stays the same."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if self.total < 1 or not 0 <= self.index < self.total:
            raise ValueError(f"shard {self.index} of {self.total} does not exist")

    @property
    def sharded(self) -> bool:
        return self.total > 1

    def owns(self, livestream_id: str) -> bool:
        if self.total == 1:
            return True
        digest = hashlib.sha256(livestream_id.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.total == self.index

    def budget(self, rate: RateLimit) -> RateLimit:
        """This shard's share of the token's budget; the shares never add up to more than
        ``rate``, so there must be no more shards than requests in it."""
        if self.total > rate.requests:
            raise ValueError(f"{self.total} shards cannot share {rate}")
        return RateLimit(rate.requests // self.total, rate.window)

    def __str__(self) -> str:
        return f"shard {self.index} of {self.total}"


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """The webhook receiver: its own listener (``host`` None: every interface), the path
    deliveries are posted to, and where RealtimeKit's public key comes from (a URL, or a
    PEM file instead)."""

    host: str | None = None
    port: int = DEFAULT_WEBHOOK_PORT
    path: str = DEFAULT_WEBHOOK_PATH
    public_key_url: str | None = DEFAULT_KEY_URL
    public_key_file: Path | None = None

    @property
    def listen_address(self) -> str:
        host = self.host or ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig
    poll: PollConfig = field(default_factory=PollConfig)
    apps: tuple[AppConfig, ...] = ()
    source: str = "config"
    shard: Shard = Shard()
    limits: Limits = Limits()
    webhooks: WebhooksConfig | None = None  # None: no receiver

    def summary(self) -> str:
        streams = sum(len(a.livestreams) for a in self.apps)
        discovering = sum(1 for a in self.apps if a.discover)
        return (
            f"{len(self.apps)} app(s), {streams} configured livestream(s), "
            f"discovery on {discovering} app(s), poll every {format_duration(self.poll.interval)}, "
            f"budget {self.api.rate_limit}"
            + (
                f", {self.shard} (budget {self.shard.budget(self.api.rate_limit)})"
                if self.shard.sharded
                else ""
            )
        )


def parse_duration(value: object) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 1h")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        else:
            seconds = math.nan
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    if not math.isfinite(seconds):  # also rejects YAML's .nan and .inf
        raise ValueError("must be a duration such as 30s, 5m or 1h")
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


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


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem."""
    text = read_text(path)
    return loads(text, source=str(path), environ=environ, base_dir=Path(path).parent)


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_CONFIG_FILE_BYTES) -> str:
    """A configuration file's text, of at most ``limit`` bytes; :class:`ConfigError` (its
    source the path) if it cannot be read (see :func:`read_file`) or is not UTF-8."""
    try:
        return read_file(path, limit=limit).decode("utf-8")
    except UnreadableFile as exc:
        raise ConfigError([f"cannot read file: {exc}"], source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["file is not UTF-8 text"], source=str(path)) from None


class UnreadableFile(Exception):
    """A file :func:`read_file` refuses; the message says why, and never quotes the file."""


def read_file(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, if it holds at most ``limit`` of them;
    :class:`UnreadableFile` otherwise.

    Whatever is at ``path``, this neither blocks nor reads more than ``limit + 1`` bytes: a
    FIFO, a device (``/dev/zero``), a directory or a socket is refused before a byte is
    read. It is looked at (``stat``) before it is opened, since opening some devices does
    something (a tape rewinds), opened non-blocking (a FIFO without a writer would wait
    for one), and judged again by the open descriptor (``fstat``), so that a file swapped
    in between is judged too. The size is checked before reading, and again while reading
    for a file that grows meanwhile.
    """
    try:
        if (refused := _not_small_and_regular(os.stat(path), limit)) is not None:
            raise UnreadableFile(refused)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or type(exc).__name__) from None
    try:
        if (refused := _not_small_and_regular(os.fstat(fd), limit)) is not None:
            raise UnreadableFile(refused)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        if left == 0:  # it grew after fstat, or its size says less than it holds (/proc)
            raise UnreadableFile(f"it held more than the limit of {_bytes(limit)} when read")
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_small_and_regular(st: os.stat_result, limit: int) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((f"{name}, " for test, name in _FILE_KINDS if test(st.st_mode)), "")
        return f"it is {kind}not a regular file"
    if st.st_size > limit:
        return f"it is over the limit of {_bytes(limit)} ({st.st_size} bytes)"
    return None


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


def loads(
    text: str,
    *,
    source: str = "config",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate YAML text; see :func:`load`."""
    try:
        # Name only our own keys: anything else might be a misplaced secret.
        document = parse_yaml(text, shown=lambda key: str(key) if key in _SCHEMA_KEYS else None)
    except YamlError as exc:
        raise ConfigError([str(exc)], source=source) from None
    env = os.environ if environ is None else environ
    return _Validator(env, base_dir or Path.cwd()).config(document, source)


_SCHEMA_KEYS: Final = frozenset(
    {"api", "poll", "apps", "base_url", "token", "token_file", "timeout", "max_concurrency"}
    | {"rate_limit", "interval", "max_staleness", "account_id", "app_id", "discover"}
    | {"livestreams", "id", "expect_live", "limits", "max_livestreams"}
    | {"full_listing_interval", "webhooks", "listen_address", "path", "public_key_url"}
    | {"public_key_file"}
)


class YamlError(Exception):
    """YAML that cannot be read, that repeats a key in one mapping, or that is out of
    bounds (MAX_YAML_DEPTH, MAX_YAML_NODES, MAX_YAML_INT_LENGTH); the message quotes
    nothing of the text but a position, and keys its reader chose to show."""


def parse_yaml(text: str, *, shown: Callable[[object], str | None]) -> object:
    """The document in ``text`` (safe types only). A key repeated in one mapping is an error
    rather than the last one winning; ``shown(key)`` says how such a key may be named (None:
    not at all). A document out of bounds is an error too, before it is built."""
    loader = _Loader(text, shown)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        # Only the position: PyYAML's own message can quote part of the offending line.
        mark = getattr(exc, "problem_mark", None)
        raise YamlError(f"not valid YAML{_at(mark)}") from None
    # Backstops: the bounds of _Loader should leave neither.
    except RecursionError:
        raise YamlError("not valid YAML: nested too deeply") from None
    except ValueError:
        raise YamlError("not valid YAML: a value that cannot be read") from None
    finally:
        loader.dispose()


class _Mark(Protocol):  # PyYAML's, or libyaml's
    line: int
    column: int


def _at(mark: _Mark | None) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


_INT_TAG: Final = "tag:yaml.org,2002:int"


class _Loader(Composer, _Events, SafeConstructor, Resolver):
    """PyYAML's safe loader (its composer, in Python, on top of libyaml's events where
    available), which measures the document while composing it: depth, and size with
    every alias counted as a copy of the node it refers to. A document out of bounds is
    refused at the event that crosses them, so that neither PyYAML's recursive composer
    and constructor nor the validators ever see it."""

    def __init__(self, text: str, shown: Callable[[object], str | None]) -> None:
        _Events.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._shown = shown
        self._open: list[list[int]] = []  # per node being composed: its height and size so far
        self._anchored: dict[yaml.Node, tuple[int, int]] = {}  # height and size, once complete
        self._nodes = 0  # composed so far, aliases counted in full

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if event is None:  # pragma: no cover (the composer asks only when one is due)
            return super().compose_node(parent, index)
        mark: _Mark | None = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the node the alias names
            if node is None or (shape := self._anchored.get(node)) is None:
                # Its anchor is still open: a node that contains itself.
                raise YamlError(f"an alias inside the value it refers to{_at(mark)}")
            height, size = shape
            if len(self._open) + height > MAX_YAML_DEPTH:
                raise YamlError(f"nested deeper than {MAX_YAML_DEPTH} levels{_at(mark)}")
        else:
            if len(self._open) >= MAX_YAML_DEPTH:
                raise YamlError(f"nested deeper than {MAX_YAML_DEPTH} levels{_at(mark)}")
            self._count(1, mark)
            self._open.append([0, 0])
            node = super().compose_node(parent, index)
            below_height, below_size = self._open.pop()
            height, size = below_height + 1, below_size + 1
            if node is not None and getattr(event, "anchor", None) is not None:
                self._anchored[node] = (height, size)
        if self._open:
            above = self._open[-1]
            above[0] = max(above[0], height)
            above[1] += size
        if isinstance(event, yaml.AliasEvent):
            self._count(size, mark)
        return node

    def _count(self, nodes: int, mark: _Mark | None) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise YamlError(
                f"more than {MAX_YAML_NODES} values (an alias counting as a copy of what it "
                f"refers to){_at(mark)}"
            )

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # Checked before int(), whose time grows with the square of the length.
        if node.tag == _INT_TAG and len(node.value) > MAX_YAML_INT_LENGTH:
            raise YamlError(
                f"an integer longer than {MAX_YAML_INT_LENGTH} characters{_at(node.start_mark)}"
            )
        try:
            return super().construct_object(node, deep=deep)
        except ValueError:  # a scalar Python cannot take, such as the date 2001-13-45
            raise YamlError(f"a value that cannot be read{_at(node.start_mark)}") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) may be overridden; only plain scalar keys are checked.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                name = self._shown(key)
                raise YamlError(
                    f"duplicate key{'' if name is None else ' ' + name}{_at(key_node.start_mark)}"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Validator:
    """Collects problems while building the config; each check returns a usable default."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def config(self, document: object, source: str) -> Config:
        if document is None:
            document = {}
        if not isinstance(document, dict):
            # Nothing below can be checked; the missing api/apps would only be noise.
            raise ConfigError(["(top level): must be a mapping"], source=source)
        root = self.mapping("", document, {"api", "poll", "apps", "limits", "webhooks"})
        api = self.api(root.get("api", {}))
        poll = self.poll(root.get("poll", {}))
        apps = self.apps(root.get("apps"))
        limits = self.limits(root.get("limits", {}), apps)
        webhooks = self.webhooks(root["webhooks"]) if root.get("webhooks") is not None else None
        if self.problems:
            raise ConfigError(self.problems, source=source)
        return Config(
            api=api, poll=poll, apps=apps, source=source, limits=limits, webhooks=webhooks
        )

    def mapping(self, path: str, value: object, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path or "(top level)", "must be a mapping")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key not in allowed:
                self.fail(
                    _join(path, _shown_key(key)),
                    f"unknown key (allowed: {', '.join(sorted(allowed))})",
                )
            else:
                out[key] = item
        return out

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

    def api(self, value: object) -> ApiConfig:
        raw = self.mapping(
            "api",
            value,
            {"base_url", "token", "token_file", "timeout", "max_concurrency", "rate_limit"},
        )
        base_url = DEFAULT_BASE_URL
        if "base_url" in raw and (url := self.string("api.base_url", raw["base_url"])) is not None:
            base_url = self.base_url(url)
        timeout, _ = self.checked("api.timeout", raw.get("timeout", 10.0), parse_duration, 10.0)
        concurrency = raw.get("max_concurrency", 8)
        if not _whole(concurrency, 1, MAX_CONCURRENCY):
            self.fail("api.max_concurrency", f"must be a whole number from 1 to {MAX_CONCURRENCY}")
            concurrency = 8
        rate, _ = self.checked(
            "api.rate_limit",
            raw.get("rate_limit", "1000/5m"),
            parse_rate_limit,
            RateLimit(1000, 300.0),
        )
        token, token_file = self.token(raw)
        return ApiConfig(
            token=token,
            base_url=base_url,
            token_file=token_file,
            timeout=timeout,
            max_concurrency=concurrency,
            rate_limit=rate,
        )

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

    def token(self, raw: dict[str, Any]) -> tuple[Secret, Path | None]:
        if "token" in raw and "token_file" in raw:
            self.fail("api", "set api.token or api.token_file, not both")
            return Secret(""), None
        if "token_file" in raw:
            name = self.string("api.token_file", raw["token_file"])
            if name is None:
                return Secret(""), None
            path = Path(name)
            if not path.is_absolute():
                path = self.base_dir / path
            try:
                shown = _shown_path(name, path)
                return Secret(read_token_file(path, shown=shown)), path
            except ValueError as exc:
                self.fail("api.token_file", str(exc))
                return Secret(""), path
        if "token" in raw:
            if raw["token"] is None:
                self.fail("api.token", "is empty")
                return Secret(""), None
            text = self.string("api.token", raw["token"], secret=True)
            if text is None:
                return Secret(""), None
            text = text.strip()
            if problem := _token_problem(text):
                self.fail("api.token", problem)
            return Secret(text), None
        env_token = self.environ.get(TOKEN_ENV, "").strip()
        if not env_token:
            self.fail("api", f"no API token: set api.token, api.token_file or {TOKEN_ENV}")
        elif problem := _token_problem(env_token):
            self.fail("api", f"{TOKEN_ENV} {problem}")
        return Secret(env_token), None

    def poll(self, value: object) -> PollConfig:
        raw = self.mapping("poll", value, {"interval", "max_staleness", "full_listing_interval"})
        interval, interval_ok = self.checked(
            "poll.interval", raw.get("interval", 30.0), parse_duration, 30.0
        )
        staleness, staleness_ok = self.checked(
            "poll.max_staleness", raw.get("max_staleness", 300.0), parse_duration, 300.0
        )
        # Compare only values the user actually gave validly, never a stand-in default.
        if interval_ok and staleness_ok and staleness < interval:
            self.fail("poll.max_staleness", "must be at least poll.interval")
        full_every: float | None = None
        if raw.get("full_listing_interval") is not None:
            full_every, full_ok = self.checked(
                "poll.full_listing_interval",
                raw["full_listing_interval"],
                parse_duration,
                None,
            )
            if full_ok and interval_ok and full_every is not None and full_every < interval:
                self.fail("poll.full_listing_interval", "must be at least poll.interval")
        return PollConfig(
            interval=interval, max_staleness=staleness, full_listing_interval=full_every
        )

    def webhooks(self, value: object) -> WebhooksConfig:
        raw = self.mapping(
            "webhooks", value, {"listen_address", "path", "public_key_url", "public_key_file"}
        )
        out = WebhooksConfig()
        if "listen_address" in raw:
            text = self.string("webhooks.listen_address", raw["listen_address"])
            if text is not None:
                try:
                    host, port = parse_listen_address(text)
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
            name = self.string("webhooks.public_key_file", raw["public_key_file"])
            if name is not None:
                key_file = Path(name)
                if not key_file.is_absolute():
                    key_file = self.base_dir / key_file
                out = replace(out, public_key_url=None, public_key_file=key_file)
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
        raw = self.mapping("limits", value, {"max_livestreams"})
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

    def apps(self, value: object) -> tuple[AppConfig, ...]:
        if value is None:
            self.fail("apps", "at least one app is required")
            return ()
        if not isinstance(value, list) or not value:
            self.fail("apps", "must be a non-empty list")
            return ()
        apps: list[AppConfig] = []
        seen: set[tuple[str, str]] = set()
        for i, item in enumerate(value):
            app = self.app(f"apps[{i}]", item)
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

    def app(self, path: str, value: object) -> AppConfig | None:
        if not isinstance(value, dict):  # includes a bare "-" (null) list item
            self.fail(path, "must be a mapping")
            return None
        raw = self.mapping(path, value, {"account_id", "app_id", "discover", "livestreams"})
        account = self.identifier(f"{path}.account_id", raw.get("account_id"), max_len=32)
        app_id = self.identifier(f"{path}.app_id", raw.get("app_id"), max_len=32)
        discover = self.boolean(f"{path}.discover", raw.get("discover", False))
        written = raw.get("livestreams")
        streams = self.livestreams(f"{path}.livestreams", written)
        # Judged on what was written, so a bad livestream entry or discover value is not
        # reported a second time as "nothing to poll".
        if discover is False and (written is None or written == []):
            self.fail(path, "lists no livestreams and discover is false: nothing to poll")
        if account is None or app_id is None:
            return None
        return AppConfig(
            account_id=account, app_id=app_id, discover=bool(discover), livestreams=streams
        )

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
            raw = self.mapping(where, item, {"id", "expect_live"})
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


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (every interface) -> (host, port); raises
    ValueError saying what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not _LISTEN_PORT.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (for example ':10243')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{address!r}: empty brackets")
    elif ":" in host:
        raise ValueError(f"{address!r}: write IPv6 hosts as [addr]:port")
    return (host or None), int(port_text)


def _whole(value: object, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _token_problem(token: str) -> str | None:
    """Why a (stripped) token cannot be used, never quoting it; None if it can."""
    if not token:
        return "is empty"
    if any(ch.isspace() for ch in token):
        return "must be one token with no spaces or line breaks"
    return None


def read_token_file(path: Path, *, shown: str | None = None) -> str:
    """The token in ``path``, stripped; ``ValueError`` otherwise.

    Errors name the file as ``shown`` (default: the path) and never quote the content.
    """
    name = str(path) if shown is None else shown
    try:
        text = read_file(path, limit=MAX_TOKEN_FILE_BYTES).decode("utf-8").strip()
    except UnreadableFile as exc:
        raise ValueError(f"cannot read {name}: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{name} is empty")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"{name} must hold one token with no spaces or line breaks")
    return text


def _shown_path(name: str, path: Path) -> str:
    """How an error may name the token file: by its path when ``name`` (as expanded) looks
    like one (a separator or a dot, or short). A long bare word could be the token itself
    put in the wrong key (API tokens are 40 characters of letters, digits, '-' and '_')."""
    if len(name) <= 24 or any(c in name for c in "/\\."):
        return str(path)
    return f"the file named by api.token_file ({len(name)} characters)"


def _shown_key(key: object) -> str:
    """A mistyped key as it may be shown: short and plain, else described, never quoted.

    A long or odd key could be a secret pasted in the wrong place (API tokens are 40
    characters), and a control character would break the one-line error.
    """
    text = str(key)
    if _SHOWN_KEY.fullmatch(text):
        return text
    return f"<unknown key of {len(text)} characters>"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
