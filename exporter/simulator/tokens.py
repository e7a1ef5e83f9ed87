"""The API tokens the simulator accepts: each has a name, and may be limited to accounts.

A token stands for a Cloudflare API token: the simulator knows it by its value (what the
``Authorization`` header carries) and shows it only by its name (in the request log, the
stats, the control answers), so that a test can count each credential's requests without
any token being written anywhere. Adding a token under a name that is taken replaces that
name's token: the old value is refused from then on, which is how a test rotates one.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

DEFAULT_NAME: Final = "default"  # the name of the token given as Simulator(token=...)
MAX_TOKENS: Final = 16
MAX_ACCOUNTS: Final = 100  # accounts one token may be limited to
MAX_TOKEN_LENGTH: Final = 256
MAX_ACCOUNT_LENGTH: Final = 64
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# What a bearer token can be (RFC 6750's b64token), so that it fits a header as it is.
_VALUE: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")


class TokenError(ValueError):
    """A token that cannot be added; the message names what is wrong, never the value."""


@dataclass(frozen=True, slots=True)
class SimToken:
    """One accepted token. ``accounts``: the account ids it may read (None: every one)."""

    name: str
    value: str = field(repr=False)
    accounts: frozenset[str] | None = None

    def may_read(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts

    def as_dict(self) -> dict[str, object]:
        """What the control interface shows of it: everything but the value."""
        accounts = None if self.accounts is None else sorted(self.accounts)
        return {"name": self.name, "accounts": accounts}


def check(name: object, value: object, accounts: object) -> SimToken:
    """A token from untrusted input (the control interface's JSON); TokenError if not."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise TokenError(
            "name must be 1 to 64 letters, digits or _.:- (starting with a letter or digit)"
        )
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_TOKEN_LENGTH
        or not _VALUE.fullmatch(value)
    ):
        raise TokenError(
            f"token must be 1 to {MAX_TOKEN_LENGTH} characters of a bearer token "
            "(letters, digits, -._~+/ and trailing =)"
        )
    if accounts is None:
        return SimToken(name, value)
    if (
        not isinstance(accounts, list)
        or len(accounts) > MAX_ACCOUNTS
        or not all(
            isinstance(a, str) and 0 < len(a) <= MAX_ACCOUNT_LENGTH and a.isprintable()
            for a in accounts
        )
    ):
        raise TokenError(
            f"accounts must be null (every account) or a list of at most {MAX_ACCOUNTS} "
            f"account ids of 1 to {MAX_ACCOUNT_LENGTH} printable characters"
        )
    return SimToken(name, value, frozenset(accounts))


class Tokens:
    """The accepted tokens by name, at most :data:`MAX_TOKENS`, each value held by one."""

    def __init__(self, tokens: Iterable[SimToken] = ()) -> None:
        self._by_name: dict[str, SimToken] = {}
        for token in tokens:
            if token.name in self._by_name:
                raise TokenError(f"two tokens are named {token.name!r}")
            self.add(token)

    def __repr__(self) -> str:
        return f"Tokens(names={list(self._by_name)!r})"

    def __iter__(self) -> Iterator[SimToken]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def add(self, token: SimToken) -> bool:
        """Accept ``token``; True if it replaced the token of the same name."""
        replaced = token.name in self._by_name
        if not replaced and len(self._by_name) >= MAX_TOKENS:
            raise TokenError(f"at most {MAX_TOKENS} tokens; replace one by adding its name")
        for other in self._by_name.values():
            if other.name != token.name and hmac.compare_digest(
                other.value.encode(), token.value.encode()
            ):
                raise TokenError(f"that token is already accepted as {other.name!r}")
        self._by_name[token.name] = token
        return replaced

    def get(self, name: str) -> SimToken | None:
        return self._by_name.get(name)

    def identify(self, presented: str) -> SimToken | None:
        """The token whose value ``presented`` is, if any; every value is compared in
        constant time (the simulator has nothing to guard, but it models an API that does)."""
        found = None
        given = presented.encode()
        for token in self._by_name.values():
            if hmac.compare_digest(given, token.value.encode()):
                found = token
        return found

    def values(self) -> list[str]:
        """Every accepted value: the secrets a test checks that nothing leaks."""
        return [t.value for t in self._by_name.values()]
