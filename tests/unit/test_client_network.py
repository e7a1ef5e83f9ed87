"""The client over real sockets on 127.0.0.1: timeouts, deadlines, proxies, ~/.netrc."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from exporter.budget import RequestBudget
from exporter.client import ApiError, RealtimeKitClient
from exporter.config import Secret
from exporter.server import Exporter
from tests.conftest import TOKEN, add_stream, api_simulator, make_config, sent
from tests.faultapi import FaultApi, Stall

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from exporter.simulator import Simulator


@contextlib.asynccontextmanager
async def stalling_server() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """Answers with headers, then never sends the body; lists what it served."""
    async with api_simulator() as sim, FaultApi(sim) as api:
        api.fault = lambda request: Stall()
        yield api.base_url, api.served


def make(session: aiohttp.ClientSession, base_url: str, *, timeout: float) -> RealtimeKitClient:
    return RealtimeKitClient(
        session=session,
        base_url=base_url,
        token=Secret(TOKEN),
        budget=RequestBudget(requests=100, window=300),
        timeout=timeout,
        retries=0,
    )


async def test_a_stalled_body_times_out_after_api_timeout() -> None:
    """Headers then silence: the request fails as a timeout once api.timeout has passed."""
    async with stalling_server() as (url, received), aiohttp.ClientSession() as session:
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            await asyncio.wait_for(make(session, url, timeout=0.3).list_livestreams("a", "b"), 10)
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout" and len(received) == 1
    assert elapsed < 5  # bounded by the 0.3 s timeout, not by the 10 s guard


async def test_a_request_never_outlives_its_cycle() -> None:
    """With a cycle deadline nearer than api.timeout, the deadline bounds the request."""
    async with stalling_server() as (url, _), aiohttp.ClientSession() as session:
        client = make(session, url, timeout=60)
        deadline = time.monotonic() + 0.3
        with pytest.raises(ApiError) as caught:
            await asyncio.wait_for(client.list_livestreams("a", "b", deadline=deadline), 10)
        assert caught.value.reason == "timeout"
        with pytest.raises(ApiError, match="ran out of time"):
            await client.list_livestreams("a", "b", deadline=time.monotonic() - 1)


async def test_netrc_credentials_do_not_break_requests(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc with a default entry neither replaces the token nor fails the poll."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    add_stream(sim, "s1")
    async with Exporter(make_config(sim.base_url, discover=True)) as exporter:
        snapshot = await exporter.poller.poll_once()
    assert snapshot.apps[0].up and [s.id for s in snapshot.apps[0].streams] == ["s1"]


async def test_proxy_from_the_environment_is_used(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured: requests for the API host go to the proxy."""
    add_stream(sim, "s1")
    monkeypatch.setenv("HTTP_PROXY", sim.origin)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    config = make_config("http://rtk-api.invalid/client/v4", discover=True)
    async with Exporter(config) as exporter:
        snapshot = await exporter.poller.poll_once()
    assert snapshot.apps[0].up and [s.id for s in snapshot.apps[0].streams] == ["s1"]
    assert sent(sim, "livestreams") == 1
