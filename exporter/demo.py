"""Demo mode: a simulated RealtimeKit app and the configuration that polls it.

``realtimekit-exporter --demo`` serves :func:`world` from an in-process simulator on a
loopback port and runs the exporter with :func:`config`, so that a user without a token
sees streams start and stop within a minute. The exporter receives the simulator's
status webhooks on a loopback port of its own (:func:`subscribe`), so a stop shows on
/metrics about a second after it happens.
"""

from __future__ import annotations

import secrets
from typing import Final

from exporter.config import (
    ApiConfig,
    AppConfig,
    Config,
    LivestreamConfig,
    PollConfig,
    Secret,
    WebhooksConfig,
)
from exporter.simulator import DEMO, Simulator, World

ACCOUNT_ID: Final = "demo-account"
MAIN_APP: Final = "demo-app"
EVENTS_APP: Final = "demo-events"
INTERVAL: Final = 5.0


def world(seed: int = 0) -> World:
    """Two apps: one with six streams, three live at a time (four cycle, two stay dormant),
    one with three, two live at a time (all three cycle). With the demo profile's phases
    (live 40-90 s, idle 10-30 s) a stream goes live and another stops within the first
    half minute."""
    demo = World(seed=seed, profile=DEMO)
    demo.populate(ACCOUNT_ID, MAIN_APP, 6, live=3)
    demo.populate(ACCOUNT_ID, EVENTS_APP, 3, live=2)
    return demo


def token() -> str:
    """A throwaway token that the in-process simulator accepts."""
    return "demo-" + secrets.token_urlsafe(24)


def config(
    simulated: World, base_url: str, api_token: str, *, key_url: str | None = None
) -> Config:
    """Discover every stream of both apps; expect the main app's first stream to be live.
    With ``key_url`` (the simulator's key document), receive webhooks on a free loopback
    port."""
    main = simulated.streams(ACCOUNT_ID, MAIN_APP) or []
    expected = tuple(LivestreamConfig(id=s.id, expect_live=True) for s in main[:1])
    return Config(
        api=ApiConfig(token=Secret(api_token), base_url=base_url),
        # Analytics every minute: the demo shows them soon after it starts.
        poll=PollConfig(interval=INTERVAL, max_staleness=60.0, analytics_interval=60.0),
        apps=(
            AppConfig(account_id=ACCOUNT_ID, app_id=MAIN_APP, discover=True, livestreams=expected),
            AppConfig(account_id=ACCOUNT_ID, app_id=EVENTS_APP, discover=True),
        ),
        source="demo",
        webhooks=(
            None
            if key_url is None
            else WebhooksConfig(host="127.0.0.1", port=0, public_key_url=key_url)
        ),
    )


def subscribe(simulator: Simulator, receiver_url: str) -> None:
    """Subscribe both apps' status changes to ``receiver_url``, as ``webhooks register``
    does against the real API."""
    for app_id in (MAIN_APP, EVENTS_APP):
        simulator.add_webhook(ACCOUNT_ID, app_id, url=receiver_url, name="demo")
