"""A double of the poller's API (:class:`exporter.poller.Api`) for tests that script its
answers in code: every request fails the test, naming itself, unless a subclass answers
it. Subclasses override only what they answer, taking the keywords they read and the
rest as ``**_``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.model import ActiveSession, Listing, Livestream, Totals


class UnaskedApi:
    """Each request is a failure of the test: a subclass answers the ones it expects."""

    def _unasked(self, what: str) -> AssertionError:
        return AssertionError(f"{type(self).__name__}: {what} was never to be asked")

    async def list_livestreams(self, account_id: str, app_id: str, **_: object) -> Listing:
        raise self._unasked("the listing")

    async def livestream(
        self, account_id: str, app_id: str, livestream_id: str, **_: object
    ) -> Livestream | None:
        raise self._unasked(f"livestream {livestream_id}")

    async def active_session(
        self, account_id: str, app_id: str, livestream_id: str, **_: object
    ) -> ActiveSession:
        raise self._unasked(f"the active session of {livestream_id}")

    async def session(
        self, account_id: str, app_id: str, session_id: str, **_: object
    ) -> ActiveSession:
        raise self._unasked(f"session {session_id}")

    async def livestream_analytics(self, account_id: str, app_id: str, **_: object) -> Totals:
        raise self._unasked(f"the analytics of {app_id}")

    async def livestream_analytics_days(
        self, account_id: str, app_id: str, **_: object
    ) -> tuple[Totals, ...]:
        raise self._unasked(f"the daywise analytics of {app_id}")
