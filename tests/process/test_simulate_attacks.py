"""The clean-up's adversarial pass (issue 15), the attacks that need the simulate command
as a process: its request log under a flood, and SIGTERM while requests are kept waiting.
The others are in tests/unit/test_refactor_attacks.py; the list of attacks tried is in
docs/reliability.md ("The clean-up's adversarial pass")."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from exporter.simulator.api import LOG_SIZE
from tests.procs import rss_bytes, spawned_simulator, wait_for_exit

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.interpreter
@pytest.mark.timeout(120)
def test_the_request_log_stays_small_under_a_flood(tmp_path: Path) -> None:
    """The simulator process is flooded with what costs most once decoded: 40 JSON bodies
    of 1 MiB of ``{},`` (25 MB each as Python objects) and LOG_SIZE - 40 requests whose query
    has 1,300 distinct parameters (200 KB each as a dict), so that the log holds them
    all. It kept them decoded, and the process grew by over a gigabyte; it keeps them as
    they came now, and the process grows by less than 100 MB."""
    body = b"[" + b"{}," * ((1024 * 1024 - 16) // 3) + b"{}]"
    query = "&".join(f"k{i}=" for i in range(1300))[:8000]
    with spawned_simulator(tmp_path, "--ip-rate-limit", "off") as (proc, origin):
        url = f"{origin}/client/v4/accounts/sim-account/realtime/kit/sim-app/webhooks"

        async def flood() -> None:
            async with aiohttp.ClientSession() as session:
                for _ in range(LOG_SIZE - 40):
                    async with session.get(f"{url}?{query}") as response:
                        assert response.status == 401
                for _ in range(40):
                    async with session.post(url, data=body) as response:
                        assert response.status == 401
                async with session.get(origin + "/-/simulator/requests") as response:
                    logged = (await response.json())["requests"]
                assert len(logged) == LOG_SIZE and len(logged[0]["query"]) == 1300

        before = rss_bytes(proc.pid)
        asyncio.run(flood())
        grown = rss_bytes(proc.pid) - before
        assert grown < 100 * 1024 * 1024, f"grew by {grown / 1e6:.0f} MB"


@pytest.mark.interpreter
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["--fault.latency=3600s", "hold"])
def test_requests_kept_waiting_do_not_hold_up_sigterm(tmp_path: Path, fault: str) -> None:
    """200 API requests kept waiting by the hold fault, or by an hour of latency (the
    fault allows a day): SIGTERM ends the simulate command within 5 s, exit 0. With the
    latency, it used to wait for aiohttp's shutdown timeout twice over (2 minutes)."""
    args = [fault] if fault.startswith("--") else []
    with spawned_simulator(tmp_path, "--ip-rate-limit", "off", *args) as (proc, origin):
        url = f"{origin}/client/v4/accounts/sim-account/realtime/kit/sim-app/livestreams"

        async def requests_then_sigterm() -> float:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                if fault == "hold":
                    async with session.put(origin + "/-/simulator/faults", json={"hold": True}):
                        pass

                async def one() -> None:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(url) as response:
                            await response.read()

                waiting = [asyncio.ensure_future(one()) for _ in range(200)]
                async with asyncio.timeout(20):
                    while True:
                        async with session.get(origin + "/-/simulator/requests") as response:
                            if len((await response.json())["requests"]) == 200:
                                break
                        await asyncio.sleep(0.05)
                started = time.monotonic()
                proc.popen.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(wait_for_exit, proc, timeout=30)
                took = time.monotonic() - started
                assert code == 0, proc.tail()
                await asyncio.gather(*waiting)
                return took

        took = asyncio.run(requests_then_sigterm())
        assert took < 5, f"SIGTERM took {took:.1f} s"
