"""The configuration as records: frozen, checked once when loaded (:mod:`.load`), then
trusted by everything that reads them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

    from exporter.config.secret import Secret

DEFAULT_BASE_URL: Final = "https://api.cloudflare.com/client/v4"
# Twice what one token's default budget polls at a 60 s interval (docs/scaling.md), and
# about 260,000 series (a 43 MB text scrape): beyond that, more likely a runaway listing.
DEFAULT_MAX_LIVESTREAMS: Final = 20_000
# The webhook receiver (webhooks section): where RealtimeKit's public key is served, the
# path deliveries are posted to, and the port it listens on, by default.
DEFAULT_KEY_URL: Final = "https://api.realtime.cloudflare.com/.well-known/webhooks.json"
DEFAULT_WEBHOOK_PATH: Final = "/webhooks/realtimekit"
DEFAULT_WEBHOOK_PORT: Final = 10243
# The credentials of the api section (api.token, api.token_file or the environment).
DEFAULT_CREDENTIALS: Final = "default"
# How often each app's livestream analytics are read, unless poll.analytics_interval says.
DEFAULT_ANALYTICS_INTERVAL: Final = 300.0
# How long values are kept through API failures, unless poll.max_staleness says: this, or
# twice poll.interval when that is longer (default_max_staleness).
DEFAULT_MAX_STALENESS: Final = 300.0


def rate_key(name: str) -> str:
    """The setting of the credentials ``name``'s budget, as messages name it."""
    return "api.rate_limit" if name == DEFAULT_CREDENTIALS else f"credentials.{name}.rate_limit"


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    window: float  # seconds

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
class Credentials:
    """A named API token of the ``credentials`` section: its source and its budget. It
    shares the api section's base_url, timeout and max_concurrency."""

    name: str
    token: Secret
    token_file: Path | None = None
    rate_limit: RateLimit = RateLimit(1000, 300.0)

    def __repr__(self) -> str:
        return f"Credentials(name={self.name!r}, rate_limit={self.rate_limit})"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one process holds, over all its apps (memory is per process)."""

    max_livestreams: int = DEFAULT_MAX_LIVESTREAMS


def default_max_staleness(interval: float) -> float:
    """poll.max_staleness when it is not written: :data:`DEFAULT_MAX_STALENESS`, or twice
    ``interval`` when that is longer, so that one failed poll never drops the values."""
    return max(DEFAULT_MAX_STALENESS, 2 * interval)


@dataclass(frozen=True, slots=True)
class PollConfig:
    interval: float = 30.0
    max_staleness: float = DEFAULT_MAX_STALENESS
    # How often the whole listing is read when the budget cannot afford it every cycle
    # (None: as often as the budget allows; exporter.lanes).
    full_listing_interval: float | None = None
    # How often each app's livestream analytics (app totals) are read; None: never. A
    # loaded config reads them by default (DEFAULT_ANALYTICS_INTERVAL, or poll.interval if
    # longer); a record built in code only if it says so.
    analytics_interval: float | None = None


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
    credentials: str = DEFAULT_CREDENTIALS  # the name of the token it is read with

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
    # Tokens beyond the api section's (which is named DEFAULT_CREDENTIALS).
    credentials: tuple[Credentials, ...] = ()

    def credential_names(self) -> tuple[str, ...]:
        """The names of the credentials the apps are read with, in order of first use."""
        return tuple(dict.fromkeys(app.credentials for app in self.apps))

    def scoped(self, name: str) -> Config:
        """This configuration as the credentials ``name`` see it: ``api`` holds their token
        source and rate limit, ``apps`` only the apps read with them; nothing else
        changes (limits.max_livestreams stays the process's, to be shared out)."""
        api = self.api
        if name != DEFAULT_CREDENTIALS:
            for c in self.credentials:
                if c.name == name:
                    api = replace(
                        api, token=c.token, token_file=c.token_file, rate_limit=c.rate_limit
                    )
                    break
            else:
                raise KeyError(f"no credentials named {name!r}")
        return replace(
            self,
            api=api,
            apps=tuple(a for a in self.apps if a.credentials == name),
            credentials=(),
        )

    def tokens(self) -> tuple[Secret, ...]:
        """Every token the configuration holds (for log redaction)."""
        held = (self.api.token, *(c.token for c in self.credentials))
        return tuple(t for t in held if t.reveal())

    def summary(self) -> str:
        streams = sum(len(a.livestreams) for a in self.apps)
        discovering = sum(1 for a in self.apps if a.discover)
        in_use = len(self.credential_names())
        return (
            f"{len(self.apps)} app(s), {streams} configured livestream(s), "
            f"discovery on {discovering} app(s), poll every {format_duration(self.poll.interval)}, "
            f"budget {self.api.rate_limit}"
            + (
                f", {self.shard} (budget {self.shard.budget(self.api.rate_limit)})"
                if self.shard.sharded
                else ""
            )
            + (f", {in_use} credential(s)" if in_use > 1 else "")
        )


# Duration units, longest first, as Prometheus writes them (a year is 365 days).
DURATION_UNITS: Final = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit of a second or more that divides it, as a duration
    is written."""
    for unit, size in DURATION_UNITS.items():
        if size >= 1 and seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
