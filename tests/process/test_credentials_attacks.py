"""Several credentials in a real exporter process, attacked (issue 16's adversarial pass;
the in-process attacks are tests/unit/test_credentials_attacks.py): reloads that add,
break and remove credentials, a token rotated and one revoked, at the debug log level;
no token of any credentials comes out, and no series of removed credentials stays."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Final

from exporter.simulator import Faults, Simulator, World
from exporter.simulator.tokens import SimToken
from tests.clock import FakeClock
from tests.conftest import API_T0
from tests.process.test_reload import Running, Samples, exporter_process

if TYPE_CHECKING:
    from pathlib import Path

TOKEN_A: Final = "proc-attack-a-0b1c2d3e4f5a6b7c8d9e"
TOKEN_B: Final = "proc-attack-b-9e8d7c6b5a4f3e2d1c0b"
TOKEN_B2: Final = "proc-attack-b2-77665544332211aabbcc"
TOKEN_C: Final = "proc-attack-c-a1b2c3d4e5f6a7b8c9d0"
SECRETS: Final = (TOKEN_A, TOKEN_B, TOKEN_B2, TOKEN_C)
ACC_A, ACC_B = "acc-a", "acc-b"


def world() -> World:
    world = World(clock=FakeClock(API_T0))
    for account, app in ((ACC_A, "app-a"), (ACC_B, "app-b"), (ACC_B, "app-c")):
        world.populate(account, app, 0)
        world.create(account, app, livestream_id=f"{app}-ls")
        world.go_live(f"{app}-ls")
    return world


def write(path: Path, base_url: str, *, with_c: bool, broken: bool = False) -> Path:
    """app-a with the api section's token, app-b with agency-b (its token file), and
    with ``with_c`` app-c with agency-c; ``broken`` adds a problem naming agency-c."""
    text = (
        f"api: {{base_url: {base_url}, token: {TOKEN_A}, timeout: 2s}}\n"
        "poll: {interval: 1s, analytics_interval: 1s}\n"
        "credentials:\n"
        "  agency-b: {token_file: b.token}\n"
    )
    if with_c:
        text += f"  agency-c: {{token: {TOKEN_C}{', rate_limit: nope' if broken else ''}}}\n"
    text += (
        "apps:\n"
        f"  - {{account_id: {ACC_A}, app_id: app-a, discover: true}}\n"
        f"  - {{account_id: {ACC_B}, app_id: app-b, discover: true, credentials: agency-b}}\n"
    )
    if with_c:
        text += (
            f"  - {{account_id: {ACC_B}, app_id: app-c, discover: true, credentials: agency-c}}\n"
        )
    path.write_text(text, encoding="utf-8")
    return path


def up(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["app_id"]: value
        for (name, labels), value in samples.items()
        if name == "realtimekit_up"
    }


def cycles(samples: Samples) -> float:
    """The fewest cycles a unit has completed."""
    return min(
        value
        for (name, _), value in samples.items()
        if name == "realtimekit_exporter_poll_duration_seconds_count"
    )


def credentials_in(samples: Samples) -> set[str]:
    return {dict(labels).get("credentials", "") for _, labels in samples} - {""}


async def test_reloads_of_credentials_in_a_process_show_no_token_and_leave_no_series(
    tmp_path: Path,
) -> None:
    """At --log.level=debug: a reload adds agency-c; agency-b's token file rotates;
    agency-c's token is revoked (app-c down, the others up); a broken reload is refused
    (its answer names the problem, not the token); a reload removes agency-c (its series
    go, the other apps stay up); SIGTERM ends the process with 0. No token of any
    credentials is in the log, /metrics, the status page or an answer of /-/reload."""
    (tmp_path / "b.token").write_text(TOKEN_B + "\n", encoding="utf-8")
    tokens = (
        SimToken("b", TOKEN_B, frozenset({ACC_B})),
        SimToken("c", TOKEN_C, frozenset({ACC_B})),
    )
    async with Simulator(world(), token=TOKEN_A, tokens=tokens, ip_limiter="off") as sim:
        config = write(tmp_path / "c.yaml", sim.base_url, with_c=False)
        async with exporter_process(
            tmp_path, config, token="", extra=("--log.level", "debug")
        ) as running:
            shown: list[str] = []

            async def apps_up(*apps: str) -> Samples | None:
                got = await running.metrics()
                return got if all(up(got).get(app) == 1 for app in apps) else None

            await running.until(lambda: apps_up("app-a", "app-b"), what="a and b up")
            write(config, sim.base_url, with_c=True)
            shown.append((await running.post_reload())[1])
            got = await running.until(lambda: apps_up("app-a", "app-b", "app-c"), what="c up")
            assert credentials_in(got) == {"default", "agency-b", "agency-c"}

            sim.add_token("b", TOKEN_B2, accounts=[ACC_B])
            (tmp_path / "b.token").write_text(TOKEN_B2 + "\n", encoding="utf-8")
            sim.state.faults = Faults(rejected_tokens=("c",))

            async def c_down() -> Samples | None:
                got = await running.metrics()
                apps = up(got)
                return got if apps.get("app-c") == 0 and apps.get("app-b") == 1 else None

            await running.until(c_down, what="app-c down, app-b up on its rotated token")
            status, text = await running.post_reload()  # nothing changed: accepted
            assert status == 200

            write(config, sim.base_url, with_c=True, broken=True)
            status, text = await running.post_reload()
            assert status == 500 and "credentials.agency-c.rate_limit" in text
            shown.append(text)

            write(config, sim.base_url, with_c=False)
            shown.append((await running.post_reload())[1])

            async def c_gone() -> Samples | None:
                got = await running.metrics()
                return got if "agency-c" not in credentials_in(got) else None

            got = await running.until(c_gone, what="agency-c's series gone")
            assert set(up(got)) == {"app-a", "app-b"}
            done = cycles(got)

            async def two_more() -> Samples | None:
                got = await running.metrics()
                return got if cycles(got) >= done + 2 else None

            # Two cycles more of each unit: nothing of agency-c comes back.
            got = await running.until(two_more, what="two more cycles")
            assert "agency-c" not in credentials_in(got)
            assert up(got) == {"app-a": 1, "app-b": 1}
            shown += [await text_of(running, "/metrics"), await text_of(running, "/")]
            running.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(running.proc.wait(), 10) == 0
            log = running.log()
            assert "API rejected the token" in log  # agency-c's, at the debug level
            shown.append(log)
        for text in shown:
            for token in SECRETS:
                assert token not in text


async def text_of(running: Running, path: str) -> str:
    async with running.http.get(running.url + path) as response:
        assert response.status == 200
        return await response.text()
