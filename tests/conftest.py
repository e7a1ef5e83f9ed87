from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from exporter.config import (
    ApiConfig,
    AppConfig,
    Config,
    LivestreamConfig,
    PollConfig,
    RateLimit,
    Secret,
)
from tests.fakeapi import TOKEN, FakeApi

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ACCOUNT = "acc-1"
APP = "app-1"


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApi]:
    api = FakeApi()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


def make_config(
    base_url: str,
    *,
    streams: tuple[str, ...] = (),
    expect: dict[str, bool] | None = None,
    discover: bool = False,
    interval: float = 30.0,
    max_staleness: float = 300.0,
    token: str = TOKEN,
    timeout: float = 2.0,
    rate_limit: RateLimit | None = None,
) -> Config:
    expect = expect or {}
    app = AppConfig(
        account_id=ACCOUNT,
        app_id=APP,
        discover=discover,
        livestreams=tuple(LivestreamConfig(id=s, expect_live=expect.get(s)) for s in streams),
    )
    return Config(
        api=ApiConfig(
            token=Secret(token),
            base_url=base_url,
            timeout=timeout,
            rate_limit=rate_limit or RateLimit(1000, 300.0),
        ),
        poll=PollConfig(interval=interval, max_staleness=max_staleness),
        apps=(app,),
    )
