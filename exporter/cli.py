"""Command line: flags, logging, exit codes. The only module that decides how the process ends."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from typing import TYPE_CHECKING, Final

from prometheus_client import generate_latest

from exporter import __version__, config, logs
from exporter.server import Exporter, ServeError, Server

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
DEFAULT_PORT: Final = 10241
DEFAULT_LISTEN: Final = f":{DEFAULT_PORT}"

log = logging.getLogger("exporter")
_PORT = re.compile(r"[0-9]{1,5}")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would exit by itself; main() chooses the exit code and the one line.
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="realtimekit-exporter",
        description="Prometheus exporter for Cloudflare RealtimeKit livestreams.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    cfg = parser.add_argument_group("configuration")
    cfg.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="YAML configuration file (see config.example.yaml)",
    )
    cfg.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration, print a summary and exit (0 ok, 2 invalid)",
    )
    web_group = parser.add_argument_group("web")
    web_group.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (default {DEFAULT_LISTEN}, all interfaces)",
    )
    log_group = parser.add_argument_group("logging")
    log_group.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=list(logs.LEVELS),
        help="default info",
    )
    log_group.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="default logfmt",
    )
    run = parser.add_argument_group("run mode")
    run.add_argument(
        "--once",
        action="store_true",
        help="poll once, print the exposition to stdout and exit "
        "(0 if every app was polled successfully, else 1)",
    )
    return parser


def parse_listen(address: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not _PORT.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--web.listen-address {address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise UsageError(f"--web.listen-address {address!r}: empty brackets")
    elif ":" in host:
        raise UsageError(f"--web.listen-address {address!r}: write IPv6 hosts as [addr]:port")
    return (host or None), int(port_text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        listen = parse_listen(args.listen)
        if not args.config_file:
            raise UsageError("--config.file is required")
    except UsageError as exc:
        return _fail(EXIT_USAGE, f"usage error: {exc} (see --help)")

    try:
        cfg = config.load(args.config_file)
    except config.ConfigError as exc:
        return _fail(EXIT_USAGE, f"invalid configuration: {exc}")

    if args.config_check:
        print(f"{cfg.source}: OK: {cfg.summary()}")
        return EXIT_OK

    token = cfg.api.token.reveal()
    logs.configure(level=args.log_level, fmt=args.log_format, secrets=lambda: (token,))
    try:
        if args.once:
            return asyncio.run(_once(cfg))
        return asyncio.run(_serve(cfg, *listen))
    except ServeError as exc:
        return _fail(EXIT_FAILURE, str(exc))
    except KeyboardInterrupt:
        # Only reachable before the signal handlers are in place.
        return _fail(EXIT_FAILURE, "interrupted") if args.once else EXIT_OK


async def _once(cfg: config.Config) -> int:
    async with Exporter(cfg) as exporter:
        poll = asyncio.ensure_future(exporter.poller.poll_once())
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, poll.cancel)
            snapshot = await poll
        except asyncio.CancelledError:
            if poll.cancelled():  # by a signal: an interrupted poll is not a success
                return _fail(EXIT_FAILURE, "interrupted before the poll completed")
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if not poll.done():  # never leave the poll running against a closed session
                poll.cancel()
                await asyncio.wait({poll})
        sys.stdout.buffer.write(generate_latest(exporter.registry))
        sys.stdout.flush()
    return EXIT_OK if all(app.up for app in snapshot.apps) else EXIT_FAILURE


async def _serve(cfg: config.Config, host: str | None, port: int) -> int:
    async with Exporter(cfg) as exporter:
        server = Server(exporter, host=host, port=port)
        await server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        log.info("started realtimekit-exporter %s: %s", __version__, cfg.summary())
        try:
            await server.wait()
            log.info("shutting down")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await server.close()
    return EXIT_FAILURE if server.failure is not None else EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"realtimekit-exporter: {message}", file=sys.stderr)
    return code
