"""The ``webhooks`` command, run as a real subprocess against the simulated API."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

import pytest

from exporter.registration import EVENT
from exporter.simulator import Canned, Faults
from tests.conftest import ACCOUNT, TOKEN, api_simulator
from tests.registering import APPS, URL, count, existing, hooks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from exporter.simulator import Simulator

CONFIG = """\
api:
  base_url: {base_url}
  token: ${{RTK_WEBHOOK_TEST_TOKEN}}
  timeout: 2s
apps:
  - account_id: {account}
    app_id: app-1
    discover: true
  - account_id: {account}
    app_id: app-2
    discover: true
{webhooks}"""
WEBHOOKS_SECTION = "webhooks:\n  path: /webhooks/realtimekit\n"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with api_simulator(apps=APPS) as simulator:
        yield simulator


def write_config(tmp_path: Path, base_url: str, *, webhooks: str = WEBHOOKS_SECTION) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        CONFIG.format(base_url=base_url, account=ACCOUNT, webhooks=webhooks), encoding="utf-8"
    )
    return str(path)


async def run(*args: str, limit: float = 30) -> tuple[int, str, str]:
    """The exporter's command line with ``args``: exit code, stdout, stderr. The token, in
    the environment only, must appear in neither output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # COLUMNS: help text wrapped wide enough that no word is cut at a hyphen.
        env={**os.environ, "RTK_WEBHOOK_TEST_TOKEN": TOKEN, "COLUMNS": "200"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    stdout, stderr = out.decode(), err.decode()
    assert TOKEN not in stdout and TOKEN not in stderr
    return proc.returncode, stdout, stderr


async def test_register_creates_then_keeps_and_prints_a_line_per_app(
    tmp_path: Path, sim: Simulator
) -> None:
    """register exits 0 with "created" per app; run again, it prints "kept" and sends no
    second POST; debug logging shows no token either."""
    config = write_config(tmp_path, sim.base_url)
    code, out, err = await run(
        "webhooks", "register", "--config.file", config, "--url", URL, "--log.level", "debug"
    )
    assert code == 0, err
    ids = [hooks(sim, app)[0].id for app in ("app-1", "app-2")]
    assert out.splitlines() == [
        f"acc-1/app-1: created webhook {ids[0]}",
        f"acc-1/app-2: created webhook {ids[1]}",
    ]
    code, out, err = await run("webhooks", "register", "--config.file", config, "--url", URL)
    assert code == 0, err
    assert out.splitlines() == [
        f"acc-1/app-1: kept webhook {ids[0]}",
        f"acc-1/app-2: kept webhook {ids[1]}",
    ]
    assert err == ""
    assert count(sim, "POST") == 2
    assert all(sent.authorized for sent in sim.state.log)


async def test_register_with_a_name_updates_a_disabled_webhook(
    tmp_path: Path, sim: Simulator
) -> None:
    """A disabled webhook with the URL is updated (printed "updated"), not duplicated;
    --name names the one created for the other app."""
    hook_id = existing(sim, "app-1", url=URL, events=[EVENT], enabled=False)
    config = write_config(tmp_path, sim.base_url)
    code, out, err = await run(
        "webhooks", "register", "--config.file", config, "--url", URL, "--name", "edge"
    )
    assert code == 0, err
    assert out.splitlines()[0] == f"acc-1/app-1: updated webhook {hook_id}"
    assert hooks(sim, "app-1")[0].enabled is True
    assert hooks(sim, "app-2")[0].name == "edge"
    assert count(sim, "POST") == 1 and count(sim, "PATCH") == 1


async def test_list_prints_every_webhook_of_each_app(tmp_path: Path, sim: Simulator) -> None:
    """list prints one line per webhook (id, url, events, enabled, name), or "no webhooks"."""
    hook_id = existing(sim, "app-1", url=URL, events=[EVENT, "meeting.ended"], name="mine")
    code, out, err = await run(
        "webhooks", "list", "--config.file", write_config(tmp_path, sim.base_url)
    )
    assert code == 0, err
    assert out.splitlines() == [
        f"acc-1/app-1: id={hook_id} url={URL} events={EVENT},meeting.ended enabled=true "
        'name="mine"',
        "acc-1/app-2: no webhooks",
    ]
    assert {sent.method for sent in sim.state.log} == {"GET"}


async def test_unregister_deletes_only_that_urls_webhooks(tmp_path: Path, sim: Simulator) -> None:
    """unregister prints "deleted N" per app and leaves webhooks with other URLs."""
    existing(sim, "app-1", url=URL, events=[EVENT])
    other = existing(sim, "app-1", url="https://elsewhere.example.com/hook")
    config = write_config(tmp_path, sim.base_url)
    code, out, err = await run("webhooks", "unregister", "--config.file", config, "--url", URL)
    assert code == 0, err
    assert out.splitlines() == ["acc-1/app-1: deleted 1", "acc-1/app-2: deleted 0"]
    assert [hook.id for hook in hooks(sim, "app-1")] == [other]


@pytest.mark.parametrize("action", ["register", "list", "unregister"])
async def test_a_token_without_permission_exits_1_naming_the_permission(
    tmp_path: Path, sim: Simulator, action: str
) -> None:
    """A 403 exits 1 with one stderr line naming the app and the Realtime Admin (or
    Realtime) permission; nothing on stdout."""
    sim.state.faults = Faults(webhooks_forbidden=True)
    args = ["webhooks", action, "--config.file", write_config(tmp_path, sim.base_url)]
    if action != "list":
        args += ["--url", URL]
    code, out, err = await run(*args)
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("realtimekit-exporter: app acc-1/app-1: the API refused the token")
    assert "Realtime Admin (or Realtime) permission" in err


async def test_an_api_failure_on_a_later_app_prints_what_was_done_first(
    tmp_path: Path, sim: Simulator
) -> None:
    """The first app's line is printed, then the error on the second, and the exit is 1."""
    failure = Canned(503, {"success": False, "error": {"code": 503}})
    sim.state.answer_next("add_webhook", failure, app_id="app-2")
    code, out, err = await run(
        "webhooks", "register", "--config.file", write_config(tmp_path, sim.base_url), "--url", URL
    )
    assert code == 1
    assert out.startswith("acc-1/app-1: created webhook ") and out.count("\n") == 1
    assert err.startswith("realtimekit-exporter: app acc-1/app-2: cannot register a webhook")
    assert count(sim, "POST") == 2  # one per app: the failed one was not sent again


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://exporter.example.com/webhooks/realtimekit", "loopback"),
        ("ftp://exporter.example.com/webhooks/realtimekit", "https://"),
        ("https://user:s3cr3t-pw@exporter.example.com/webhooks/realtimekit", "credentials"),
    ],
    ids=["http-public-host", "ftp", "credentials"],
)
async def test_a_bad_url_exits_2_before_any_request(
    tmp_path: Path, sim: Simulator, url: str, says: str
) -> None:
    """A URL RealtimeKit cannot deliver to is a usage error (exit 2, one line, never the
    password), found before anything is sent."""
    config = write_config(tmp_path, sim.base_url)
    code, out, err = await run("webhooks", "register", "--config.file", config, "--url", url)
    assert code == 2 and out == ""
    assert err.startswith("realtimekit-exporter: usage error: --url ") and err.count("\n") == 1
    assert says in err and "see webhooks register --help" in err
    assert "s3cr3t-pw" not in err
    assert not sim.state.log


async def test_a_path_other_than_webhooks_path_warns_and_registers(
    tmp_path: Path, sim: Simulator
) -> None:
    """A URL whose path is not webhooks.path is registered (exit 0) with a warning on stderr."""
    config = write_config(tmp_path, sim.base_url)
    url = URL.replace("/webhooks/realtimekit", "/rtk")
    code, out, err = await run("webhooks", "register", "--config.file", config, "--url", url)
    assert code == 0, err
    assert "level=warn" in err and "webhooks.path" in err
    assert out.count("created") == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["webhooks"], "ACTION"),
        (["webhooks", "register", "--config.file", "{config}"], "--url"),
        (["webhooks", "list"], "--config.file is required"),
        (
            ["webhooks", "register", "--config.file", "{config}", "--url", URL, "--name", " "],
            "--name",
        ),
        (["webhooks", "purge", "--config.file", "{config}"], "invalid choice"),
    ],
    ids=["no-action", "register-without-url", "no-config", "blank-name", "unknown-action"],
)
async def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, sim: Simulator, args: list[str], says: str
) -> None:
    """A missing or wrong argument exits 2 with a one-line reason, sending nothing."""
    config = write_config(tmp_path, sim.base_url)
    code, out, err = await run(*(a.replace("{config}", config) for a in args))
    assert code == 2 and out == ""
    assert err.startswith("realtimekit-exporter: usage error:") and err.count("\n") == 1
    assert says in err and "--help" in err
    assert not sim.state.log


async def test_the_config_file_may_come_before_the_command(tmp_path: Path, sim: Simulator) -> None:
    """``--config.file F webhooks list`` reads F, as ``webhooks list --config.file F`` does."""
    code, out, err = await run(
        "--config.file", write_config(tmp_path, sim.base_url), "webhooks", "list"
    )
    assert code == 0, err
    assert out.splitlines() == ["acc-1/app-1: no webhooks", "acc-1/app-2: no webhooks"]


async def test_an_invalid_config_exits_2_as_for_the_daemon(tmp_path: Path) -> None:
    """A config the loader refuses exits 2 with "invalid configuration", one line."""
    path = tmp_path / "bad.yaml"
    path.write_text("api:\n  token: ${RTK_WEBHOOK_TEST_TOKEN}\n  colour: red\n", encoding="utf-8")
    code, out, err = await run("webhooks", "list", "--config.file", str(path))
    assert code == 2 and out == ""
    assert err.startswith("realtimekit-exporter: invalid configuration:") and err.count("\n") == 1
    assert "api.colour: unknown key" in err


async def test_help_documents_the_webhooks_command() -> None:
    """--help lists the webhooks command; its own help names the three actions and the
    exit codes; register's names --url, --name and the event."""
    code, out, _ = await run("--help")
    assert code == 0 and "webhooks" in out
    code, out, _ = await run("webhooks", "--help")
    assert code == 0
    for word in ("register", "list", "unregister", "Realtime Admin", "Exit status"):
        assert word in out
    code, out, _ = await run("webhooks", "register", "--help")
    assert code == 0
    for word in ("--config.file", "--url", "--name", "realtimekit-exporter", EVENT):
        assert word in out
