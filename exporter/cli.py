"""Command line: flags, logging, exit codes. The only module that decides how the process ends."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Final

from prometheus_client import generate_latest

from exporter import __version__, config, logs, registration, simulate, webconfig
from exporter.apitoken import config_warnings
from exporter.cliargs import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    count_positive,
    fail,
    index,
    parse_args,
    parse_listen,
)
from exporter.connections import raise_open_files_limit
from exporter.reload import Reloader
from exporter.server import Exporter, ServeError, Server, join_host_port
from exporter.signals import HANDLED, Signals
from exporter.signature import KeyError_
from exporter.webhookkey import load_key_file

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

DEFAULT_PORT: Final = 10241
DEFAULT_LISTEN: Final = f":{DEFAULT_PORT}"

log = logging.getLogger("exporter")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
        help="validate the configuration (and the files it names), print its warnings "
        "on stderr, as start-up logs them, and a summary, and exit: 0 valid, with or "
        "without warnings; 2 invalid",
    )
    cfg.add_argument(
        "--config.check.skip-files",
        dest="config_check_skip_files",
        action="store_true",
        help="with --config.check: do not read the files the configuration names "
        "(api.token_file, credentials' token_file, webhooks.public_key_file), only check "
        "their paths, to check a configuration where its secrets are not (in CI, say)",
    )
    web_group = parser.add_argument_group("web")
    web_group.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (default {DEFAULT_LISTEN}, all interfaces)",
    )
    web_group.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS and basic auth for every endpoint, in the format of the Prometheus "
        "exporter-toolkit's web configuration; read again on reload",
    )
    web_group.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="serve POST /-/reload (as Prometheus does, off by default: anyone who can "
        "reach the port could trigger it; without it the endpoint answers 403); SIGHUP "
        "reloads either way",
    )
    web_group.add_argument(
        "--web.healthy-without-auth",
        dest="healthy_without_auth",
        action="store_true",
        help="serve /-/healthy without basic auth, for probes that cannot send "
        "credentials (TLS, if configured, still applies)",
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
    shards = parser.add_argument_group(
        "sharding (for more livestreams than one process polls in time)"
    )
    shards.add_argument(
        "--shard",
        type=index,
        default=0,
        metavar="I",
        help="this process's shard, 0 to --total-shards minus 1 (default 0): it exports the "
        "livestreams whose id hashes to I, and only shard 0 exports the app-level metrics",
    )
    shards.add_argument(
        "--total-shards",
        type=count_positive,
        default=1,
        metavar="N",
        help="how many shards share the livestreams and the token's budget (default 1); "
        "each spends api.rate_limit / N",
    )
    run = parser.add_argument_group("run mode")
    run.add_argument(
        "--once",
        action="store_true",
        help="poll once, print the exposition to stdout and exit "
        "(0 if every app was polled successfully, else 1)",
    )
    run.add_argument(
        "--demo",
        action="store_true",
        help="no token needed: poll a simulated RealtimeKit API run inside this process "
        "(streams start and stop within a minute); replaces --config.file",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    simulate.add_parser(commands)
    _add_webhooks(commands)
    return parser


def _add_webhooks(commands: argparse._SubParsersAction[Parser]) -> None:
    hooks = commands.add_parser(
        "webhooks",
        help="register this exporter's webhook receiver with RealtimeKit, list or remove it",
        description="Manage the webhooks of every app in the configuration through the "
        "RealtimeKit API, with the configuration's token (it needs the Realtime Admin or "
        "Realtime permission). Prints one line per app (per webhook for list). Exit status: "
        "0 done, 1 the API failed or refused, 2 a usage or configuration error.",
        epilog="example: realtimekit-exporter webhooks register --config.file config.yaml "
        "--url https://exporter.example.com/webhooks/realtimekit",
    )
    actions = hooks.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    for name, text in (
        (
            "register",
            "make sure each app has one enabled webhook for --url with the "
            f"{registration.EVENT} event: created, kept (running it again changes nothing) "
            "or updated (a webhook with the URL that was disabled or lacked the event)",
        ),
        ("list", "print every webhook of each app: id, url, events, enabled, name"),
        ("unregister", "delete every webhook with --url from each app: deleted N"),
    ):
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--config.file",
            dest="webhooks_config_file",
            metavar="PATH",
            help="YAML configuration file: its API token, base URL and apps (required)",
        )
        if name != "list":
            sub.add_argument(
                "--url",
                required=True,
                help="where RealtimeKit posts deliveries: a public https:// URL (http:// only "
                "for a loopback host) whose path is the config's webhooks.path, unless a "
                "proxy rewrites it",
            )
        if name == "register":
            sub.add_argument(
                "--name",
                default=registration.DEFAULT_NAME,
                help=f"name of a webhook it creates (default {registration.DEFAULT_NAME})",
            )
        for flag, dest, default, choices in (
            ("--log.level", "log_level", "info", list(logs.LEVELS)),
            ("--log.format", "log_format", "logfmt", ["logfmt", "json"]),
        ):
            sub.add_argument(flag, dest=dest, default=default, choices=choices)


def _shard(index: int, total: int) -> config.Shard:
    if index >= total:
        raise UsageError(f"--shard={index} needs --total-shards above {index} (it is {total})")
    return config.Shard(index, total)


SWITCH_INTERVAL: Final = 0.001


def main(argv: Sequence[str] | None = None, *, restore_signals: bool = True) -> int:
    """Run the command line; the exit code. SIGTERM, SIGINT and SIGHUP get their handlers
    back at the end if ``restore_signals``, else stay ignored (:func:`run`)."""
    previous = _handlers()
    interrupt_on_sigterm()
    if threading.current_thread() is threading.main_thread():
        # A SIGHUP is a reload; until the event loop handles it, it is nothing.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # SIGTERM or SIGINT before the event loop took them over: while the configuration
        # was being read, say.
        return fail(EXIT_FAILURE, "interrupted while starting")
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler if restore_signals else signal.SIG_IGN)


def run() -> None:
    """The process's entry point (the console script, ``python -m exporter``): main(),
    after which no signal can change the exit status while the interpreter winds down."""
    raise SystemExit(main(restore_signals=False))


def _handlers() -> dict[signal.Signals, signal.Handlers | Callable[..., object] | int | None]:
    """The current handlers of the signals the process acts on (none off the main
    thread, where nothing is changed)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in HANDLED}


def interrupt_on_sigterm() -> signal.Handlers | Callable[..., object] | int | None:
    """Make SIGTERM raise KeyboardInterrupt until the event loop takes it over.

    As PID 1 in a container a signal without a handler does nothing, so a SIGTERM in the
    first moments would be lost; KeyboardInterrupt ends the process like SIGINT. Returns
    the previous handler (None off the main thread, where nothing is changed).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = parse_args(build_parser(), argv)
        if args.command == "simulate":
            return simulate.main(args)
        if args.command == "webhooks":
            return _webhooks_main(args)
        listen = parse_listen(args.listen)
        if args.config_check_skip_files and not args.config_check:
            raise UsageError(
                "--config.check.skip-files goes with --config.check (running needs the files)"
            )
        if args.demo:
            if args.config_file or args.config_check or args.once:
                raise UsageError("--demo runs without --config.file, --config.check or --once")
        elif not args.config_file:
            raise UsageError("--config.file is required (or try --demo)")
        shard = _shard(args.shard, args.total_shards)
    except UsageError as exc:
        where = _help_for(argv)
        return fail(EXIT_USAGE, f"usage error: {exc} (see {where})")

    try:
        web_config = _web_config(args.web_config_file)
    except webconfig.WebConfigError as exc:
        return fail(EXIT_USAGE, f"invalid web configuration: {exc}")

    if args.demo:
        logs.configure(level=args.log_level, fmt=args.log_format)
        web = _web_state(web_config, args)
        _prepare_daemon()
        try:
            return asyncio.run(_demo(*listen, web_config_file=args.web_config_file, web=web))
        except ServeError as exc:
            return fail(EXIT_FAILURE, str(exc))
        except KeyboardInterrupt:
            return EXIT_OK

    read_files = not args.config_check_skip_files
    try:
        cfg = config.load(args.config_file, shard=shard, read_files=read_files)
        if args.config_check and read_files:
            _check_key_file(cfg)
    except config.ConfigError as exc:
        hint = SKIP_FILES_HINT if args.config_check and exc.unread else ""
        return fail(EXIT_USAGE, f"invalid configuration: {exc}{hint}")

    if args.config_check:
        return _config_check(cfg, web_config, read_files=read_files)

    # Every token in use since start (a reload or a rotated token file adds one).
    tokens = [t.reveal() for t in cfg.tokens()]

    def new_token(token: str) -> None:
        if token not in tokens:
            tokens.append(token)

    logs.configure(level=args.log_level, fmt=args.log_format, secrets=lambda: tuple(tokens))
    if not args.once:
        _prepare_daemon()
    try:
        if args.once:
            return asyncio.run(_once(cfg))
        return asyncio.run(
            _serve(
                cfg,
                *listen,
                config_file=args.config_file,
                web_config_file=args.web_config_file,
                web=_web_state(web_config, args),
                on_token=new_token,
                lifecycle=args.enable_lifecycle,
            )
        )
    except ServeError as exc:
        return fail(EXIT_FAILURE, str(exc))
    except KeyboardInterrupt:
        # Only reachable before the signal handlers are in place.
        return fail(EXIT_FAILURE, "interrupted") if args.once else EXIT_OK


# Said when --config.check cannot read a file the configuration names.
SKIP_FILES_HINT: Final = (
    " (to check the configuration where these files are not, add --config.check.skip-files)"
)


def _check_key_file(cfg: config.Config) -> None:
    """For --config.check: the webhook public key file, if the configuration names one,
    must hold a key. (Serving, the receiver answers deliveries 503 until it can load one.)"""
    path = cfg.webhooks.public_key_file if cfg.webhooks is not None else None
    if path is None:
        return
    key = "webhooks.public_key_file"
    try:
        load_key_file(path)
    except config.UnreadableFile as exc:
        raise config.ConfigError(
            [f"{key}: cannot read {path}: {exc}"], source=cfg.source, unread=[key]
        ) from None
    except KeyError_ as exc:
        raise config.ConfigError([f"{key}: {path}: {exc}"], source=cfg.source) from None


def _config_check(
    cfg: config.Config, web_config: webconfig.WebConfig | None, *, read_files: bool
) -> int:
    """--config.check of a valid configuration: its warnings on stderr, one a line, as
    start-up logs them, and its summary on stdout; 0 (warnings are not errors)."""
    warnings = config_warnings(cfg)
    for warning in warnings:
        print(f"realtimekit-exporter: warning: {warning}", file=sys.stderr)
    said = f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})" if warnings else ""
    unread = _files_named(cfg) if not read_files else []
    skipped = f"; not read: {', '.join(unread)}" if unread else ""
    web_ok = f"; {web_config.source}: OK: {web_config.summary()}" if web_config else ""
    print(f"{cfg.source}: OK{said}: {cfg.summary()}{skipped}{web_ok}")
    return EXIT_OK


def _files_named(cfg: config.Config) -> list[str]:
    """The keys of the files the configuration names."""
    keys = ["api.token_file"] if cfg.api.token_file is not None else []
    keys += [f"credentials.{c.name}.token_file" for c in cfg.credentials if c.token_file]
    if cfg.webhooks is not None and cfg.webhooks.public_key_file is not None:
        keys.append("webhooks.public_key_file")
    return keys


def _prepare_daemon() -> None:
    """Before serving: as many open files as the hard limit allows (each connection holds
    one)."""
    soft, hard = raise_open_files_limit()
    log.debug("open files limit: %s (hard %s)", soft, hard)


async def _once(cfg: config.Config) -> int:
    async with Exporter(cfg) as exporter:
        poll = asyncio.ensure_future(exporter.poller.poll_once(analytics=True))
        try:
            with Signals() as signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signals.handle(sig, poll.cancel)
                snapshot = await poll
        except asyncio.CancelledError:
            if poll.cancelled():  # by a signal: an interrupted poll is not a success
                return fail(EXIT_FAILURE, "interrupted before the poll completed")
            raise
        finally:
            if not poll.done():  # never leave the poll running against a closed session
                poll.cancel()
                await asyncio.wait({poll})
        sys.stdout.buffer.write(generate_latest(exporter.registry))
        sys.stdout.flush()
    return EXIT_OK if all(app.up for app in snapshot.apps) else EXIT_FAILURE


def _web_config(path: str | None) -> webconfig.WebConfig | None:
    return webconfig.load(path) if path else None


def _web_state(
    web_config: webconfig.WebConfig | None, args: argparse.Namespace
) -> webconfig.WebState | None:
    if web_config is None:
        return None
    unauthenticated = ["/-/healthy"] if args.healthy_without_auth else []
    return webconfig.WebState(web_config, unauthenticated=unauthenticated)


async def _serve(
    cfg: config.Config,
    host: str | None,
    port: int,
    *,
    config_file: str | None,
    web_config_file: str | None = None,
    web: webconfig.WebState | None = None,
    on_token: Callable[[str], None] | None = None,
    started: Callable[[Server], None] | None = None,
    lifecycle: bool = False,
) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP (and ``POST /-/reload`` if ``lifecycle``)
    reloads ``config_file`` and ``web_config_file``."""
    # The exposition renders in a thread of its own; a shorter GIL switch interval than
    # Python's 5 ms lets the event loop (scrapes, polling) in more often meanwhile.
    sys.setswitchinterval(SWITCH_INTERVAL)
    async with Exporter(cfg, on_token=on_token) as exporter:
        reloader = Reloader(
            exporter=exporter,
            config_file=config_file,
            web_config_file=web_config_file,
            web_state=web,
        )
        server = Server(
            exporter,
            host=host,
            port=port,
            web_state=web,
            reload=reloader.reload if lifecycle else None,
        )
        await server.start()
        log.info("started realtimekit-exporter %s: %s", __version__, cfg.summary())
        if started is not None:
            started(server)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[str | None]] = set()

        def hangup() -> None:
            task = loop.create_task(reloader.reload(), name="reload")
            reloads.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(reloads.discard)

        with Signals() as signals:
            signals.handle(signal.SIGHUP, hangup)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signals.handle(sig, server.stop)
            try:
                await server.wait()
                log.info("shutting down")
            finally:
                # Stopping now: a second SIGTERM, or a SIGHUP, changes nothing any more.
                signals.ignore()
                for task in reloads:
                    task.cancel()  # a reload under way is not waited for
                await server.close()
                if web is not None:
                    web.close()
    return EXIT_FAILURE if server.failure is not None else EXIT_OK


async def _demo(
    host: str | None,
    port: int,
    *,
    web_config_file: str | None = None,
    web: webconfig.WebState | None = None,
) -> int:
    from exporter import demo  # the simulator, imported only for the demo
    from exporter.simulator import Simulator

    simulated = demo.world()
    token = demo.token()
    async with Simulator(simulated, token=token) as simulator:
        cfg = demo.config(simulated, simulator.base_url, token, key_url=simulator.key_url)

        def banner(server: Server) -> None:
            # Said once the port is bound (and known, for port 0).
            bound = server.addresses[0][1] if server.addresses else port
            shown = f"{server.scheme}://{join_host_port(host or 'localhost', bound)}"
            hooks = ""
            if server.webhook_addresses and cfg.webhooks is not None:
                where = join_host_port(*server.webhook_addresses[0])
                hooks = f"http://{where}{cfg.webhooks.path}"
                demo.subscribe(simulator, hooks)
            log.info(
                "demo mode: polling a simulated RealtimeKit API at %s (control: %s/), which "
                "sends status webhooks to %s; metrics at %s/metrics, status page at %s/",
                simulator.base_url,
                simulator.control_url,
                hooks or "nowhere",
                shown,
                shown,
                extra={"address": simulator.origin},
            )

        return await _serve(
            cfg,
            host,
            port,
            config_file=None,
            web_config_file=web_config_file,
            web=web,
            started=banner,
        )


def _help_for(argv: Sequence[str] | None) -> str:
    """The help to point a usage error at: the command's, if it names one."""
    words = sys.argv[1:] if argv is None else argv
    if "webhooks" in words:
        action = next((w for w in words if w in registration.COMMANDS), None)
        return f"webhooks {action} --help" if action else "webhooks --help"
    return "simulate --help" if "simulate" in words else "--help"


def _webhooks_main(args: argparse.Namespace) -> int:
    """``webhooks register|list|unregister``: 0 done, 1 the API failed or refused, 2 a
    usage or configuration error (a bad URL among them, found before any request)."""
    command: registration.Command = args.webhooks_command
    where = f"see webhooks {command} --help"
    path = args.webhooks_config_file or args.config_file
    if not path:
        return fail(EXIT_USAGE, f"usage error: --config.file is required ({where})")
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        return fail(EXIT_USAGE, f"invalid configuration: {exc}")
    tokens = tuple(t.reveal() for t in cfg.tokens())
    logs.configure(level=args.log_level, fmt=args.log_format, secrets=lambda: tokens)
    url: str = getattr(args, "url", "")
    name: str = getattr(args, "name", registration.DEFAULT_NAME)
    if not name.strip():
        return fail(EXIT_USAGE, f"usage error: --name must not be empty ({where})")
    try:
        if command == "register":
            for warning in registration.check_url(url, webhooks=cfg.webhooks):
                log.warning("%s", warning)
        results = asyncio.run(registration.run(cfg, command, url=url, name=name))
    except registration.InvalidUrl as exc:
        return fail(EXIT_USAGE, f"usage error: --url {exc} ({where})")
    except registration.RegistrationError as exc:
        _print_lines(exc.done)
        return fail(EXIT_FAILURE, str(exc))
    except KeyboardInterrupt:
        return fail(EXIT_FAILURE, f"interrupted: webhooks {command} may be half done")
    _print_lines(results)
    return EXIT_OK


def _print_lines(results: Sequence[registration.AppResult]) -> None:
    for result in results:
        for line in registration.describe(result):
            print(line)
    sys.stdout.flush()
