"""Snapshots of every shape the exposition renders (empty, one app, many streams, unknown
statuses and odd names, unlisted streams), for the exposition's and the renderer's tests."""

from __future__ import annotations

from exporter.model import (
    EMPTY_SNAPSHOT,
    AppState,
    Livestream,
    Session,
    Snapshot,
    StreamState,
    Unlisted,
)


def stream(
    sid: str,
    status: str = "IDLE",
    *,
    live: bool = False,
    session: Session | None = None,
    name: str | None = None,
    expected_live: bool | None = None,
) -> StreamState:
    return StreamState(
        Livestream(sid, status, name=name, meeting_id=f"m-{sid}", disabled=sid.endswith("0")),
        live=live,
        session=session,
        last_update=1_700_000_300.0,
        expected_live=expected_live,
    )


def many(streams: int, live: int) -> Snapshot:
    """Two apps sharing ``streams`` (``live`` of them live), and an app that is down."""
    apps = []
    for a in range(2):
        states = []
        for i in range(streams // 2):
            is_live = i < live // 2
            session = None
            if is_live:
                session = Session(f"s-{a}-{i}", 1.7e9 + i, None, None, 10.5 + i, 100.25 * i)
            elif i % 3 == 0:
                session = Session(f"old-{a}-{i}", 1.6e9, 1.6e9 + 60, "gone" if i % 2 else None)
            states.append(
                stream(
                    f"ls-{a}-{i:05d}",
                    "LIVE" if is_live else "OFFLINE",
                    live=is_live,
                    session=session,
                    name=f"Stream {i}",
                    expected_live=(i % 4 == 0) if i % 2 == 0 else None,
                )
            )
        apps.append(AppState("acc", f"app-{a}", True, 1_700_000_300.0, tuple(states)))
    apps.append(AppState("acc", "down", False, None))
    return Snapshot(apps=tuple(apps), taken_at=1_700_000_300.0, cycles=2)


ONE_APP = Snapshot(
    apps=(
        AppState(
            "acc",
            "app",
            True,
            1_700_000_300.0,
            (
                stream(
                    "ls-1",
                    "LIVE",
                    live=True,
                    session=Session("sess-1", 1.7e9, None, None, 116.11599994199997, 240.0),
                    name="Main stage",
                    expected_live=True,
                ),
                stream("ls-2", "IDLE"),
            ),
        ),
    ),
    cycles=1,
)
UNKNOWN_STATUSES = Snapshot(
    apps=(
        AppState(
            "acc",
            "app",
            False,
            1_700_000_000.0,
            (
                stream("ls-1", "PAUSED", name='quote " back \\ newline \n # EOF'),
                stream("ls-2", "UNKNOWN", name="Bühne 🎥"),
                stream("ls-3", "ERRORED", session=Session("s", 1.7e9, 1.7e9 + 1, "boom")),
            ),
        ),
    ),
    cycles=3,
)
UNLISTED = Snapshot(
    apps=(
        AppState(
            "acc",
            "app",
            True,
            1_700_000_300.0,
            (stream("ls-1"),),
            (Unlisted("gone", True), Unlisted("typo", None), Unlisted("off", False)),
        ),
        AppState("acc", "empty", True, 1_700_000_300.0),
    ),
    cycles=4,
)
SNAPSHOTS = {
    "empty": EMPTY_SNAPSHOT,
    "one-app": ONE_APP,
    "many-streams": many(300, 30),
    "unknown-statuses": UNKNOWN_STATUSES,
    "unlisted": UNLISTED,
}
