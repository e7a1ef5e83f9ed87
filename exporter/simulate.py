"""``realtimekit-exporter simulate``: serve a simulated RealtimeKit API (for demos, tests
and benchmarks). The simulator is imported when this command runs, not at every start."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Final

from exporter import config, logs
from exporter.cliargs import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    count,
    duration,
    fail,
    parse_listen,
    share,
)
from exporter.signals import Signals

if TYPE_CHECKING:
    import argparse

    from exporter.simulator import Simulator

SIMULATOR_LISTEN: Final = "127.0.0.1:10242"
SIMULATOR_TOKEN_ENV: Final = "REALTIMEKIT_SIMULATOR_TOKEN"  # noqa: S105 (a variable name)
# The simulator guards nothing; its token only exercises the exporter's auth handling.
SIMULATOR_DEFAULT_TOKEN: Final = "simulator-token"  # noqa: S105

log = logging.getLogger("exporter")


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """The ``simulate`` command's arguments, under ``commands``."""
    sim = commands.add_parser(
        "simulate",
        help="serve a simulated RealtimeKit livestream API (for demos, tests, benchmarks)",
        description="Serve a simulated RealtimeKit livestream API with a control interface "
        "under /-/simulator. The token it accepts is read from --token-file, else from "
        f"${SIMULATOR_TOKEN_ENV}, else it is {SIMULATOR_DEFAULT_TOKEN!r}; it is named "
        '"default", and more are added by name with POST /-/simulator/tokens.',
    )
    sim.add_argument(
        "--listen",
        default=SIMULATOR_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve on (default {SIMULATOR_LISTEN}; port 0 picks a free one); "
        "the control interface has no auth, so keep it on loopback",
    )
    sim.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    sim.add_argument("--account-id", default="sim-account", help="default sim-account")
    sim.add_argument("--app-id", default="sim-app", help="default sim-app")
    sim.add_argument("--livestreams", type=count, default=20, help="streams to create (20)")
    sim.add_argument(
        "--live",
        type=count,
        default=5,
        help="of which live at start, and about as many at any later time (5): just enough "
        "streams cycle on the autopilot, the others stay dormant",
    )
    sim.add_argument(
        "--profile",
        choices=["realistic", "demo"],
        default="realistic",
        help="phase lengths: realistic (live 10-60 min) or demo (live 40-90 s)",
    )
    sim.add_argument("--token-file", metavar="PATH", help="file holding the accepted token")
    sim.add_argument(
        "--rate-limit",
        default="1200/5m",
        metavar="REQUESTS/WINDOW",
        help="per-token limit; overrunning it blocks the token for a window (1200/5m)",
    )
    sim.add_argument(
        "--ip-rate-limit",
        default="200/1s",
        metavar="REQUESTS/WINDOW",
        help="per-client-address limit, only the request over it is refused (200/1s); "
        '"off" for none, e.g. for benchmarks',
    )
    sim.add_argument(
        "--max-per-page", type=count, default=100, help="largest per_page honoured (100, >= 1)"
    )
    faults = sim.add_argument_group(
        "faults (all can be changed at run time: PUT /-/simulator/faults)"
    )

    def seconds(text: str) -> float:  # a duration that may be zero
        return 0.0 if text.strip() in ("0", "0s", "0ms") else duration(text)

    faults.add_argument(
        "--fault.latency", dest="latency", type=seconds, default=0.0, help="added to every answer"
    )
    faults.add_argument(
        "--fault.jitter", dest="jitter", type=seconds, default=0.0, help="plus up to this much"
    )
    for name, text in (
        ("error-rate", "share of requests answered 5xx"),
        ("malformed-rate", "share answered with a body that is not the API's"),
        ("throttle-rate", "share that start a burst of 429s"),
        ("variant-rate", "share answered in another shape the API documents"),
    ):
        faults.add_argument(
            f"--fault.{name}", dest=name.replace("-", "_"), type=share, default=0.0, help=text
        )
    faults.add_argument(
        "--fault.throttle-seconds",
        dest="throttle_seconds",
        type=duration,
        default=30.0,
        help="how long such a burst lasts (30s)",
    )
    faults.add_argument(
        "--fault.status-lag",
        dest="status_lag",
        type=seconds,
        default=0.0,
        help="livestream objects show the previous status this long after a change (0)",
    )
    faults.add_argument(
        "--fault.numbers-as-strings",
        dest="numbers_as_strings",
        action="store_true",
        help="send the session counters as strings, their declared type",
    )
    faults.add_argument(
        "--fault.ignore-status-filter",
        dest="ignore_status_filter",
        action="store_true",
        help="answer the listing as if its status filter had not been asked",
    )
    for flag, dest, default, choices in (
        ("--log.level", "log_level", "info", list(logs.LEVELS)),
        ("--log.format", "log_format", "logfmt", ["logfmt", "json"]),
    ):
        sim.add_argument(flag, dest=dest, default=default, choices=choices)


def main(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGTERM or SIGINT; the exit code."""
    from exporter.simulator import DEMO, REALISTIC, Faults, RateLimiter, Simulator, World

    try:
        host, port = parse_listen(args.listen, "--listen")
        rate = config.parse_rate_limit(args.rate_limit)
        ip_rate = None
        if args.ip_rate_limit != "off":
            try:
                ip_rate = config.parse_rate_limit(args.ip_rate_limit)
            except ValueError as exc:
                raise UsageError(f"--ip-rate-limit {args.ip_rate_limit!r} {exc}") from None
        if args.live > args.livestreams:
            raise UsageError("--live cannot exceed --livestreams")
        if args.max_per_page < 1:
            raise UsageError("--max-per-page must be at least 1")
        # Checked as the control interface checks them (FaultError names the setting).
        faults = Faults().update(
            {
                "latency": args.latency,
                "jitter": args.jitter,
                "error_rate": args.error_rate,
                "malformed_rate": args.malformed_rate,
                "throttle_rate": args.throttle_rate,
                "throttle_seconds": args.throttle_seconds,
                "numbers_as_strings": args.numbers_as_strings,
                "variant_rate": args.variant_rate,
                "status_lag": args.status_lag,
                "ignore_status_filter": args.ignore_status_filter,
            }
        )
        token = _simulator_token(args.token_file)
    except (UsageError, ValueError) as exc:
        return fail(EXIT_USAGE, f"usage error: {exc} (see simulate --help)")
    world = World(seed=args.seed, profile=DEMO if args.profile == "demo" else REALISTIC)
    simulator = Simulator(
        world,
        token=token,
        faults=faults,
        limiter=RateLimiter(rate.requests, rate.window),
        ip_limiter="off"
        if ip_rate is None
        else RateLimiter(ip_rate.requests, ip_rate.window, block=False),
        max_per_page=args.max_per_page,
    )
    # Every token accepted at the time of a log line: more are added through the control API.
    logs.configure(level=args.log_level, fmt=args.log_format, secrets=simulator.state.secrets)
    world.populate(args.account_id, args.app_id, args.livestreams, live=args.live)
    try:
        return asyncio.run(_simulate(simulator, host, port))
    except OSError as exc:
        return fail(EXIT_FAILURE, f"cannot listen on {args.listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return EXIT_OK


def _simulator_token(path: str | None) -> str:
    if path is not None:
        return config.read_token_file(Path(path), shown="--token-file")
    return os.environ.get(SIMULATOR_TOKEN_ENV) or SIMULATOR_DEFAULT_TOKEN


async def _simulate(simulator: Simulator, host: str | None, port: int) -> int:
    stop = asyncio.Event()
    await simulator.start(host, port)
    try:
        world = simulator.world
        log.info(
            "simulator listening: api %s, control %s/; %d app(s), %d livestream(s)",
            simulator.base_url,
            simulator.control_url,
            len(world.apps()),
            sum(1 for _ in world.all_streams()),
            extra={"address": simulator.origin},
        )
        with Signals() as signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signals.handle(sig, stop.set)
            await stop.wait()
        log.info("shutting down")
    finally:
        await simulator.close()
    return EXIT_OK
