"""What the configuration and the web configuration share when they check a document:
every problem collected with its key path, unknown keys named (never quoted if they
could be a secret), and one error that lists them all."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

# Problems named in an error's one line; the rest are counted (20,000 bad livestream ids
# would make a line of a megabyte).
MAX_SHOWN_PROBLEMS: Final = 20
TOP_LEVEL: Final = "(top level)"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists each one with its key path
    (the message names the first :data:`MAX_SHOWN_PROBLEMS` and counts the others), and
    ``unread`` the keys of the files it names that could not be read (missing, say)."""

    def __init__(
        self, problems: list[str], *, source: str = "config", unread: Sequence[str] = ()
    ) -> None:
        self.problems = list(problems)
        self.source = source
        self.unread = tuple(unread)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        shown = "; ".join(self.problems[:MAX_SHOWN_PROBLEMS])
        if count > MAX_SHOWN_PROBLEMS:
            shown += f"; and {count - MAX_SHOWN_PROBLEMS} more"
        super().__init__(f"{source}: {count} {noun}: {shown}")


class Checker:
    """Collects problems while a document is turned into records; each check reports what
    is wrong and returns a usable stand-in, so that one pass finds every problem.

    ``shown(key)`` is how a key that is not allowed may be named in an error: a long or
    odd key could be a secret pasted in the wrong place. Keys in ``unsupported`` are named
    as such rather than as unknown (for example another exporter's settings).
    """

    def __init__(
        self, *, shown: Callable[[object], str], unsupported: Collection[str] = ()
    ) -> None:
        self.problems: list[str] = []
        self._shown = shown
        self._unsupported = frozenset(unsupported)

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path or TOP_LEVEL}: {message}")

    def mapping(self, path: str, value: object, allowed: Collection[str]) -> dict[str, Any]:
        """The allowed keys of ``value`` (a mapping; None is an empty one), each other key
        reported; ``path`` "" is the document itself."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and key in allowed:
                out[key] = item
                continue
            where = join(path, self._shown(key))
            if isinstance(key, str) and key in self._unsupported:
                self.fail(where, "not supported by realtimekit-exporter")
            else:
                self.fail(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return out

    def raise_if_any(self, error: Callable[..., ConfigError], source: str) -> None:
        """Raise ``error(problems, source=source)`` if any problem was found."""
        if self.problems:
            raise error(self.problems, source=source)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
