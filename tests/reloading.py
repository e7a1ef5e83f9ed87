"""The exporter started from a config file and reloaded, for the tests of reloads (in the
test process and of the process) and of the command line: the config file (one app, the
token from the environment), the exporter with its Reloader in process, and an executor
that holds each load until the test lets it run."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client import CollectorRegistry

from exporter import config as config_module
from exporter.config import Shard
from exporter.reload import Reloader
from exporter.server import Exporter
from exporter.simulator import REALISTIC, World
from tests.conftest import ACCOUNT, APP

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TOKEN_ENV = "RTK_TEST_TOKEN"  # the configs' token: ${RTK_TEST_TOKEN}
RELOAD_OK = "realtimekit_exporter_config_last_reload_successful"
WHOLE = Shard()


def write_config(
    path: Path,
    base_url: str,
    streams: list[str],
    *,
    interval: str = "1s",
    expect_live: bool | None = None,
    token: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    **api: Any,
) -> Path:
    """A config polling ``streams`` of the app (all of them if none) every ``interval``,
    with the token from TOKEN_ENV unless ``token`` says otherwise."""
    expect = {} if expect_live is None else {"expect_live": expect_live}
    document: dict[str, Any] = {
        "api": {
            "base_url": base_url,
            **(token or {"token": f"${{{TOKEN_ENV}}}"}),
            "timeout": "2s",
            **api,
        },
        # Off: these tests count the polling's requests (analytics: test_analytics.py).
        "poll": {"interval": interval, "analytics_interval": "off"},
        "apps": [
            {
                "account_id": ACCOUNT,
                "app_id": APP,
                "livestreams": [{"id": s, **expect} for s in streams],
                **({} if streams else {"discover": True}),
            }
        ],
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def cli_config(tmp_path: Path, base_url: str, *, interval: str = "30s") -> Path:
    """``tmp_path/config.yaml`` for the command line's tests: stream ls-1, expected live."""
    return write_config(
        tmp_path / "config.yaml", base_url, ["ls-1"], interval=interval, expect_live=True
    )


def simulated_world() -> World:
    world = World(seed=5, profile=REALISTIC)
    world.populate(ACCOUNT, APP, 3, live=1)
    return world


@contextlib.asynccontextmanager
async def exporter_for(
    path: Path, *, shard: Shard = WHOLE
) -> AsyncIterator[tuple[Exporter, Reloader, CollectorRegistry]]:
    """The exporter of the config at ``path``, in process, and a Reloader of that file."""
    registry = CollectorRegistry()
    config = config_module.load(str(path), shard=shard)
    async with Exporter(config, registry=registry, process_metrics=False) as exporter:
        yield exporter, Reloader(exporter=exporter, config_file=str(path)), registry


class GatedExecutor(concurrent.futures.Executor):
    """Runs each load in a thread of its own once ``gate`` is set, counting them."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.loads = 0
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            with self._lock:
                self.loads += 1
            self.gate.wait(10)
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the reload that awaits it
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return future
