"""Re-reading the configuration files while running (SIGHUP, ``POST /-/reload``).

:class:`Reloader` reads the configuration file (and with it the token) and the web
configuration file again, and hands them over only if both are valid: the configuration
to the :class:`~exporter.server.Exporter`, which polls by it from its next cycle on, and
the web configuration to the server's :class:`~exporter.webconfig.WebState`, for the next
request or TLS handshake. A rejected reload changes nothing; it is logged once with its
problems (never the token) and sets ``realtimekit_exporter_config_last_reload_successful``
to 0, whatever went wrong: a reload never raises. ``--shard`` and ``--total-shards`` stay
as the command line gave them.

The files are read and parsed in a daemon thread (:mod:`exporter.workers`): a stopping
process does not wait for the parse of a large file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Final, TypeVar

from exporter import config, webconfig
from exporter.logs import THROTTLED
from exporter.workers import DaemonExecutor

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor

    from exporter.server import Exporter
    from exporter.webconfig import WebState

T = TypeVar("T")

log = logging.getLogger(__name__)

_LOADS: Final = DaemonExecutor(1, name="reload")  # one reload at a time anyway


class Reloader:
    """Reloads ``config_file`` and ``web_config_file`` (either may be None: not reloaded)
    into ``exporter`` and ``web_state``; one reload at a time, and those asked for while
    one runs merged into one that starts after it."""

    def __init__(
        self,
        *,
        exporter: Exporter,
        config_file: str | None,
        web_config_file: str | None = None,
        web_state: WebState | None = None,
        clock: Callable[[], float] = time.time,
        executor: Executor = _LOADS,
    ) -> None:
        if web_config_file is not None and web_state is None:
            raise ValueError("a web config file needs the WebState it replaces")
        self._exporter = exporter
        self._config_file = config_file
        self._web_config_file = web_config_file
        self._web_state = web_state
        self._clock = clock
        self._executor = executor
        self._running: asyncio.Future[str | None] | None = None
        self._next: asyncio.Future[str | None] | None = None

    def __repr__(self) -> str:
        return f"Reloader(config_file={self._config_file!r})"

    async def reload(self) -> str | None:
        """Reload; None if the new configuration is in force, else why it was rejected.

        Asked while a reload runs, it waits for the next one, which starts when that one
        ends and reads the files as they are by then; all who ask meanwhile share it. So
        however many SIGHUPs or ``POST /-/reload`` come, at most two reloads are under
        way (300 requests once queued 300 reloads, six minutes of CPU). The reload runs
        to its end even if the caller is cancelled (a client that hung up)."""
        if self._next is None:
            self._next = asyncio.ensure_future(self._after(self._running))
        return await asyncio.shield(self._next)

    async def _after(self, running: asyncio.Future[str | None] | None) -> str | None:
        if running is not None:
            await asyncio.wait({running})
        self._running, self._next = self._next, None
        return await self._reload()

    async def _reload(self) -> str | None:
        problems: list[str] = []
        new_config = new_web = None
        if self._config_file is not None:
            load = functools.partial(config.load, shard=self._exporter.config.shard)
            new_config = await self._load("configuration", problems, load, self._config_file)
        if self._web_config_file is not None and self._web_state is not None:
            new_web = await self._load(
                "web configuration", problems, webconfig.load, self._web_config_file
            )
            problem = None if new_web is None else self._web_state.problem(new_web)
            if new_web is not None and problem is not None:
                problems.append(f"{new_web.source}: {problem}")
        if problems:
            reason = "; ".join(problems)
            self._exporter.metrics.config_loaded(ok=False, at=self._clock())
            log.error(
                "reload rejected, the running configuration stays: %s",
                reason,
                extra=THROTTLED,
            )
            return reason
        done = []
        if new_config is not None:
            self._exporter.reconfigure(new_config)
            done.append(f"{new_config.source} from the next poll cycle")
        if new_web is not None and self._web_state is not None:
            self._web_state.replace(new_web)
            done.append(f"{new_web.source} from the next request")
        self._exporter.metrics.config_loaded(ok=True, at=self._clock())
        log.info(
            "configuration reloaded: %s", ", ".join(done) or "no file to read", extra=THROTTLED
        )
        return None

    async def _load(
        self, what: str, problems: list[str], load: Callable[..., T], *args: object
    ) -> T | None:
        """``load(*args)`` in a thread; None, with the reason added to ``problems``, if it
        fails in any way."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, load, *args)
        except config.ConfigError as exc:  # WebConfigError is one too
            problems.append(f"invalid {what}: {exc}")
        # The one broad guard of a reload: SIGHUP runs it as a task nobody awaits, so an
        # error raised here would be lost, with the gauge and the log saying nothing. Only
        # the type is told: the message of an unexpected error may quote the file.
        except Exception as exc:
            problems.append(f"cannot load the {what}: unexpected {type(exc).__name__}")
        return None
