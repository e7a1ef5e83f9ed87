"""The simulated API's webhooks, for the tests of registering them (in process and through
the ``webhooks`` command): the apps, the URL registered, and what the API holds and got."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.conftest import ACCOUNT

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.simulator import Simulator
    from exporter.simulator import Webhook as SimWebhook

APPS = ("app-1", "app-2")
# The simulator registers webhooks for loopback hosts only: it may deliver to them.
URL = "https://localhost:10243/webhooks/realtimekit"


def existing(
    sim: Simulator,
    app: str,
    *,
    url: str,
    events: Sequence[str] = ("meeting.started",),
    enabled: bool = True,
    name: str = "someone else's",
) -> str:
    """A webhook made before the test, as RealtimeKit may hold one: any URL, perhaps no
    event (which the simulator's own registration refuses, so they are set after); its id."""
    hook = sim.add_webhook(ACCOUNT, app, url=URL, enabled=enabled, name=name)
    hook.url, hook.events = url, tuple(events)
    return hook.id


def hooks(sim: Simulator, app: str) -> list[SimWebhook]:
    return sim.state.webhooks.of_app(ACCOUNT, app)


def count(sim: Simulator, method: str) -> int:
    """Requests with ``method`` the API received."""
    return sum(1 for sent in sim.state.log if sent.method == method)
