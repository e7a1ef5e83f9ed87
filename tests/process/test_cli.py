"""The command line, run as a real subprocess: flags, exit codes, signals (its parts that
run in the test process: tests/unit/test_cli_main.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from typing import TYPE_CHECKING

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import Faults, Simulator
from exporter.simulator.world import STREAM_KEY_PREFIX
from tests import REPO
from tests.conftest import TOKEN, add_stream, go_live
from tests.reloading import cli_config, write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path


def env(token: str = TOKEN) -> dict[str, str]:
    return {**os.environ, "RTK_TEST_TOKEN": token, "PYTHONUNBUFFERED": "1"}


@contextlib.asynccontextmanager
async def spawned(*args: str, token: str = TOKEN) -> AsyncIterator[asyncio.subprocess.Process]:
    """The exporter as a subprocess with piped output; killed on the way out if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(token),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def first_request(sim: Simulator) -> None:
    async with asyncio.timeout(15):
        while not sim.state.log:
            await asyncio.sleep(0.02)


async def run(*args: str, token: str = TOKEN, limit: float = 30) -> tuple[int, str, str]:
    async with spawned(*args, token=token) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_config_check_ok(tmp_path: Path) -> None:
    """--config.check on a valid file prints one summary line and exits 0."""
    code, out, err = await run(
        "--config.file", str(cli_config(tmp_path, "http://127.0.0.1:9")), "--config.check"
    )
    assert code == 0, err
    assert out.count("\n") == 1 and "OK: 1 app(s), 1 configured livestream(s)" in out


async def test_config_check_prints_the_warnings_of_start_up_and_exits_0(tmp_path: Path) -> None:
    """--config.check prints on stderr, one a line, the warnings start-up logs (the same
    words), and exits 0: warnings are not errors."""
    path = write_config(
        tmp_path / "config.yaml",
        "http://127.0.0.1:9",
        ["ls-1"],
        rate_limit="1300/5m",
        extra={"credentials": {"spare": {"token": "spare-token-0123456789"}}},
    )
    code, out, err = await run("--config.file", str(path), "--config.check")
    assert code == 0, err
    assert out.startswith(f"{path}: OK (2 warnings): 1 app(s), 1 configured livestream(s)")
    prefix = "realtimekit-exporter: warning: "
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith(prefix) for line in lines)
    assert lines[0].startswith(f"{prefix}api.rate_limit 1300/5m is above the API's own limit")
    assert lines[1].startswith(f"{prefix}credentials spare are not used by any app")

    _, _, log = await run("--config.file", str(path), "--once", "--log.format", "json")
    logged = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    warned = [entry["msg"] for entry in logged if entry["level"] == "warn"]
    assert [line.removeprefix(prefix) for line in lines] == warned[:2]


def secrets_elsewhere(tmp_path: Path) -> Path:
    """A config whose token file, credentials' token file and webhook key file are not on
    this machine (as in CI, for a Kubernetes config)."""
    document = {
        "api": {"base_url": "http://127.0.0.1:9", "token_file": "/run/secrets/realtimekit/token"},
        "credentials": {"b": {"token_file": "b.token"}},
        "webhooks": {"public_key_file": "/etc/realtimekit-exporter/webhooks.pem"},
        "apps": [
            {"account_id": "acc", "app_id": "main", "livestreams": [{"id": "ls-1"}]},
            {"account_id": "acc", "app_id": "other", "discover": True, "credentials": "b"},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


async def test_config_check_of_a_config_whose_files_are_elsewhere(tmp_path: Path) -> None:
    """A missing token file is an error of --config.check that says how to check without
    the files; with --config.check.skip-files the files are not read (their paths still
    are checked), and the check says which were not read."""
    path = secrets_elsewhere(tmp_path)
    code, out, err = await run("--config.file", str(path), "--config.check")
    assert code == 2 and out == ""
    assert err == (
        f"realtimekit-exporter: invalid configuration: {path}: 2 problems: api.token_file: "
        "cannot read /run/secrets/realtimekit/token: No such file or directory; "
        f"credentials.b.token_file: cannot read {tmp_path}/b.token: No such file or "
        "directory (to check the configuration where these files are not, add "
        "--config.check.skip-files)\n"
    )

    code, out, err = await run(
        "--config.file", str(path), "--config.check", "--config.check.skip-files"
    )
    assert (code, err) == (0, "")
    assert out == (
        f"{path}: OK: 2 app(s), 1 configured livestream(s), discovery on 1 app(s), poll "
        "every 30s, budget 1000/5m, 2 credential(s); not read: api.token_file, "
        "credentials.b.token_file, webhooks.public_key_file\n"
    )


async def test_the_kubernetes_config_can_be_checked_where_its_secret_is_not() -> None:
    """deploy/kubernetes/base/config.yaml, as it stands (its token file is mounted only in
    the cluster), passes --config.check.skip-files, as its comment says."""
    path = REPO / "deploy/kubernetes/base/config.yaml"
    assert "--config.check --config.check.skip-files" in path.read_text(encoding="utf-8")
    code, out, err = await run("--config.file", str(path), "--config.check")
    assert code == 2 and "add --config.check.skip-files" in err
    code, out, err = await run(
        "--config.file", str(path), "--config.check", "--config.check.skip-files"
    )
    assert (code, err) == (0, "") and out.endswith("; not read: api.token_file\n")


@pytest.mark.parametrize(
    ("key", "problem", "hint"),
    [
        (None, "cannot read {key}: No such file or directory", True),
        (b"not a key\n", "{key}: not a PEM public key (no BEGIN PUBLIC KEY line)", False),
    ],
    ids=["missing", "not a key"],
)
async def test_config_check_reads_the_webhook_key_file(
    tmp_path: Path, key: bytes | None, problem: str, hint: bool
) -> None:
    """--config.check reads webhooks.public_key_file, which start-up only tries in the
    background: a missing one is an error that says how to check without the files, one
    that holds no key an error only."""
    path = write_config(
        tmp_path / "config.yaml",
        "http://127.0.0.1:9",
        ["ls-1"],
        extra={"webhooks": {"public_key_file": "webhooks.pem"}},
    )
    if key is not None:
        (tmp_path / "webhooks.pem").write_bytes(key)
    code, out, err = await run("--config.file", str(path), "--config.check")
    assert code == 2 and out == ""
    shown = problem.replace("{key}", str(tmp_path / "webhooks.pem"))
    assert f": 1 problem: webhooks.public_key_file: {shown}" in err
    assert ("--config.check.skip-files" in err) is hint


async def test_config_check_invalid_exits_2_with_one_line_and_no_secret(tmp_path: Path) -> None:
    """An invalid config exits 2 with every problem on one stderr line, never the token."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "api:\n  token: ${RTK_TEST_TOKEN}\n  timeout: soon\n  colour: red\npoll:\n  interval: 0s\n"
        "apps:\n  - account_id: acc\n",
        encoding="utf-8",
    )
    code, out, err = await run("--config.file", str(path), "--config.check")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    for problem in ("api.timeout", "api.colour: unknown key", "poll.interval", "apps[0].app_id"):
        assert problem in err
    assert TOKEN not in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--config.file"],
        ["--bogus"],
        ["--config.file", "x.yaml", "--web.listen-address", "nope"],
        ["--config.file", "x.yaml", "--log.level", "loud"],
        ["--config.file", "x.yaml", "--config.check.skip-files"],
    ],
    ids=[
        "no-config",
        "flag-without-value",
        "unknown-flag",
        "bad-listen",
        "bad-level",
        "skip-files-without-check",
    ],
)
async def test_usage_errors_exit_2(args: list[str]) -> None:
    """Usage mistakes exit 2 with a one-line reason on stderr."""
    code, out, err = await run(*args)
    assert code == 2 and out == ""
    assert err.startswith("realtimekit-exporter: usage error:") and err.count("\n") == 1


async def test_a_mistyped_flag_names_the_flag_meant() -> None:
    """An underscore for a dash is an unknown flag with the right one offered, not a
    command named after its value; exit 2 with one line."""
    code, out, err = await run("--web.listen_address", ":1")
    assert code == 2 and out == ""
    assert err == (
        "realtimekit-exporter: usage error: unknown flag --web.listen_address "
        "(did you mean --web.listen-address?) (see --help)\n"
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["simulate", "--listen", "nowhere"], "--listen 'nowhere'"),
        (["simulate", "--fault.error-rate", "2"], "--fault.error-rate"),
        (["simulate", "--livestreams", "2", "--live", "3"], "--live"),
    ],
    ids=["bad-listen", "bad-share", "live-above-count"],
)
async def test_simulate_usage_errors_name_the_flag_and_its_help(
    args: list[str], names: str
) -> None:
    """A simulate mistake exits 2, names the simulate flag and points at simulate's help."""
    code, out, err = await run(*args)
    assert code == 2 and out == ""
    assert names in err and err.rstrip().endswith("(see simulate --help)")
    assert err.count("\n") == 1


def with_text(tail: str) -> Callable[[Path], Path]:
    """A valid config with ``tail`` appended."""

    def make(tmp_path: Path) -> Path:
        path = cli_config(tmp_path, "http://127.0.0.1:9")
        path.write_text(path.read_text(encoding="utf-8") + tail, encoding="utf-8")
        return path

    return make


def fifo_config(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "config.yaml")
    return tmp_path / "config.yaml"


def huge_config(tmp_path: Path) -> Path:
    with (tmp_path / "config.yaml").open("wb") as out:
        out.truncate(60_000_000)  # sparse
    return tmp_path / "config.yaml"


def dev_zero_token(tmp_path: Path) -> Path:
    path = cli_config(tmp_path, "http://127.0.0.1:9")
    text = path.read_text(encoding="utf-8").replace("token: ${RTK_TEST_TOKEN}", "token_file: z")
    path.write_text(text, encoding="utf-8")
    (tmp_path / "z").symlink_to("/dev/zero")
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "500-deep brackets": (
        with_text("x: " + "[" * 500 + "]" * 500 + "\n"),
        "1 problem: nested deeper than 64 levels at line 14, column 67",
    ),
    "a 5,000-digit integer": (
        with_text("limits:\n  max_livestreams: " + "9" * 5000 + "\n"),
        "1 problem: an integer longer than 1000 characters at line 15, column 20",
    ),
    "60 MB": (huge_config, "1 problem: cannot read file: it is over the limit of 8 MiB"),
    "a FIFO": (fifo_config, "1 problem: cannot read file: it is a FIFO (named pipe)"),
    "token_file /dev/zero": (dev_zero_token, "api.token_file: cannot read {dir}/z: it is a char"),
}


@pytest.mark.parametrize("check", [True, False], ids=["config.check", "start-up"])
@pytest.mark.parametrize(("make", "problem"), BAD_FILES.values(), ids=list(BAD_FILES))
async def test_a_file_out_of_bounds_exits_2_at_once_with_one_line(
    tmp_path: Path, make: Callable[[Path], Path], problem: str, check: bool
) -> None:
    """--config.check, or starting to serve, with a file the parser cannot take or a file
    that is not one: exit 2 within seconds, one line on stderr, no traceback."""
    path = make(tmp_path)
    mode = ["--config.check"] if check else ["--web.listen-address", "127.0.0.1:0"]
    code, out, err = await run("--config.file", str(path), *mode, limit=10)
    assert code == 2 and out == ""
    assert err.startswith(f"realtimekit-exporter: invalid configuration: {path}: ")
    assert problem.replace("{dir}", str(tmp_path)) in err
    assert err.count("\n") == 1 and "Traceback" not in err


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A config path that does not exist is a config error (2)."""
    code, _, err = await run("--config.file", str(tmp_path / "absent.yaml"))
    assert code == 2 and "cannot read file" in err


async def test_once_prints_exposition_and_exits_0(tmp_path: Path, sim: Simulator) -> None:
    """--once polls once, prints the exposition and exits 0 when every app succeeded."""
    go_live(sim, add_stream(sim, "ls-1"), ingest=42)
    code, out, err = await run("--config.file", str(cli_config(tmp_path, sim.base_url)), "--once")
    assert code == 0, err
    values = {
        (sample.name, sample.labels.get("livestream_id")): sample.value
        for family in text_string_to_metric_families(out)
        for sample in family.samples
    }
    assert values[("realtimekit_livestream_live", "ls-1")] == 1
    assert values[("realtimekit_livestream_ingest_seconds", "ls-1")] == 42
    assert values[("realtimekit_up", None)] == 1
    assert TOKEN not in out + err and STREAM_KEY_PREFIX not in out + err


async def test_once_exits_1_when_an_app_fails(tmp_path: Path, sim: Simulator) -> None:
    """--once exits 1 when the API rejects the token; the token is not printed."""
    add_stream(sim, "ls-1")
    code, out, err = await run(
        "--config.file",
        str(cli_config(tmp_path, sim.base_url)),
        "--once",
        "--log.level",
        "debug",
        token="rejected-token-0xDEADBEEF",
    )
    assert code == 1
    assert 'realtimekit_up{account_id="acc-1",app_id="app-1"} 0.0' in out
    assert "Realtime or Realtime Admin" in err
    assert "rejected-token-0xDEADBEEF" not in out + err


@pytest.mark.interpreter
async def test_serves_and_stops_on_sigterm_within_5s(tmp_path: Path, sim: Simulator) -> None:
    """The daemon serves /metrics, logs JSON when asked, and exits 0 on SIGTERM within 5 s."""
    sim.world.go_live(add_stream(sim, "ls-1"))
    config = cli_config(tmp_path, sim.base_url, interval="1s")
    listen = ("--web.listen-address", "127.0.0.1:0", "--log.format", "json")
    async with spawned("--config.file", str(config), *listen) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        port = None
        async with asyncio.timeout(15):
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "exporter exited early: " + "".join(lines)
                lines.append(line)
                record = json.loads(line)
                if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", record["msg"]):
                    port = int(m.group(1))
        async with aiohttp.ClientSession() as http, asyncio.timeout(15):
            while True:
                async with http.get(f"http://127.0.0.1:{port}/-/ready") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                sample = 'live{account_id="acc-1",app_id="app-1",livestream_id="ls-1"} 1.0'
                assert sample in await r.text()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), timeout=5)
        assert await asyncio.wait_for(proc.wait(), timeout=5) == 0
        logged = "".join(lines) + rest.decode()
        messages = [json.loads(line)["msg"] for line in logged.splitlines()]
        assert "shutting down" in messages
        assert TOKEN not in logged


@pytest.mark.interpreter
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_during_a_hung_api_call_stops_within_5s(
    tmp_path: Path, sim: Simulator, sig: signal.Signals
) -> None:
    """Even with a request in flight that the API never answers, a signal ends the process."""
    add_stream(sim, "ls-1")
    sim.state.faults = Faults(hold=True)
    config = tmp_path / "slow.yaml"
    config.write_text(
        cli_config(tmp_path, sim.base_url).read_text().replace("timeout: 2s", "timeout: 60s")
    )
    async with spawned("--config.file", str(config), "--web.listen-address", "127.0.0.1:0") as proc:
        await first_request(sim)
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), timeout=5) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_once_interrupted_exits_1(
    tmp_path: Path, sim: Simulator, sig: signal.Signals
) -> None:
    """--once stopped by a signal before its poll completes is a failure (1), not a success."""
    add_stream(sim, "ls-1")
    sim.state.faults = Faults(hold=True)
    config = cli_config(tmp_path, sim.base_url)
    async with spawned("--once", "--config.file", str(config)) as proc:
        await first_request(sim)
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=5)
    assert proc.returncode == 1 and out == b""
    assert b"interrupted" in err
