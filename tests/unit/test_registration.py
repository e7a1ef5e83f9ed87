"""Webhook registration against the simulated API: once per app, never a duplicate."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import aiohttp
import pytest

from exporter import registration
from exporter.budget import RequestBudget
from exporter.client import RealtimeKitClient
from exporter.config import (
    ApiConfig,
    AppConfig,
    Config,
    Secret,
    WebhooksConfig,
)
from exporter.model import Webhook
from exporter.registration import (
    EVENT,
    AppWebhooks,
    InvalidUrl,
    Registered,
    RegistrationError,
    Unregistered,
)
from exporter.simulator import Canned, Faults
from tests.conftest import ACCOUNT, TOKEN, api_simulator
from tests.registering import APPS, URL, count, existing, hooks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from exporter.simulator import Simulator

OTHER_URL = "https://elsewhere.example.com/hooks"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with api_simulator(apps=APPS) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with debug logging, and its log must not quote the token."""
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text


def make_config(sim: Simulator, *, apps: tuple[str, ...] = APPS, webhooks: bool = True) -> Config:
    return Config(
        api=ApiConfig(token=Secret(TOKEN), base_url=sim.base_url, timeout=2.0),
        apps=tuple(AppConfig(account_id=ACCOUNT, app_id=app, discover=True) for app in apps),
        webhooks=WebhooksConfig() if webhooks else None,
    )


@contextlib.asynccontextmanager
async def api_client(cfg: Config) -> AsyncIterator[RealtimeKitClient]:
    """A client as registration.api_client makes it, but retrying without waiting."""
    async with aiohttp.ClientSession() as session:
        yield RealtimeKitClient(
            session=session,
            base_url=cfg.api.base_url,
            token=cfg.api.token,
            budget=RequestBudget(requests=100, window=60.0),
            timeout=cfg.api.timeout,
            jitter=lambda: 0.0,
        )


async def register(sim: Simulator, url: str = URL, **kw: str) -> tuple[Registered, ...]:
    cfg = make_config(sim)
    async with api_client(cfg) as client:
        return await registration.register(client, cfg, url, **kw)


async def unregister(sim: Simulator, url: str = URL) -> tuple[Unregistered, ...]:
    cfg = make_config(sim)
    async with api_client(cfg) as client:
        return await registration.unregister(client, cfg, url)


async def list_all(sim: Simulator) -> tuple[AppWebhooks, ...]:
    cfg = make_config(sim)
    async with api_client(cfg) as client:
        return await registration.list_webhooks(client, cfg)


async def test_run_makes_its_own_client_from_the_config(sim: Simulator) -> None:
    """registration.run opens a session for the config's token and base URL, and closes it."""
    cfg = make_config(sim)
    registered = await registration.run(cfg, "register", url=URL)
    assert [r.action for r in registered if isinstance(r, Registered)] == ["created", "created"]
    listed = await registration.run(cfg, "list")
    assert [len(r.webhooks) for r in listed if isinstance(r, AppWebhooks)] == [1, 1]
    assert all(sent.authorized for sent in sim.state.log)
    assert sim.state.log[0].path == f"/client/v4/accounts/{ACCOUNT}/realtime/kit/app-1/webhooks"


# --- register -----------------------------------------------------------------------------


async def test_register_creates_one_webhook_per_app_and_a_second_run_keeps_it(
    sim: Simulator,
) -> None:
    """The first run creates one enabled webhook per app with the event; the second run
    lists, finds it and keeps it: exactly one POST per app over both runs."""
    first = await register(sim)
    assert [(r.app.app_id, r.action) for r in first] == [("app-1", "created"), ("app-2", "created")]
    second = await register(sim)
    assert [(r.action, r.webhook.id) for r in second] == [("kept", r.webhook.id) for r in first]
    assert count(sim, "POST") == 2 and count(sim, "PATCH") == 0
    for app in APPS:
        (hook,) = hooks(sim, app)
        assert (hook.url, hook.events, hook.enabled) == (URL, (EVENT,), True)
        assert hook.name == registration.DEFAULT_NAME
    posted = [sent.body for sent in sim.state.log if sent.method == "POST"]
    assert posted[0] == {
        "name": "realtimekit-exporter",
        "url": URL,
        "events": [EVENT],
        "enabled": True,
    }


async def test_register_uses_the_given_name_and_leaves_other_urls_alone(
    sim: Simulator,
) -> None:
    """A webhook with another URL is no match: a new one is created, the other untouched."""
    other = existing(sim, "app-1", url=OTHER_URL, events=[EVENT])
    results = await register(sim, name="edge exporter")
    assert results[0].action == "created"
    by_id = {hook.id: hook for hook in hooks(sim, "app-1")}
    assert by_id[other].url == OTHER_URL and len(by_id) == 2
    assert by_id[results[0].webhook.id].name == "edge exporter"


@pytest.mark.parametrize(
    ("events", "enabled", "expected_events"),
    [
        (["meeting.started", EVENT], False, ["meeting.started", EVENT]),
        (["meeting.started"], True, ["meeting.started", EVENT]),
        ([], False, [EVENT]),
    ],
    ids=["disabled", "without-the-event", "disabled-without-events"],
)
async def test_a_webhook_with_the_url_that_would_not_deliver_is_patched_not_duplicated(
    sim: Simulator, events: list[str], enabled: bool, expected_events: list[str]
) -> None:
    """A disabled webhook, or one without the event, is PATCHed to enabled with the event
    added to its own: no POST, its id and other events stay."""
    hook_id = existing(sim, "app-1", url=URL, events=events, enabled=enabled)
    results = await register(sim)
    assert (results[0].action, results[0].webhook.id) == ("updated", hook_id)
    assert results[0].webhook.enabled and EVENT in results[0].webhook.events
    (patch,) = [sent for sent in sim.state.log if sent.method == "PATCH"]
    assert patch.path.endswith(f"/realtime/kit/app-1/webhooks/{hook_id}")
    assert patch.body == {"events": expected_events, "enabled": True}
    (hook,) = hooks(sim, "app-1")
    assert (hook.id, list(hook.events), hook.enabled) == (hook_id, expected_events, True)
    assert count(sim, "POST") == 1  # for app-2 only


async def test_a_url_differing_only_in_host_case_is_the_same_webhook(
    sim: Simulator,
) -> None:
    """The API's copy of the URL with an upper-case host still matches: kept, not doubled."""
    existing(sim, "app-1", url=URL.replace("localhost", "LocalHost"), events=[EVENT])
    results = await register(sim)
    assert results[0].action == "kept"


async def test_earlier_duplicates_are_counted_and_one_of_them_kept(sim: Simulator) -> None:
    """Two webhooks with the URL from before: the one that delivers is kept, the other
    counted in ``others`` (and said in the printed line)."""
    existing(sim, "app-1", url=URL, events=["meeting.started"])
    good = existing(sim, "app-1", url=URL, events=[EVENT])
    result = (await register(sim))[0]
    assert (result.action, result.webhook.id, result.others) == ("kept", good, 1)
    (line,) = registration.describe(result)
    assert line.startswith(f"acc-1/app-1: kept webhook {good} (1 more webhook(s)")
    assert count(sim, "PATCH") == 0


async def test_a_post_answered_503_is_not_sent_again(sim: Simulator) -> None:
    """A 503 to the POST is not retried (the webhook might exist): one POST, a new listing
    that shows none, then the POST's error naming the app and the reason."""
    sim.state.answer_next(
        "add_webhook", Canned(503, {"success": False, "error": {"code": 503}}), times=3
    )
    with pytest.raises(RegistrationError) as caught:
        await register(sim)
    assert count(sim, "POST") == 1
    assert count(sim, "GET") == 2  # the listing, and the look after the failed POST
    error = caught.value
    assert str(error).startswith("app acc-1/app-1: cannot register a webhook (http_error):")
    assert "HTTP 503" in str(error) and not error.permission
    assert error.done == () and error.app.app_id == "app-1"
    assert hooks(sim, "app-1") == []


async def test_a_post_whose_answer_was_lost_is_found_by_listing_again(
    sim: Simulator,
) -> None:
    """A POST that created the webhook but was answered 502: the new listing finds it, so
    it counts as created, and no second POST is sent."""
    failure = Canned(502, {"success": False, "error": {"code": 500}}, applied=True)
    sim.state.answer_next("add_webhook", failure, app_id="app-1")
    results = await register(sim)
    assert [r.action for r in results] == ["created", "created"]
    assert count(sim, "POST") == 2  # one per app
    assert len(hooks(sim, "app-1")) == 1


async def test_a_failing_app_ends_the_run_and_keeps_what_was_done(sim: Simulator) -> None:
    """An API error on the second app is raised naming that app; the first app's result
    is in the error's ``done``."""
    failure = Canned(500, {"success": False, "error": {"code": 500}})
    sim.state.answer_next("webhooks", failure, times=3, app_id="app-2")  # a try and 2 retries
    with pytest.raises(RegistrationError) as caught:
        await register(sim)
    assert caught.value.app.app_id == "app-2"
    assert str(caught.value).startswith("app acc-1/app-2: cannot register a webhook (http_error)")
    (done,) = caught.value.done
    assert isinstance(done, Registered)
    assert (done.app.app_id, done.action) == ("app-1", "created")


# --- refusal --------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["register", "unregister", "list"])
async def test_a_token_without_permission_is_told_which_permission_it_needs(
    sim: Simulator, call: str
) -> None:
    """A 403 in the gateway's envelope fails at once (no retry) with a message naming the
    app and the Realtime Admin (or Realtime) permission, never the token."""
    sim.state.faults = Faults(webhooks_forbidden=True)
    runs: dict[str, Callable[[Simulator], Awaitable[object]]] = {
        "register": register,
        "unregister": unregister,
        "list": list_all,
    }
    run = runs[call]
    with pytest.raises(RegistrationError) as caught:
        await run(sim)
    message = str(caught.value)
    assert message.startswith("app acc-1/app-1: the API refused the token")
    assert "HTTP 403" in message and "Authentication error" in message
    assert "Realtime Admin (or Realtime) permission" in message
    assert caught.value.permission
    assert TOKEN not in message and TOKEN not in repr(caught.value)
    assert len(sim.state.log) == 1


async def test_a_wrong_token_is_refused_with_the_same_hint(sim: Simulator) -> None:
    """A 401 (a token the API does not know) gives the permission hint too."""
    sim.state.token = "some-other-token-0000000000"
    with pytest.raises(RegistrationError) as caught:
        await list_all(sim)
    assert "HTTP 401" in str(caught.value) and "Realtime Admin" in str(caught.value)


# --- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://exporter.example.com/webhooks/realtimekit", "only for a loopback host"),
        ("http://10.0.0.5/webhooks/realtimekit", "only for a loopback host"),
        ("ftp://exporter.example.com/webhooks/realtimekit", "absolute https:// URL"),
        ("https://user:s3cr3t-pw@exporter.example.com/webhooks/realtimekit", "credentials"),
        ("https://:s3cr3t-pw@exporter.example.com/webhooks/realtimekit", "credentials"),
        ("/webhooks/realtimekit", "absolute https:// URL"),
        ("https:///webhooks/realtimekit", "absolute https:// URL"),
        ("exporter.example.com/webhooks/realtimekit", "absolute https:// URL"),
        ("https://exporter.example.com/webhooks/realtimekit#x", "fragment"),
        ("https://exporter.example.com/webhooks/real timekit", "spaces"),
        ("https://exporter.example.com:99999/webhooks/realtimekit", "cannot be parsed"),
        ("https://[::1/webhooks/realtimekit", "cannot be parsed"),
        ("", "spaces"),
    ],
    ids=[
        "http-public-host",
        "http-private-address",
        "ftp",
        "user-and-password",
        "password",
        "relative",
        "no-host",
        "no-scheme",
        "fragment",
        "space",
        "port-out-of-range",
        "bad-bracket",
        "empty",
    ],
)
async def test_a_bad_url_fails_before_any_request(sim: Simulator, url: str, says: str) -> None:
    """A URL RealtimeKit cannot deliver to is refused before anything is sent, with a
    message that says why and never shows a password."""
    with pytest.raises(InvalidUrl) as caught:
        await register(sim, url)
    assert says in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    assert not sim.state.log


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:10243/webhooks/realtimekit",
        "http://127.1.2.3/webhooks/realtimekit",
        "http://[::1]:10243/webhooks/realtimekit",
        "http://localhost:10243/webhooks/realtimekit",
        "https://exporter.example.com/webhooks/realtimekit",
        "https://exporter.example.com:8443/webhooks/realtimekit?k=v",
    ],
    ids=["v4-loopback", "v4-loopback-net", "v6-loopback", "localhost", "https", "port-query"],
)
def test_https_and_loopback_http_urls_pass_without_warning(url: str) -> None:
    """https:// anywhere, http:// on a loopback host, with the configured path: no warning."""
    assert registration.check_url(url, webhooks=WebhooksConfig()) == ()


def test_a_path_other_than_webhooks_path_is_a_warning_not_an_error() -> None:
    """Another path passes (a proxy may rewrite it) with a warning naming both paths."""
    (warning,) = registration.check_url(
        "https://exporter.example.com/rtk", webhooks=WebhooksConfig(path="/webhooks/realtimekit")
    )
    assert "'/rtk'" in warning and "'/webhooks/realtimekit'" in warning
    (warning,) = registration.check_url(
        "https://exporter.example.com", webhooks=WebhooksConfig(path="/hooks")
    )
    assert "'/'" in warning


def test_a_config_without_a_webhooks_section_is_a_warning() -> None:
    """Without a webhooks section nothing would receive the deliveries: said, not refused."""
    (warning,) = registration.check_url(URL, webhooks=None)
    assert "no webhooks section" in warning


async def test_register_refuses_an_empty_name_before_any_request(sim: Simulator) -> None:
    """A blank name is a ValueError, raised before the API is asked anything."""
    with pytest.raises(ValueError, match="name"):
        await register(sim, name="  ")
    assert not sim.state.log


# --- unregister and list --------------------------------------------------------------------


async def test_unregister_deletes_every_webhook_with_the_url_and_nothing_else(
    sim: Simulator,
) -> None:
    """Each webhook with the URL (enabled or not) is deleted; others stay; counts per app."""
    doomed = {
        existing(sim, "app-1", url=URL, events=[EVENT]),
        existing(sim, "app-1", url=URL, enabled=False),
    }
    kept = existing(sim, "app-1", url=OTHER_URL, events=[EVENT])
    other_app = existing(sim, "app-2", url=OTHER_URL)
    results = await unregister(sim)
    assert [(r.app.app_id, len(r.deleted)) for r in results] == [("app-1", 2), ("app-2", 0)]
    assert set(results[0].deleted) == doomed
    assert [hook.id for hook in hooks(sim, "app-1")] == [kept]
    assert [hook.id for hook in hooks(sim, "app-2")] == [other_app]
    assert count(sim, "DELETE") == 2
    assert [registration.describe(r) for r in results] == [
        ["acc-1/app-1: deleted 2"],
        ["acc-1/app-2: deleted 0"],
    ]


async def test_unregister_after_register_leaves_no_webhook(sim: Simulator) -> None:
    """register then unregister: the apps have no webhook left, and a second unregister
    deletes nothing."""
    await register(sim)
    assert [len(r.deleted) for r in await unregister(sim)] == [1, 1]
    assert [len(r.deleted) for r in await unregister(sim)] == [0, 0]
    assert hooks(sim, "app-1") == [] and hooks(sim, "app-2") == []


async def test_unregister_accepts_any_absolute_url_but_nothing_else(sim: Simulator) -> None:
    """A webhook made elsewhere with a URL register would refuse can still be removed; a
    relative URL is refused before any request."""
    existing(sim, "app-1", url="http://old.example.com/hook")
    assert [len(r.deleted) for r in await unregister(sim, "http://old.example.com/hook")] == [1, 0]
    requests = len(sim.state.log)
    with pytest.raises(InvalidUrl):
        await unregister(sim, "/hook")
    assert len(sim.state.log) == requests


async def test_list_returns_each_apps_webhooks(sim: Simulator) -> None:
    """list gives every webhook per app, decoded, and describes each on one line."""
    hook_id = existing(sim, "app-1", url=URL, events=[EVENT, "meeting.ended"], enabled=False)
    results = await list_all(sim)
    assert [(r.app.app_id, r.webhooks) for r in results] == [
        (
            "app-1",
            (
                Webhook(
                    id=hook_id,
                    url=URL,
                    name="someone else's",
                    events=(EVENT, "meeting.ended"),
                    enabled=False,
                ),
            ),
        ),
        ("app-2", ()),
    ]
    assert registration.describe(results[0]) == [
        f"acc-1/app-1: id={hook_id} url={URL} events={EVENT},meeting.ended enabled=false "
        'name="someone else\'s"'
    ]
    assert registration.describe(results[1]) == ["acc-1/app-2: no webhooks"]


def test_describe_quotes_text_with_spaces_or_control_characters() -> None:
    """Odd text from the API stays on one line, JSON-quoted."""
    app = AppConfig(account_id=ACCOUNT, app_id="app-1")
    hook = Webhook(id="a b", url="https://x.example/\nfake", events=())
    (line,) = registration.describe(AppWebhooks(app, (hook,)))
    assert "\n" not in line
    assert 'id="a b"' in line and 'url="https://x.example/\\nfake"' in line
    assert 'events="" enabled=true name=""' in line
