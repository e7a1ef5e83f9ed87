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

from exporter.budget import RequestBudget
from exporter.client import MIN_REQUEST_TIME, RealtimeKitClient
from exporter.tokenfile import CHECK_THREADS, TokenFile
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

    from exporter.client import RequestObserver
    from exporter.config import Config

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


def budget_warnings(config: Config, *, rate_key: str = "api.rate_limit") -> list[str]:
    """Warnings when the budget, or the configured polling, may go over a limit;
    ``rate_key`` is the setting of the budget, as the warnings name it.

    Polling is estimated per cycle and app as one listing page plus one session request
    per configured stream (each may be LIVE); discovered streams are unknown at start-up,
    and the poller plans every real cycle against the budget as it runs.
    """
    warnings = []
    rate = config.api.rate_limit
    api_requests, api_window = API_RATE_LIMIT
    # The most the budget lets through in any one API window: a whole budget at once when
    # its window is at least as long, else one budget per started window of ours.
    burst = rate.requests * max(1, math.ceil(api_window / rate.window))
    if burst > api_requests:
        warnings.append(
            f"{rate_key} {rate} is above the API's own limit of {api_requests} requests "
            f"per {api_window:g}s per token; going over blocks the token for 5 minutes"
        )
    share = config.shard.budget(rate)
    per_cycle = sum(
        1 + sum(1 for ls in app.livestreams if config.shard.owns(ls.id)) for app in config.apps
    )
    needed = per_cycle * share.window / config.poll.interval
    if needed > share.requests:
        warnings.append(
            f"polling may need up to {math.ceil(needed)} requests per {share.window:g}s "
            f"({per_cycle} per cycle every {config.poll.interval:g}s) but the budget allows "
            f"{share.requests}; statuses will still be read every cycle, but session values "
            "only in turn, less often than poll.interval (docs/scaling.md): raise "
            f"poll.interval or {rate_key} to refresh them every cycle"
        )
    return warnings


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
