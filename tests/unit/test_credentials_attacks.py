"""The adversarial pass over several credentials and app analytics (issue 16): attacks on
the fleet of units (reload races, isolation between tokens), the analytics' budget and
bodies, secrets and bounds. Each test here is an attack that found a defect, or a race
no other test pins; the whole list of attacks tried is in docs/reliability.md ("Several
credentials: the adversarial pass")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import config as config_module
from exporter.reload import Reloader
from exporter.server import Exporter
from exporter.simulator import Simulator, World
from exporter.simulator.tokens import SimToken
from tests.clock import FakeClock
from tests.conftest import API_T0

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

TOKEN_A: Final = "attack-a-token-51c0e7d2b94f4a38"
TOKEN_B: Final = "attack-b-token-0d83a6f1c27e4b95"
ACC_A, ACC_B = "acc-a", "acc-b"


# -- helpers ---------------------------------------------------------------------------
def accounts() -> Simulator:
    """acc-a (app-a) read with TOKEN_A, which may read every account; acc-b (app-b and
    app-b2) with TOKEN_B, which may read acc-b alone. One live stream in each app."""
    world = World(clock=FakeClock(API_T0))
    for account, app in ((ACC_A, "app-a"), (ACC_B, "app-b"), (ACC_B, "app-b2")):
        world.populate(account, app, 0)
        world.create(account, app, livestream_id=f"{app}-ls1")
        world.go_live(f"{app}-ls1")
    return Simulator(
        world,
        token=TOKEN_A,
        tokens=(SimToken("b", TOKEN_B, frozenset({ACC_B})),),
        ip_limiter="off",
    )


def write(path: Path, base_url: str, apps: dict[str, str], *, interval: str = "30s") -> Path:
    """A config reading each app of ``apps`` (app id -> credentials name) with those
    credentials; agency-b reads with TOKEN_B."""
    lines = [
        "api:",
        f"  base_url: {base_url}",
        f"  token: {TOKEN_A}",
        "  timeout: 2s",
        "poll:",
        f"  interval: {interval}",
        "apps:",
    ]
    for app, credentials in apps.items():
        account = ACC_A if app == "app-a" else ACC_B
        lines += [
            f"  - account_id: {account}",
            f"    app_id: {app}",
            "    discover: true",
            f"    credentials: {credentials}",
        ]
    lines += ["credentials:", "  agency-b:", f"    token: {TOKEN_B}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def exporter_for(path: Path) -> AsyncIterator[tuple[Exporter, Reloader]]:
    config = config_module.load(str(path))
    async with Exporter(config, process_metrics=False) as exporter:
        yield exporter, Reloader(exporter=exporter, config_file=str(path))


def samples(exporter: Exporter, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of the family ``name`` in the whole exposition, as text parses it."""
    text = generate_latest(exporter.registry).decode()
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


# -- 1. reload races ----------------------------------------------------------------------
async def test_an_app_moved_to_other_credentials_is_exported_once(tmp_path: Path) -> None:
    """A reload moves app-b from agency-b to the default credentials; the default unit's
    next cycle comes first, and reads app-b with its token. agency-b's last snapshot
    still held app-b: the merged snapshot had it twice, and /metrics two samples of
    realtimekit_up for one app (Prometheus rejects the whole scrape for a duplicate)."""
    async with accounts() as sim:
        path = write(
            tmp_path / "c.yaml",
            sim.base_url,
            {"app-a": "default", "app-b": "agency-b", "app-b2": "agency-b"},
        )
        async with exporter_for(path) as (exporter, reloader):
            await exporter.poller.poll_once(analytics=True)
            write(
                path, sim.base_url, {"app-a": "default", "app-b": "default", "app-b2": "agency-b"}
            )
            assert await reloader.reload() is None
            default = exporter.poller.unit("default").poller
            await default.poll_once()  # agency-b's next cycle comes later
            await default.analytics_settled()
            keys = [app.key for app in exporter.poller.snapshot.apps]
            assert sorted(keys) == sorted(set(keys))
            for family in ("realtimekit_up", "realtimekit_app_analytics_enabled"):
                apps = [labels["app_id"] for labels, _ in samples(exporter, family)]
                assert sorted(apps) == ["app-a", "app-b", "app-b2"], family
            info = samples(exporter, "realtimekit_app_info")
            assert {(labels["app_id"], labels["credentials"]) for labels, _ in info} == {
                ("app-a", "default"),
                ("app-b", "default"),
                ("app-b2", "agency-b"),
            }
            await exporter.poller.unit("agency-b").poller.poll_once()
            assert len(exporter.poller.snapshot.apps) == 3


async def test_a_reload_that_adds_credentials_keeps_the_process_ready(tmp_path: Path) -> None:
    """Ready, then a reload adds agency-b: /-/ready stays 200 and the status page keeps
    its apps while agency-b's first cycle runs. Fleet.ready asked every unit for a
    completed cycle, and the merged snapshot took the least cycle count (0): a reload
    made the process unready (a Kubernetes readiness probe takes it out of service) and
    the status page said "No poll yet" until the new token's first cycle ended."""
    async with accounts() as sim:
        path = write(tmp_path / "c.yaml", sim.base_url, {"app-a": "default"})
        async with exporter_for(path) as (exporter, reloader):
            await exporter.poller.poll_once()
            assert exporter.poller.ready
            write(path, sim.base_url, {"app-a": "default", "app-b": "agency-b"})
            assert await reloader.reload() is None
            assert not exporter.poller.unit("agency-b").poller.ready  # its first cycle is due
            assert exporter.poller.ready
            assert exporter.poller.snapshot.cycles >= 1
            assert [a.app_id for a in exporter.poller.snapshot.apps] == ["app-a"]
