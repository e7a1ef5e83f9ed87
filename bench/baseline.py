"""The benchmark's baseline: the exporter's snapshot, rendered whole on every scrape.

Polls the configured apps ``--polls`` times with the exporter's own code
(:class:`exporter.server.Exporter`), stops polling, and serves ``/metrics`` the way a plain
prometheus_client exporter does: on every scrape the whole registry (the snapshot's
families and the exporter's own metrics) goes through the encoder
``prometheus_client.exposition.choose_encoder`` picks for the ``Accept`` header, in a
worker thread, and is gzip-compressed per scrape when ``gzip_accepted`` says so (at the
exporter's level, 6, not prometheus_client's 9, so that only the caching differs).
Nothing is cached between scrapes.

Run by ``bench/run.py``; prints ``baseline listening on HOST:PORT`` once it serves::

    python bench/baseline.py --config.file CFG --listen 127.0.0.1:0 [--polls 1]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import signal
import sys
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import config as exporter_config
from exporter.server import Exporter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client import CollectorRegistry

GZIP_LEVEL = 6  # exporter.exposition.GZIP_LEVEL


def create_app(registry: CollectorRegistry) -> web.Application:
    """/metrics: ``registry`` rendered whole per scrape; /-/healthy."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        gzipped = gzip_accepted(request.headers.get("Accept-Encoding", ""))

        def render() -> bytes:
            body = encoder(registry)
            return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if gzipped else body

        body = await asyncio.get_running_loop().run_in_executor(None, render)
        headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    return app


async def serve(cfg: exporter_config.Config, host: str, port: int, polls: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Exporter(cfg) as exporter:
        started = time.monotonic()
        snapshot = None
        for _ in range(polls):
            snapshot = await exporter.poller.poll_once()
        streams = sum(len(app.streams) for app in snapshot.apps) if snapshot else 0
        up = all(app.up for app in snapshot.apps) if snapshot else False
        print(
            f"baseline polled {polls}x in {time.monotonic() - started:.2f}s: "
            f"{streams} streams, up={up}",
            flush=True,
        )
        # Polling is over; only scrapes run from here on, against this snapshot.
        runner = web.AppRunner(create_app(exporter.registry), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = [a for a in runner.addresses if isinstance(a, tuple)]
        print(f"baseline listening on {bound[0][0]}:{bound[0][1]}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config.file", dest="config_file", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--polls", type=int, default=1, help="poll cycles before serving (1)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    cfg = exporter_config.load(args.config_file)
    try:
        return asyncio.run(serve(cfg, host or "127.0.0.1", int(port), max(1, args.polls)))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
