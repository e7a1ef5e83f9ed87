"""The simulator's tokens: several, named, limited to accounts, each with its own rate
limit, rejected or throttled one by one, and named (never quoted) in the request log."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import pytest

from exporter.simulator import RateLimiter, SimToken, Simulator, TokenError, World
from exporter.simulator.tokens import MAX_TOKENS, Tokens, check
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, API_T0, APP, TOKEN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

OTHER_ACCOUNT: Final = "acc-2"
OTHER_APP: Final = "app-9"
AGENCY: Final = "agency-b"
AGENCY_TOKEN: Final = "agency-b-token-0d9c7e21f4"
ROTATED: Final = "agency-b-token-rotated-77aa"
GATEWAY_AUTH: Final = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


class Rig:
    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.sim = sim
        self.http = http
        self.clock = clock

    async def get(self, token: str | None, *, account: str = ACCOUNT, app: str = APP) -> Answer:
        """The app's listing, with ``token`` as the bearer token (None: no header)."""
        url = f"{self.sim.base_url}/accounts/{account}/realtime/kit/{app}/livestreams"
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.http.get(url, headers=headers) as r:
            return Answer(r.status, dict(r.headers), json.loads(await r.text()))

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.sim.control_url + path, json=body) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A simulator with the default token (every account) and AGENCY's (OTHER_ACCOUNT's
    apps only), 3 requests per minute per token, one app in each account."""
    clock = FakeClock(API_T0)
    world = World(clock=clock)
    world.populate(ACCOUNT, APP, 2)
    world.populate(OTHER_ACCOUNT, OTHER_APP, 2)
    agency = SimToken(AGENCY, AGENCY_TOKEN, frozenset({OTHER_ACCOUNT}))
    async with (
        Simulator(
            world,
            token=TOKEN,
            tokens=[agency],
            limiter=RateLimiter(3, 60.0),
            ip_limiter="off",
        ) as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Rig(sim, http, clock)


def remaining(answer: Answer) -> int:
    found = re.fullmatch(r'"default";r=(\d+);t=(\d+)', answer.headers["Ratelimit"])
    assert found is not None
    return int(found.group(1))


# -- accepting tokens -------------------------------------------------------------------------
async def test_each_token_reads_the_accounts_it_may(rig: Rig) -> None:
    """The default token reads every account; a token limited to accounts gets 403 in the
    gateway's envelope for any other (as for an account that does not exist)."""
    assert (await rig.get(TOKEN)).status == 200
    assert (await rig.get(TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 200
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 200
    refused = await rig.get(AGENCY_TOKEN)
    assert (refused.status, refused.body) == (403, GATEWAY_AUTH)
    assert (await rig.get(AGENCY_TOKEN, account="acc-none")).status == 403
    unknown = await rig.get("nobody-knows-this-token")
    assert (unknown.status, unknown.body) == (401, GATEWAY_AUTH)


async def test_tokens_are_added_and_replaced_through_the_control_api(rig: Rig) -> None:
    """POST /tokens adds a token (201) or gives a name a new one (200: the old one is
    refused from then on); GET /tokens shows names and accounts, never a token."""
    new = {"name": "third", "token": "third-token-5be1", "accounts": [ACCOUNT]}
    assert await rig.control("POST", "/tokens", new) == (
        201,
        {"name": "third", "accounts": [ACCOUNT], "replaced": False},
    )
    assert (await rig.get("third-token-5be1")).status == 200
    rotated = {"name": AGENCY, "token": ROTATED, "accounts": None}
    status, body = await rig.control("POST", "/tokens", rotated)
    assert (status, body) == (200, {"name": AGENCY, "accounts": None, "replaced": True})
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 401
    assert (await rig.get(ROTATED)).status == 200  # and now for every account
    status, listed = await rig.control("GET", "/tokens")
    assert status == 200
    assert listed == {
        "tokens": [
            {"name": "default", "accounts": None},
            {"name": AGENCY, "accounts": None},
            {"name": "third", "accounts": [ACCOUNT]},
        ]
    }
    for secret in (TOKEN, AGENCY_TOKEN, ROTATED, "third-token-5be1"):
        assert secret not in json.dumps(listed)


@pytest.mark.parametrize(
    "body",
    [
        {"token": "t-1"},
        {"name": "", "token": "t-1"},
        {"name": "-lead", "token": "t-1"},
        {"name": "x" * 65, "token": "t-1"},
        {"name": "n", "token": ""},
        {"name": "n", "token": "has space"},
        {"name": "n", "token": "line\nbreak"},
        {"name": "n", "token": "t" * 257},
        {"name": "n", "token": 12345},
        {"name": "n", "token": "t-1", "accounts": ACCOUNT},
        {"name": "n", "token": "t-1", "accounts": [""]},
        {"name": "n", "token": "t-1", "accounts": [1]},
        {"name": "n", "token": "t-1", "accounts": ["a"] * 101},
        {"name": "n", "token": "t-1", "colour": "red"},
        {"name": "n", "token": TOKEN},  # the default token's value under another name
    ],
    ids=repr,
)
async def test_bad_tokens_are_400_and_change_nothing(rig: Rig, body: dict[str, Any]) -> None:
    status, answer = await rig.control("POST", "/tokens", body)
    assert status == 400 and isinstance(answer["error"], str)
    assert TOKEN not in answer["error"]
    assert [t.name for t in rig.sim.state.tokens] == ["default", AGENCY]


async def test_at_most_max_tokens_are_accepted(rig: Rig) -> None:
    """New names past MAX_TOKENS are refused; replacing a name still works."""
    for i in range(MAX_TOKENS - 2):
        assert rig.sim.add_token(f"extra-{i}", f"extra-token-{i}") is False
    status, answer = await rig.control("POST", "/tokens", {"name": "one-more", "token": "om-1"})
    assert status == 400 and str(MAX_TOKENS) in answer["error"]
    assert (await rig.control("POST", "/tokens", {"name": "extra-0", "token": "e0-new"}))[0] == 200
    with pytest.raises(TokenError):
        rig.sim.add_token("one-more", "om-1")


def test_the_token_checks() -> None:
    """What the control API checks, on its own; a token's repr never shows its value."""
    token = check("n", "value-1", [ACCOUNT, ACCOUNT])
    assert token == SimToken("n", "value-1", frozenset({ACCOUNT}))
    assert "value-1" not in repr(token) and "value-1" not in repr(Tokens([token]))
    assert token.may_read(ACCOUNT) and not token.may_read(OTHER_ACCOUNT)
    assert check("n", "v", None).may_read("any")
    assert check("n", "v", []).may_read(ACCOUNT) is False  # a token for no account at all
    with pytest.raises(TokenError):
        Tokens([SimToken("n", "a"), SimToken("n", "b")])


async def test_setting_state_token_replaces_the_default_token(rig: Rig) -> None:
    """``state.token``, as before several tokens: reading it gives the default token,
    setting it rotates that one alone."""
    assert rig.sim.state.token == TOKEN
    rig.sim.state.token = "default-rotated-1"
    assert (await rig.get(TOKEN)).status == 401
    assert (await rig.get("default-rotated-1")).status == 200
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 200
    assert set(rig.sim.state.secrets()) == {"default-rotated-1", AGENCY_TOKEN}


# -- one token at a time: rate limit, rejection, throttling ---------------------------------
async def test_each_token_has_its_own_rate_limit_window(rig: Rig) -> None:
    """Overrunning one token's limit blocks that token for a window; the other's requests
    go on, counted in a window of their own."""
    for left in (2, 1, 0):
        assert remaining(await rig.get(TOKEN)) == left
    blocked = await rig.get(TOKEN)
    assert blocked.status == 429 and blocked.body["errors"][0]["code"] == 971
    other = await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)
    assert (other.status, remaining(other)) == (200, 2)
    rig.clock.advance(59)
    assert (await rig.get(TOKEN)).status == 429  # the block lasts a whole window
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 200
    _, stats = await rig.control("GET", "/stats")
    assert stats["tokens"][AGENCY]["requests"] == {"200": 2}
    assert stats["tokens"]["default"]["requests"] == {"200": 3, "429": 2}
    assert stats["tokens"][AGENCY]["busiest_window"]["requests"] == 2
    assert stats["tokens"]["default"]["busiest_window"]["requests"] == 5


async def test_reject_token_can_target_one_token(rig: Rig) -> None:
    """``{"reject_token": true, "token": NAME}`` rejects that token alone (401), false
    accepts it again; without ``token``, every token is rejected as before."""
    status, faults = await rig.control("PUT", "/faults", {"reject_token": True, "token": AGENCY})
    assert status == 200
    assert (faults["reject_token"], faults["rejected_tokens"]) == (False, [AGENCY])
    refused = await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)
    assert (refused.status, refused.body) == (401, GATEWAY_AUTH)
    assert (await rig.get(TOKEN)).status == 200
    await rig.control("PUT", "/faults", {"reject_token": False, "token": AGENCY})
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 200
    await rig.control("PUT", "/faults", {"reject_token": True})
    assert (await rig.get(TOKEN)).status == 401
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 401


@pytest.mark.parametrize(
    "changes",
    [
        {"reject_token": True, "token": "nobody"},
        {"reject_token": True, "token": 7},
        {"reject_token": "yes", "token": AGENCY},
        {"token": AGENCY},
        {"reject_token": True, "token": AGENCY, "error_rate": 0.5},
        {"rejected_tokens": "agency-b"},
        {"rejected_tokens": [" bad name"]},
    ],
    ids=repr,
)
async def test_bad_per_token_faults_are_400_and_change_nothing(
    rig: Rig, changes: dict[str, Any]
) -> None:
    status, body = await rig.control("PUT", "/faults", changes)
    assert status == 400 and isinstance(body["error"], str)
    assert rig.sim.state.faults.rejected_tokens == ()
    assert rig.sim.state.faults.error_rate == 0


async def test_throttle_can_target_one_token(rig: Rig) -> None:
    """POST /throttle with ``token`` blocks that token alone; without it, every token."""
    status, body = await rig.control("POST", "/throttle", {"seconds": 40, "token": AGENCY})
    assert (status, body) == (200, {"blocked_for": 40, "token": AGENCY})
    throttled = await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)
    assert (throttled.status, throttled.headers["Retry-After"]) == (429, "40")
    assert (await rig.get(TOKEN)).status == 200
    assert (await rig.control("POST", "/throttle", {"seconds": 10}))[1] == {"blocked_for": 10}
    assert (await rig.get(TOKEN)).headers["Retry-After"] == "10"
    assert (await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 429
    for bad in ({"token": "nobody"}, {"token": None, "seconds": 5, "extra": 1}, {"token": 3}):
        status, answer = await rig.control("POST", "/throttle", bad)
        assert status == 400 and answer["error"], bad
    status, _ = await rig.control("POST", "/throttle", {"seconds": 5, "token": None})
    assert status == 200  # null: every token, as without the key


async def test_a_rotated_token_starts_a_window_of_its_own(rig: Rig) -> None:
    """Blocked under its old value, a name's new token is not: Cloudflare counts tokens."""
    await rig.control("POST", "/throttle", {"seconds": 60, "token": AGENCY})
    rig.sim.add_token(AGENCY, ROTATED, accounts=[OTHER_ACCOUNT])
    assert (await rig.get(ROTATED, account=OTHER_ACCOUNT, app=OTHER_APP)).status == 200


# -- the request log ----------------------------------------------------------------------------
async def test_the_request_log_names_each_requests_token_and_never_shows_one(rig: Rig) -> None:
    """Each logged request says whether it carried an accepted token and its name (null
    for none or an unknown one); neither the log nor the stats quote any token."""
    await rig.get(TOKEN)
    await rig.get(AGENCY_TOKEN, account=OTHER_ACCOUNT, app=OTHER_APP)
    await rig.get(AGENCY_TOKEN)  # 403: still AGENCY's request
    await rig.get("some-unknown-token-1234")
    await rig.get(None)
    async with rig.http.get(
        rig.sim.base_url + "/nowhere", headers={"Authorization": f"Bearer {AGENCY_TOKEN}"}
    ) as r:
        assert r.status == 404
    status, log = await rig.control("GET", "/requests")
    assert status == 200
    assert [(r["token_name"], r["authorized"]) for r in log["requests"]] == [
        ("default", True),
        (AGENCY, True),
        (AGENCY, True),
        (None, False),
        (None, False),
        (AGENCY, True),
    ]
    _, stats = await rig.control("GET", "/stats")
    assert {name: t["total"] for name, t in stats["tokens"].items()} == {"default": 1, AGENCY: 3}
    shown = (
        json.dumps(log) + json.dumps(stats) + json.dumps((await rig.control("GET", "/faults"))[1])
    )
    for secret in (TOKEN, AGENCY_TOKEN, "some-unknown-token-1234"):
        assert secret not in shown
    assert all(r.token_name in (None, "default", AGENCY) for r in rig.sim.state.log)
