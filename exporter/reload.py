"""Re-reading the configuration files while running (SIGHUP, ``POST /-/reload``).

:class:`Reloader` reads the configuration file (and with it the token) and the web
configuration file again, and hands them over only if both are valid: the configuration
to the :class:`~exporter.server.Exporter`, which polls by it from its next cycle on, and
the web configuration to the server's :class:`~exporter.webconfig.WebState`, for the next
request or TLS handshake. A rejected reload changes nothing; it is logged once with its
problems (never the token) and sets ``realtimekit_exporter_config_last_reload_successful``
to 0. ``--shard`` and ``--total-shards`` stay as the command line gave them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from exporter import config, webconfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.server import Exporter
    from exporter.webconfig import WebState

log = logging.getLogger(__name__)


def load_config(path: str, shard: config.Shard) -> config.Config:
    """:func:`exporter.config.load` for this process's ``shard``; :class:`ConfigError`."""
    cfg = dataclasses.replace(config.load(path), shard=shard)
    if shard.total > cfg.api.rate_limit.requests:
        raise config.ConfigError(
            [
                f"api.rate_limit: {cfg.api.rate_limit} is fewer requests than "
                f"--total-shards={shard.total}: every shard needs one of its own"
            ],
            source=cfg.source,
        )
    return cfg


class Reloader:
    """Reloads ``config_file`` and ``web_config_file`` (either may be None: not reloaded)
    into ``exporter`` and ``web_state``; one reload at a time."""

    def __init__(
        self,
        *,
        exporter: Exporter,
        config_file: str | None,
        web_config_file: str | None = None,
        web_state: WebState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if web_config_file is not None and web_state is None:
            raise ValueError("a web config file needs the WebState it replaces")
        self._exporter = exporter
        self._config_file = config_file
        self._web_config_file = web_config_file
        self._web_state = web_state
        self._clock = clock
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Reloader(config_file={self._config_file!r})"

    async def reload(self) -> str | None:
        """Reload; None if the new configuration is in force, else why it was rejected."""
        async with self._lock:
            problems: list[str] = []
            new_config = new_web = None
            if self._config_file is not None:
                shard = self._exporter.config.shard
                try:
                    new_config = await asyncio.to_thread(load_config, self._config_file, shard)
                except config.ConfigError as exc:
                    problems.append(f"invalid configuration: {exc}")
            if self._web_config_file is not None and self._web_state is not None:
                try:
                    new_web = await asyncio.to_thread(webconfig.load, self._web_config_file)
                except webconfig.WebConfigError as exc:
                    problems.append(f"invalid web configuration: {exc}")
                else:
                    if (problem := self._web_state.problem(new_web)) is not None:
                        problems.append(f"{new_web.source}: {problem}")
            if problems:
                reason = "; ".join(problems)
                self._exporter.metrics.config_loaded(ok=False, at=self._clock())
                log.error("reload rejected, the running configuration stays: %s", reason)
                return reason
            done = []
            if new_config is not None:
                self._exporter.reconfigure(new_config)
                done.append(f"{new_config.source} from the next poll cycle")
            if new_web is not None and self._web_state is not None:
                self._web_state.replace(new_web)
                done.append(f"{new_web.source} from the next request")
            self._exporter.metrics.config_loaded(ok=True, at=self._clock())
            log.info("configuration reloaded: %s", ", ".join(done) or "no file to read")
            return None
