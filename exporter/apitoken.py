"""One API token's resources: where the token comes from, the budget the API counts
against it, and the client that spends it.

An :class:`ApiToken` is made once from the configuration and lives as long as the
process: the poller and the webhook refresher send their requests through its
:attr:`~ApiToken.client`, and a reload :meth:`~ApiToken.reconfigure`\\ s it. Its budget is
resized, never replaced, so the grants of the current window keep counting; the client is
rebuilt only when its settings change. Sharding is applied here, once: each of N
processes sharing the token keeps to 1/N of the budget and of the limit the API states.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import TYPE_CHECKING, Final

from exporter import lanes
from exporter.budget import RequestBudget
from exporter.client import MIN_REQUEST_TIME, RealtimeKitClient
from exporter.config import format_duration, rate_key
from exporter.tokenfile import CHECK_THREADS, TokenFile
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

    from exporter.client import RequestObserver
    from exporter.config import Config, RateLimit

API_RATE_LIMIT: Final = (1200, 300.0)  # what Cloudflare allows per token
# Seconds each budget window is held longer than it is: a request reaches the API up to
# a latency later than it was granted, and the API counts arrivals.
BUDGET_SLACK: Final = 2.0


class ApiToken:
    """The token of ``config.api``: its source (inline, environment, or a file that may
    rotate), its budget and its client. ``kept_share`` of each budget window is kept for
    requests of a negative priority (a webhook's stop lookups). ``on_token`` is told each
    token read from the file after ``config``'s, before it is used (for log redaction).
    ``clock``, ``sleep``, ``jitter``, ``retries`` and ``slack`` are for tests."""

    def __init__(
        self,
        config: Config,
        *,
        session: aiohttp.ClientSession,
        observer: RequestObserver | None = None,
        kept_share: float = 0.0,
        on_token: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        retries: int = 2,
        slack: float = BUDGET_SLACK,
        budget: RequestBudget | None = None,
    ) -> None:
        """``budget``: the budget of a token this one takes over (the same credentials
        removed by a reload and added again), resized to ``config``: the grants of its
        window still count."""
        self._session = session
        self._observer = observer
        self._on_token = on_token
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._retries = retries
        rate = config.shard.budget(config.api.rate_limit)
        if budget is None:
            budget = RequestBudget(
                requests=rate.requests, window=rate.window, clock=clock, sleep=sleep, slack=slack
            )
        else:
            budget.resize(requests=rate.requests, window=rate.window)
        self.budget = budget
        self.budget.keep_share(kept_share)
        self._settings = _client_settings(config)
        self.client = self._new_client(config)
        # Threads of its own for the token file's checks: a file system that hangs under
        # one token's file holds up no other token's rotation.
        self._checks = DaemonExecutor(CHECK_THREADS, name="token-file")
        self._file = _token_file(config, self._checks)

    def __repr__(self) -> str:
        return f"ApiToken(budget={self.budget.requests}/{self.budget.window:g}s)"

    def in_force(self) -> tuple[int, float]:
        """Requests per window the budget grants: api.rate_limit or the API's
        Ratelimit-Policy, whichever is less, this shard's share."""
        return self.budget.requests, self.budget.window

    def planned(self) -> tuple[int, float]:
        """What polling plans with: the budget in force less the share kept."""
        return self.budget.planned, self.budget.window

    def room(self) -> int:
        """Requests the budget would grant at once beyond the share kept."""
        return self.budget.available() - self.budget.kept(self.budget.requests)

    def reconfigure(self, config: Config) -> bool:
        """Use ``config`` (a reload's) from now on; True if the client was rebuilt (a new
        base URL, timeout, concurrency or shard count), which drops what the old one had
        learnt of the API."""
        self.resize(config)
        settings = _client_settings(config)
        rebuilt = settings != self._settings
        if rebuilt:
            self._settings = settings
            self.client = self._new_client(config)
        else:
            # Always: the client may hold a token the old token file rotated to since,
            # which the new config (a rolled-back file, or a token in the file) replaces.
            self.client.set_token(config.api.token)
        self._file = _token_file(config, self._checks)
        return rebuilt

    def resize(self, config: Config) -> None:
        """Keep to ``config``'s api.rate_limit (this shard's share) from now on: a request
        waiting for the budget is granted, or held back, by it at once."""
        rate = config.shard.budget(config.api.rate_limit)
        self.budget.resize(requests=rate.requests, window=rate.window)

    async def rotate(self) -> None:
        """Take up the token file's new token, if it changed (off the event loop, and
        bounded in time: see :meth:`TokenFile.poll`)."""
        if self._file is not None and (token := await self._file.poll()) is not None:
            if self._on_token is not None:
                self._on_token(token.reveal())
            self.client.set_token(token)

    def close(self) -> None:
        """Start no more token file checks (one that hangs is left to its daemon thread)."""
        self._checks.shutdown(wait=False, cancel_futures=True)

    def _new_client(self, config: Config) -> RealtimeKitClient:
        api = config.api
        return RealtimeKitClient(
            session=self._session,
            base_url=api.base_url,
            token=api.token,
            budget=self.budget,
            timeout=api.timeout,
            max_concurrency=api.max_concurrency,
            retries=self._retries,
            observer=self._observer,
            clock=self._clock,
            sleep=self._sleep,
            jitter=self._jitter,
            min_request_time=_min_request_time(config),
            budget_share=config.shard.total,
        )


def config_warnings(config: Config) -> list[str]:
    """What may go wrong with ``config`` though it is valid, as start-up logs it and
    ``--config.check`` prints it: each credentials' budget (:func:`budget_warnings`,
    naming its own rate_limit), and credentials no app uses."""
    used = config.credential_names()
    warnings = [
        warning
        for name in used
        for warning in budget_warnings(config.scoped(name), rate_key=rate_key(name))
    ]
    warnings += [
        f"credentials {c.name} are not used by any app (apps choose them with credentials: "
        f"{c.name})"
        for c in config.credentials
        if c.name not in used
    ]
    return warnings


def budget_warnings(config: Config, *, rate_key: str = "api.rate_limit") -> list[str]:
    """Warnings when the budget may go over the API's limit, or when the polling that can
    be known before the first cycle needs more than the budget; ``rate_key`` is the
    setting of the budget, as the warnings name it. Each says what to change.

    What a cycle spends follows how many streams are live, which only the first listing
    tells: the poller plans every cycle on what it finds, and warns then with the real
    figure. Known at start-up, and warned of here: every app is listed each cycle (one
    request at least), and each configured stream marked ``expect_live: true`` will want
    its session read each cycle too (one request more, when it is live). Configured
    streams without it are not counted: most are not live at any one time.
    """
    warnings = []
    rate = config.api.rate_limit
    api_requests, api_window = API_RATE_LIMIT
    windows = _api_windows(rate.window)
    if rate.requests * windows > api_requests:
        warnings.append(
            f"{rate_key} {rate} is above the API's own limit of {api_requests} requests "
            f"per {format_duration(api_window)} per token; going over blocks the token for "
            f"5 minutes: lower it to {api_requests // windows}/{format_duration(rate.window)} "
            "or less, leaving room for anything else that uses the token"
        )
    share = config.shard.budget(rate)
    listings = len(config.apps)
    expected = sum(
        1
        for app in config.apps
        for ls in app.livestreams
        if ls.expect_live and config.shard.owns(ls.id)
    )
    if _per_window(listings, share, config) > share.requests:
        warnings.append(
            f"listing {'the app' if listings == 1 else f'{listings} apps'} every cycle needs "
            f"at least {_count(listings, 'request')} a cycle, "
            f"{_over(listings, share, config, rate_key)}: every cycle will wait for the "
            "budget and take longer than poll.interval; " + _fix(listings, share, config, rate_key)
        )
    elif expected and _per_window(listings + expected, share, config) > share.requests:
        need = listings + expected
        warnings.append(
            f"{_count(expected, 'configured livestream')} "
            f"{'is' if expected == 1 else 'are'} expected live (expect_live: true): "
            f"reading their sessions every cycle needs about {need} requests a cycle with "
            f"the listings, {_over(need, share, config, rate_key)}; while they are live, "
            "their session values will be read in turn, less often than poll.interval "
            f"(docs/scaling.md). To read them every cycle, {_fix(need, share, config, rate_key)}"
        )
    return warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _per_window(per_cycle: int, share: RateLimit, config: Config) -> int:
    return lanes.per_window(per_cycle, share.window, config.poll.interval)


def _api_windows(window: float) -> int:
    """Windows of ``window`` seconds that one of the API's windows can see starting: the
    most a budget lets through in one API window is its requests times this (a whole
    budget at once when its window is at least as long)."""
    return max(1, math.ceil(API_RATE_LIMIT[1] / window))


def _over(per_cycle: int, share: RateLimit, config: Config, rate_key: str) -> str:
    """How many requests ``per_cycle`` makes per window, against what the budget allows
    (this shard's share of it)."""
    shards = config.shard.total
    window = format_duration(share.window)
    return (
        f"{_per_window(per_cycle, share, config)} per {window} at a poll.interval of "
        f"{format_duration(config.poll.interval)}, but {rate_key} {config.api.rate_limit} "
        f"allows {share.requests}" + (f" to each of its {shards} shards" if shards > 1 else "")
    )


def _fix(per_cycle: int, share: RateLimit, config: Config, rate_key: str) -> str:
    """What to change so that ``per_cycle`` requests fit every cycle: a longer poll
    interval, or a larger budget if the API allows one token that much."""
    rate = config.api.rate_limit
    kept = 1.0 - lanes.MARGIN  # of the budget the poller plans with
    seconds = per_cycle * rate.window / (share.requests * kept)
    least = math.ceil(seconds) if seconds < 120 else 60 * math.ceil(seconds / 60)
    fix = f"raise poll.interval to at least {format_duration(least)}"
    needed = config.shard.total * math.ceil(per_cycle * rate.window / (config.poll.interval * kept))
    if needed * _api_windows(rate.window) <= API_RATE_LIMIT[0]:
        return f"{fix} or {rate_key} to {needed}/{format_duration(rate.window)}"
    return f"{fix}, or read some apps with another token (credentials; docs/scaling.md)"


def _min_request_time(config: Config) -> float:
    # Short intervals (tests, demos) still leave most of the cycle for requests.
    return min(MIN_REQUEST_TIME, config.poll.interval / 4)


def _client_settings(config: Config) -> tuple[object, ...]:
    """What a :class:`RealtimeKitClient` is built with, apart from the token and budget."""
    api = config.api
    return (
        api.base_url,
        api.timeout,
        api.max_concurrency,
        _min_request_time(config),
        config.shard.total,
    )


def _token_file(config: Config, executor: DaemonExecutor) -> TokenFile | None:
    if config.api.token_file is None:
        return None
    return TokenFile(config.api.token_file, config.api.token, executor=executor)
