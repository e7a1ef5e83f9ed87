"""Registering the exporter's webhook receiver with RealtimeKit, through the API.

Webhooks belong to an app, so each configured app gets its own: :func:`register` makes
sure every app has exactly one enabled webhook for the URL that includes
``livestreaming.statusUpdate`` (it lists the app's webhooks first, and creates one only if
none has the URL, so running it again changes nothing); :func:`unregister` deletes each
webhook with the URL; :func:`list_webhooks` shows them all. The URL is checked before any
request (:func:`check_url`).

Library code: it raises :class:`InvalidUrl` or :class:`RegistrationError` (naming the app,
and saying which permission the token lacks when the API refuses it) and never exits.
Apps are handled one after another; the first that fails ends the run, and its error
carries what was done for the apps before it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from exporter import __version__
from exporter.apitoken import ApiToken
from exporter.client import ApiError, RealtimeKitClient
from exporter.model import STATUS_UPDATE_EVENT, addressable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
    from typing import TypeAlias

    from exporter.config import AppConfig, Config, WebhooksConfig
    from exporter.model import Webhook

    # One client for every app, or each credentials' client by name.
    Clients: TypeAlias = RealtimeKitClient | Mapping[str, RealtimeKitClient]

EVENT: Final = STATUS_UPDATE_EVENT
DEFAULT_NAME: Final = "realtimekit-exporter"
# How long one call may take, retries included, in units of api.timeout. A pause the API
# ordered (a 429, or a Ratelimit header saying nothing remains) that lasts longer fails
# the call at once instead of holding the command for up to five minutes.
CALL_TIMEOUTS: Final = 3
PERMISSION_HINT: Final = (
    "managing webhooks needs an API token with the Realtime Admin (or Realtime) permission "
    "on the account"
)

Action = Literal["created", "kept", "updated"]
Command = Literal["register", "list", "unregister"]
COMMANDS: Final[tuple[Command, ...]] = ("register", "list", "unregister")


class InvalidUrl(ValueError):
    """The URL cannot be registered; the message says why and never quotes credentials."""


@dataclass(frozen=True, slots=True)
class Registered:
    """What :func:`register` did for one app. ``others`` counts further webhooks of the
    app with the same URL, made before (each delivery then arrives that many more times)."""

    app: AppConfig
    action: Action
    webhook: Webhook
    others: int = 0


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The webhooks :func:`unregister` deleted from one app, by id."""

    app: AppConfig
    deleted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppWebhooks:
    """Every webhook of one app, as the API lists them."""

    app: AppConfig
    webhooks: tuple[Webhook, ...]


AppResult = Registered | Unregistered | AppWebhooks


class RegistrationError(Exception):
    """An app's webhooks could not be read or changed. ``app`` is that app, ``done`` what
    was done for the apps before it, ``api_error`` the API's answer."""

    def __init__(
        self,
        message: str,
        *,
        app: AppConfig,
        api_error: ApiError,
        done: Sequence[AppResult] = (),
    ) -> None:
        super().__init__(message)
        self.app = app
        self.api_error = api_error
        self.done = tuple(done)

    @property
    def permission(self) -> bool:
        """The API refused the token (401 or 403)."""
        return self.api_error.reason == "auth"


def check_url(url: str, *, webhooks: WebhooksConfig | None) -> tuple[str, ...]:
    """Raise :class:`InvalidUrl` unless ``url`` is one RealtimeKit can deliver to; return
    warnings about it that do not stop it being registered.

    It must be an absolute ``https://`` URL with a host and no credentials (RealtimeKit
    delivers only to a publicly reachable HTTPS URL); ``http://`` passes only for a
    loopback host (the simulator, tests). Its path should be ``webhooks.path`` of the
    configuration, the one the receiver listens on: if it is not, that is a warning, as
    a reverse proxy in front of the exporter may rewrite paths.
    """
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidUrl("must be one URL, without spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise InvalidUrl("the URL cannot be parsed") from None
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidUrl(
            "must be an absolute https:// URL: RealtimeKit delivers webhooks only to a "
            "publicly reachable HTTPS URL"
        )
    if parts.username is not None or parts.password is not None:
        # Not quoted: the message would show the password.
        raise InvalidUrl("must not carry credentials (user:password@): RealtimeKit sends none")
    if parts.scheme == "http" and not _loopback(host):
        raise InvalidUrl(
            f"http:// is accepted only for a loopback host, not {host!r}: RealtimeKit "
            "delivers webhooks only to a publicly reachable HTTPS URL"
        )
    if parts.fragment:
        raise InvalidUrl("must not have a #fragment: it is never sent")
    warnings: list[str] = []
    path = parts.path or "/"
    if webhooks is None:
        warnings.append(
            "the configuration has no webhooks section: this exporter will not receive "
            "the deliveries until it has one"
        )
    elif path != webhooks.path:
        warnings.append(
            f"the URL's path {path!r} is not webhooks.path ({webhooks.path!r}), where the "
            "exporter receives deliveries: fine only if a reverse proxy rewrites it"
        )
    return tuple(warnings)


async def register(
    client: Clients, config: Config, url: str, *, name: str = DEFAULT_NAME
) -> tuple[Registered, ...]:
    """Make sure each app of ``config`` has one enabled webhook for ``url`` that includes
    :data:`EVENT`: one that already does is kept; one with the URL that is disabled or
    lacks the event is edited (enabled, and the event added to the ones it has); if the
    app has none with the URL, one named ``name`` is created. Never a second one.

    Raises :class:`InvalidUrl` (or ValueError for a blank ``name``) before any request,
    or :class:`RegistrationError`."""
    check_url(url, webhooks=config.webhooks)
    if not name.strip():
        raise ValueError("the webhook's name must not be empty")
    done: list[Registered] = []
    for app in config.apps:
        with _failing(app, "register a webhook", done):
            done.append(await _register(_for(client, app), config, app, url, name))
    return tuple(done)


async def _register(
    client: RealtimeKitClient, config: Config, app: AppConfig, url: str, name: str
) -> Registered:
    account, app_id = app.key
    same = _with_url(await client.list_webhooks(account, app_id, deadline=_deadline(config)), url)
    if same:
        ready = [hook for hook in same if _delivers(hook)]
        if ready:
            return Registered(app, "kept", ready[0], others=len(same) - 1)
        hook = same[0]
        events = hook.events if EVENT in hook.events else (*hook.events, EVENT)
        edited = await client.edit_webhook(
            account, app_id, hook.id, events=events, enabled=True, deadline=_deadline(config)
        )
        return Registered(app, "updated", edited, others=len(same) - 1)
    try:
        created = await client.add_webhook(
            account, app_id, name=name, url=url, events=(EVENT,), deadline=_deadline(config)
        )
    except ApiError as exc:
        if not exc.transient:
            raise
        # The answer was lost, not necessarily the webhook: look for it rather than POST
        # again, which could make a second one.
        found = await _created_after_all(client, config, app, url)
        if found is None:
            raise
        return Registered(app, "created", found)
    return Registered(app, "created", created)


async def _created_after_all(
    client: RealtimeKitClient, config: Config, app: AppConfig, url: str
) -> Webhook | None:
    try:
        hooks = await client.list_webhooks(*app.key, deadline=_deadline(config))
    except ApiError:
        return None  # the POST's error is the one to report
    return next((hook for hook in _with_url(hooks, url) if _delivers(hook)), None)


async def unregister(client: Clients, config: Config, url: str) -> tuple[Unregistered, ...]:
    """Delete every webhook with ``url`` from each app of ``config``; webhooks with any
    other URL are left alone. The URL is only checked to be absolute: a webhook that
    :func:`register` would refuse (made in the dashboard, say) can still be removed.

    Raises :class:`InvalidUrl` (before any request) or :class:`RegistrationError`."""
    try:
        parts = urlsplit(url.strip())
        absolute = bool(parts.scheme and parts.hostname)
    except ValueError:
        absolute = False
    if not absolute:
        raise InvalidUrl("must be an absolute URL, as registered")
    done: list[Unregistered] = []
    for app in config.apps:
        with _failing(app, "unregister webhooks", done):
            account, app_id = app.key
            api = _for(client, app)
            hooks = await api.list_webhooks(account, app_id, deadline=_deadline(config))
            deleted: list[str] = []
            for hook in _with_url(hooks, url):
                await api.delete_webhook(account, app_id, hook.id, deadline=_deadline(config))
                deleted.append(hook.id)
            done.append(Unregistered(app, tuple(deleted)))
    return tuple(done)


async def list_webhooks(client: Clients, config: Config) -> tuple[AppWebhooks, ...]:
    """Every webhook of each app of ``config``. Raises :class:`RegistrationError`."""
    done: list[AppWebhooks] = []
    for app in config.apps:
        with _failing(app, "list webhooks", done):
            hooks = await _for(client, app).list_webhooks(*app.key, deadline=_deadline(config))
            done.append(AppWebhooks(app, hooks))
    return tuple(done)


def _for(client: Clients, app: AppConfig) -> RealtimeKitClient:
    """The client of the credentials ``app`` is read with."""
    return client if isinstance(client, RealtimeKitClient) else client[app.credentials]


@contextlib.asynccontextmanager
async def api_client(config: Config) -> AsyncIterator[dict[str, RealtimeKitClient]]:
    """A client for each credentials ``config``'s apps use, by name, with an HTTP
    session of their own, closed on exit.

    Made as the exporter makes its own, but with budgets of their own: a command run
    beside a running exporter spends a few requests of each token's limit, and the API's
    Ratelimit headers still pause it if the token is close to that limit."""
    async with aiohttp.ClientSession(
        headers={"User-Agent": f"realtimekit-exporter/{__version__}"},
        trust_env=False,  # see client.proxy_for
    ) as session:
        yield {
            name: ApiToken(config.scoped(name), session=session).client
            for name in config.credential_names()
        }


async def run(
    config: Config, command: Command, *, url: str = "", name: str = DEFAULT_NAME
) -> tuple[AppResult, ...]:
    """One ``webhooks`` command over every app of ``config``, with a client of its own."""
    async with api_client(config) as client:
        if command == "register":
            return await register(client, config, url, name=name)
        if command == "unregister":
            return await unregister(client, config, url)
        return await list_webhooks(client, config)


def describe(result: AppResult) -> list[str]:
    """The lines the ``webhooks`` command prints for one app's result."""
    where = f"{result.app.account_id}/{result.app.app_id}"
    if isinstance(result, Unregistered):
        return [f"{where}: deleted {len(result.deleted)}"]
    if isinstance(result, Registered):
        line = f"{where}: {result.action} webhook {_shown(result.webhook.id)}"
        if result.others:
            line += (
                f" ({result.others} more webhook(s) have this URL, so each delivery arrives "
                f"{result.others + 1} times: unregister removes them all)"
            )
        return [line]
    if not result.webhooks:
        return [f"{where}: no webhooks"]
    return [
        f"{where}: id={_shown(hook.id)} url={_shown(hook.url)} "
        f"events={_shown(','.join(hook.events))} enabled={str(hook.enabled).lower()} "
        f"name={json.dumps(hook.name or '')}"
        for hook in result.webhooks
    ]


def _shown(text: str) -> str:
    """``text`` as is, or JSON-quoted if it has spaces or control characters (any text
    the API sends is printed on one line)."""
    if text and all(ch.isprintable() and not ch.isspace() for ch in text):
        return text
    return json.dumps(text)


def same_url(a: str, b: str) -> bool:
    """Whether two URLs name the same webhook: equal but for the case of the scheme and
    host, and an empty path read as "/"."""
    return _canonical(a) == _canonical(b)


def _canonical(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, "")
    )


def _with_url(hooks: Sequence[Webhook], url: str) -> list[Webhook]:
    # An id that cannot be a path segment ("", ".", "..") cannot be edited or deleted.
    return [hook for hook in hooks if same_url(hook.url, url) and addressable(hook.id)]


def _delivers(hook: Webhook) -> bool:
    return hook.enabled and EVENT in hook.events


def _loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _deadline(config: Config) -> float:
    # The client's default clock is time.monotonic, which api_client leaves it.
    return time.monotonic() + CALL_TIMEOUTS * config.api.timeout


@contextlib.contextmanager
def _failing(app: AppConfig, action: str, done: Sequence[AppResult]) -> Iterator[None]:
    """Turn an :class:`ApiError` into a :class:`RegistrationError` naming ``app``."""
    try:
        yield
    except ApiError as exc:
        where = f"app {app.account_id}/{app.app_id}"
        if exc.reason == "auth":
            message = f"{where}: the API refused the token ({exc}): {PERMISSION_HINT}"
        else:
            message = f"{where}: cannot {action} ({exc.reason}): {exc}"
        raise RegistrationError(message, app=app, api_error=exc, done=done) from exc
