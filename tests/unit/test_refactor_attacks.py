"""The clean-up's adversarial pass (issue 15): attacks on what the restructuring changed
(the config package and its shared checks, the shard rule, ApiToken, the simulator's
control routes, the listen address shared by the CLI and the config). Each test here is
an attack that found a defect, or a race that no other test pins; the whole list of
attacks tried is in docs/reliability.md ("The clean-up's adversarial pass")."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import yaml

from exporter import config as config_module
from exporter.config import ConfigError, Shard
from exporter.reload import Reloader
from exporter.server import Exporter
from exporter.simulator import Faults, Simulator, World
from exporter.simulator.api import LOG_BODY_BYTES, MAX_ANSWERS
from tests.conftest import ACCOUNT, APP, api_simulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from exporter.simulator.api import Sent

TOKEN_ONE, TOKEN_TWO, TOKEN_THREE = (
    "token-one-0123456789abcdefghijklmnopqrst",
    "token-two-9876543210zyxwvutsrqponmlkjih",
    "token-three-00112233445566778899aabbccd",
)
PASTED = "Xq7" + "a1B2c3D4e5" * 3 + "F6g7H8i9j"  # 42 characters, shaped as an API token


# -- the config: a listen address ----------------------------------------------------
def _webhooks_config(listen: str) -> str:
    return (
        "api: {token: t}\n"
        f'webhooks: {{listen_address: "{listen}"}}\n'
        "apps: [{account_id: a, app_id: b, discover: true}]\n"
    )


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("nope", "webhooks.listen_address: 'nope' is not HOST:PORT (for example ':10243')"),
        (":65536", "webhooks.listen_address: ':65536' is not HOST:PORT (for example ':10243')"),
        ("[]:80", "webhooks.listen_address: '[]:80': empty brackets"),
        ("::1:80", "webhooks.listen_address: '::1:80': write IPv6 hosts as [addr]:port"),
        (
            PASTED,
            "webhooks.listen_address: the address given (42 characters) is not HOST:PORT "
            "(for example ':10243')",
        ),
        (
            "${PASTED}",
            "webhooks.listen_address: the address given (42 characters) is not HOST:PORT "
            "(for example ':10243')",
        ),
    ],
    ids=["word", "port-65536", "empty-brackets", "bare-ipv6", "token", "token-from-env"],
)
def test_a_bad_listen_address_is_named_with_an_example_and_never_quotes_a_token(
    listen: str, problem: str
) -> None:
    """webhooks.listen_address keeps the example it gave before the clean-up, and a long
    bare word (a token pasted in the wrong key, or from ${VAR}) is described, not quoted:
    the listen address parser shared with the CLI quoted it in full."""
    with pytest.raises(ConfigError) as caught:
        config_module.loads(_webhooks_config(listen), environ={"PASTED": PASTED})
    assert caught.value.problems == [problem]
    assert PASTED not in str(caught.value)


# -- the command line: the listen address and the shard rule ----------------------------
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--web.listen-address", ":65536"], "usage error: --web.listen-address ':65536' is not"),
        (["--web.listen-address", ""], "usage error: --web.listen-address '' is not HOST:PORT"),
        (["--web.listen-address", ":"], "usage error: --web.listen-address ':' is not HOST:PORT"),
        (["--web.listen-address", "[]:80"], "--web.listen-address '[]:80': empty brackets"),
        (["--web.listen-address", "::1:80"], "'::1:80': write IPv6 hosts as [addr]:port"),
        (["--web.listen-address", ":80 "], "--web.listen-address ':80 ' is not HOST:PORT"),
        (["--web.listen-address", ":\u0663"], "--web.listen-address ':\u0663' is not"),
        (["--web.listen-address", ":00000080"], "--web.listen-address ':00000080' is not"),
        (["--total-shards", "0"], "usage error: argument --total-shards: must be 1 or more"),
        (["--shard", "-1"], "usage error: argument --shard: must be 0 or more"),
        (["--shard", "2", "--total-shards", "2"], "--shard=2 needs --total-shards above 2"),
        (
            ["--total-shards", "2"],
            "invalid configuration: {config}: 2 problems: api.zz: unknown key (allowed: "
            "base_url, max_concurrency, rate_limit, timeout, token, token_file); api.rate_limit:"
            " 1/5m is fewer requests than --total-shards=2: every shard needs one of its own",
        ),
        (
            ["--total-shards", str(10**23)],
            f"api.rate_limit: 1/5m is fewer requests than --total-shards={10**23}",
        ),
    ],
    ids=[
        "port-65536",
        "empty",
        "colon",
        "empty-brackets",
        "bare-ipv6",
        "trailing-space",
        "arabic-indic-digit",
        "leading-zeros",
        "no-shards",
        "negative-shard",
        "shard-out-of-range",
        "shard-rule-with-another-problem",
        "10^23-shards",
    ],
)
def test_the_command_line_refuses_a_bad_listen_address_or_shard_count_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    """--config.check exits 2 with one line: the listen address as the shared parser
    names it (as before the clean-up), and the shard rule as a problem of the file,
    listed with its other problems (it was a separate usage error, once the rest was
    valid)."""
    from exporter import cli

    config = tmp_path / "c.yaml"
    config.write_text(
        "api: {token: t, rate_limit: 1/5m, zz: 1}\n"
        "apps: [{account_id: a, app_id: b, discover: true}]\n",
        encoding="utf-8",
    )
    assert cli.main(["--config.file", str(config), *args, "--config.check"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert line.format(config=config) in err


# -- ApiToken: reloads, rotations and the budget -----------------------------------------
def _write_config(path: Path, base_url: str, api: dict[str, Any]) -> Path:
    document = {
        "api": {"base_url": base_url, "timeout": "2s", **api},
        "poll": {"interval": "1s", "analytics_interval": "off"},  # requests are counted
        "apps": [{"account_id": ACCOUNT, "app_id": APP, "discover": True}],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def _exporter(
    path: Path, *, shard: Shard | None = None
) -> AsyncIterator[tuple[Exporter, Reloader]]:
    config = config_module.load(str(path), shard=shard or Shard())
    async with Exporter(config, process_metrics=False) as exporter:
        yield exporter, Reloader(exporter=exporter, config_file=str(path))


def _sent_since(sim: Simulator, start: int) -> list[Sent]:
    return list(sim.state.log)[start:]


async def test_a_token_check_left_running_by_its_timeout_is_not_used_after_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token file rotates on a file system that hangs: the check outlives its timeout
    (one second) and is left running. A reload then puts another token in force. When the
    hung check finally returns the rotated token, nothing takes it up: every request after
    the reload carries the reload's token (the simulator's log says whether it matched)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_ONE + "\n", encoding="utf-8")
    answer, hung, returned = threading.Event(), threading.Event(), threading.Event()
    real_read = config_module.read_token_file

    def hanging_read(path: Path, *, shown: str | None = None) -> str:
        hung.set()
        try:
            answer.wait(timeout=30)  # bounded, in case the test fails before setting it
            return real_read(path, shown=shown)
        finally:
            returned.set()

    async with Simulator(_world(), token=TOKEN_ONE, ip_limiter="off") as sim:
        path = _write_config(tmp_path / "c.yaml", sim.base_url, {"token_file": str(token_file)})
        async with _exporter(path) as (exporter, reloader):
            assert (await exporter.poller.poll_once()).apps[0].up
            monkeypatch.setattr("exporter.tokenfile.read_token_file", hanging_read)
            token_file.write_text(TOKEN_TWO + "\n", encoding="utf-8")
            await exporter.poller.poll_once()  # the check hangs; the cycle goes on without it
            assert hung.is_set() and not returned.is_set()
            monkeypatch.setattr("exporter.tokenfile.read_token_file", real_read)
            other = tmp_path / "other-token"
            other.write_text(TOKEN_THREE + "\n", encoding="utf-8")
            _write_config(path, sim.base_url, {"token_file": str(other)})
            assert await reloader.reload() is None
            sim.state.token = TOKEN_THREE
            start = len(sim.state.log)
            assert (await exporter.poller.poll_once()).apps[0].up
            answer.set()  # the hung check reads TOKEN_TWO now
            assert await asyncio.to_thread(returned.wait, 10)
            for _ in range(2):
                assert (await exporter.poller.poll_once()).apps[0].up
            after = _sent_since(sim, start)
            assert after and all(sent.authorized for sent in after)


async def test_a_reload_while_requests_are_in_flight_moves_the_next_cycle_only(
    tmp_path: Path,
) -> None:
    """A reload of base_url, max_concurrency, rate_limit and the token while a cycle's
    requests are held by the API: the held requests finish on the old client (old
    address, old token), the next cycle goes only to the new address with the new token,
    and the budget is the same object, still counting the held requests."""
    async with (
        Simulator(_world(), token=TOKEN_ONE, ip_limiter="off") as old,
        Simulator(_world(), token=TOKEN_TWO, ip_limiter="off") as new,
    ):
        path = _write_config(tmp_path / "c.yaml", old.base_url, {"token": TOKEN_ONE})
        async with _exporter(path) as (exporter, reloader):
            budget = exporter.token.budget
            old.state.faults = Faults(hold=True)
            cycle = asyncio.ensure_future(exporter.poller.poll_once())
            await _until(lambda: len(old.state.log) >= 1)
            _write_config(
                path,
                new.base_url,
                {"token": TOKEN_TWO, "max_concurrency": 1, "rate_limit": "500/5m"},
            )
            assert await reloader.reload() is None
            old.state.faults = Faults()
            assert (await asyncio.wait_for(cycle, 10)).apps[0].up
            held = len(old.state.log)
            assert held and all(sent.authorized for sent in old.state.log)
            assert not new.state.log
            assert (await exporter.poller.poll_once()).apps[0].up
            assert len(old.state.log) == held
            assert new.state.log and all(sent.authorized for sent in new.state.log)
            assert exporter.token.budget is budget
            assert budget.requests == 500
            assert budget.available() == 500 - held - len(new.state.log)


async def _until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_raised_rate_limit_frees_a_cycle_waiting_for_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is spent and a cycle waits for the window to move (5 minutes); a
    reload raising api.rate_limit lets it go at once. The reload used to be applied only
    at the next cycle, which came after that wait."""
    async with api_simulator(TOKEN_ONE) as sim:
        path = _write_config(
            tmp_path / "c.yaml", sim.base_url, {"token": TOKEN_ONE, "rate_limit": "1/5m"}
        )
        async with _exporter(path) as (exporter, reloader):
            assert (await exporter.poller.poll_once()).apps[0].up
            budget = exporter.token.budget
            assert budget.available() == 0
            waiting = asyncio.Event()
            acquire = budget.acquire

            async def noted(**kwargs: Any) -> float:
                waiting.set()
                return await acquire(**kwargs)

            monkeypatch.setattr(budget, "acquire", noted)
            cycle = asyncio.ensure_future(exporter.poller.poll_once())
            await asyncio.wait_for(waiting.wait(), 10)
            _write_config(path, sim.base_url, {"token": TOKEN_ONE, "rate_limit": "100/5m"})
            assert await reloader.reload() is None
            assert (await asyncio.wait_for(cycle, 10)).apps[0].up
            assert budget.requests == 100


def _world() -> World:
    world = World(seed=3)
    world.populate(ACCOUNT, APP, 2, live=1)
    return world


# -- the simulator's control routes and request log -------------------------------------
@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _listing(sim: Simulator) -> str:
    return f"{sim.base_url}/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams"


@pytest.mark.parametrize(
    "fields",
    [
        {"status": 100},
        {"status": 101},
        {"headers": {"X-Hook": "a\r\nInjected: 1"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"Content-Length": "99999"}},
        {"headers": {"transfer-encoding": "chunked"}},
        {"content_type": "text/plain\r\nInjected: 1"},
        {"content_type": 5},
        {"app_id": 5},
        {"text": 5},
        {"applied": "yes"},
    ],
    ids=[
        "status-100",
        "status-101",
        "header-line-break",
        "header-name-space",
        "content-length",
        "transfer-encoding",
        "content-type-line-break",
        "content-type-number",
        "app-id-number",
        "text-number",
        "applied-text",
    ],
)
async def test_an_answer_that_cannot_be_sent_as_asked_is_refused(
    sim: Simulator, http: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    """POST /answers took these and the API request then hung (a 1xx, a Content-Length
    that is not the body's), failed in the simulator (a line break in a header), broke
    the HTTP framing, or silently did something else (app_id 5 meant every app, text 5
    an answer of null): each is a 400 now, and the next API request is answered as usual."""
    body = {"endpoint": "livestreams", "status": 200, **fields}
    async with http.post(sim.control_url + "/answers", json=body) as response:
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]
    headers = {"Authorization": f"Bearer {sim.state.token}"}
    async with asyncio.timeout(5), http.get(_listing(sim), headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["success"] is True


async def test_answers_waiting_are_bounded(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """At most MAX_ANSWERS fixed answers wait at once (each may hold a body of 1 MiB);
    one more is a 400 until they are cleared."""
    body = {"endpoint": "livestreams", "status": 503, "body": {"success": False}}
    for _ in range(MAX_ANSWERS):
        async with http.post(sim.control_url + "/answers", json=body) as response:
            assert response.status == 201
    async with http.post(sim.control_url + "/answers", json=body) as response:
        assert response.status == 400
        assert "waiting already" in (await response.json())["error"]
    async with http.delete(sim.control_url + "/answers") as response:
        assert response.status == 204
    async with http.post(sim.control_url + "/answers", json=body) as response:
        assert response.status == 201


async def test_a_body_over_the_size_limit_is_logged_and_counted(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A request refused for its body's size (aiohttp's 413, over 1 MiB) reached the
    simulator too: it is in the request log and the stats, as every other answer is; a
    body over LOG_BODY_BYTES is logged without it, one at the limit with it."""
    url = f"{sim.base_url}/accounts/{ACCOUNT}/realtime/kit/{APP}/webhooks"
    async with http.post(url, data=io.BytesIO(b"x" * (2 * 1024 * 1024))) as response:
        assert response.status == 413
    assert sim.state.requests[("add_webhook", 413)] == 1
    (refused,) = sim.state.log
    assert (refused.endpoint, refused.method, refused.body) == ("add_webhook", "POST", None)
    at_limit = b'{"pad": "' + b"y" * (LOG_BODY_BYTES - 11) + b'"}'
    for data in (at_limit, at_limit + b" "):
        async with http.post(url, data=data) as response:
            assert response.status == 401
    assert len(at_limit) == LOG_BODY_BYTES
    assert [s.body is not None for s in list(sim.state.log)[1:]] == [True, False]
