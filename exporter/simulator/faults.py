"""Fault knobs of the simulated API, and the seeded dice that apply them per request."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from exporter.simulator.tokens import MAX_TOKENS, NAME

if TYPE_CHECKING:
    from collections.abc import Mapping

Kind = Literal["ok", "server_error", "malformed", "throttle"]
Signature = Literal["valid", "none", "wrong_key"]

# 5xx statuses a failing request gets; 502 and 504 come from Cloudflare's edge as HTML.
SERVER_ERRORS: Final = (500, 502, 503, 504)
MALFORMED: Final = ("truncated", "html", "not_an_object", "success_false")


class FaultError(ValueError):
    """A fault setting that is not valid; the message names the key."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong, and how often. Shares are 0..1, times are seconds."""

    latency: float = 0.0  # added to every API answer
    jitter: float = 0.0  # plus a uniform 0..jitter
    error_rate: float = 0.0  # share of API requests answered 500/502/503/504
    malformed_rate: float = 0.0  # share answered 200 with a body that is not the API's
    throttle_rate: float = 0.0  # share of requests that start a burst of 429s
    throttle_seconds: float = 30.0  # how long such a burst lasts (its Retry-After)
    numbers_as_strings: bool = False  # counters as "116.1" (their declared type)
    reject_token: bool = False  # every request gets 401, as if the token were revoked
    # The names of the tokens whose requests get 401 (as reject_token, for these alone);
    # set one by one with {"reject_token": ..., "token": NAME} (see update).
    rejected_tokens: tuple[str, ...] = ()
    variant_rate: float = 0.0  # share answered in another documented shape (api.VARIANTS)
    status_lag: float = 0.0  # livestream objects show the previous status this long
    ignore_status_filter: bool = False  # the listing answers as if no status were asked
    hold: bool = False  # API requests get no answer until hold is false again
    # Webhooks (see exporter.simulator.webhooks), rolled per delivery:
    webhook_delay: float = 0.0  # waited before a delivery's first attempt
    webhook_jitter: float = 0.0  # plus a uniform 0..webhook_jitter
    webhook_duplicate_rate: float = 0.0  # share sent twice (same rtk-uuid, same bytes)
    webhook_reorder_rate: float = 0.0  # share held back, so that later ones overtake them
    webhook_reorder_delay: float = 2.0  # how long such a delivery is held back
    webhook_unsigned_rate: float = 0.0  # share sent without an rtk-signature
    webhook_wrong_key_rate: float = 0.0  # share signed with a key the document does not serve
    webhook_drop_rate: float = 0.0  # share never sent
    webhooks_forbidden: bool = False  # webhook endpoints answer 403: no permission for them
    key_document_unavailable: bool = False  # /.well-known/webhooks.json answers 503

    def update(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; raises FaultError naming a bad key or value.

        With a ``token`` (a token's name), ``reject_token`` is about that token alone: it
        joins or leaves ``rejected_tokens``, and ``reject_token`` itself is untouched."""
        if "token" in changes:
            changes = self._for_token(changes)
        known = {f.name: f for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise FaultError(f"unknown fault {key!r}; known: {', '.join(known)}")
            if key == "rejected_tokens":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(n, str) and NAME.fullmatch(n) for n in value
                ):
                    raise FaultError("rejected_tokens must be a list of token names")
                if len(set(value)) > MAX_TOKENS:
                    raise FaultError(f"rejected_tokens can name at most {MAX_TOKENS} tokens")
                continue
            if isinstance(getattr(self, key), bool):
                if not isinstance(value, bool):
                    raise FaultError(f"{key} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise FaultError(f"{key} must be a number")
            elif not 0 <= value <= (1 if key.endswith("_rate") else 86400):
                limit = "between 0 and 1" if key.endswith("_rate") else "between 0 and 86400"
                raise FaultError(f"{key} must be {limit}")
        clean: dict[str, Any] = {
            k: (v if isinstance(v, bool) else float(v))
            for k, v in changes.items()
            if k != "rejected_tokens"
        }
        if "rejected_tokens" in changes:
            clean["rejected_tokens"] = tuple(sorted(set(changes["rejected_tokens"])))
        return replace(self, **clean)

    def _for_token(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``{"reject_token": flag, "token": name}`` as the change of rejected_tokens."""
        name, flag = changes.get("token"), changes.get("reject_token")
        if set(changes) != {"token", "reject_token"}:
            raise FaultError("token names the token that reject_token (alone) is about")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise FaultError("token must be the name of a token")
        if not isinstance(flag, bool):
            raise FaultError("reject_token must be true or false")
        rejected = set(self.rejected_tokens)
        if flag:
            rejected.add(name)
        else:
            rejected.discard(name)
        return {"rejected_tokens": sorted(rejected)}

    def rejects(self, name: str) -> bool:
        """Whether the requests of the token ``name`` get 401."""
        return self.reject_token or name in self.rejected_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Canned:
    """A fixed answer that an API endpoint gives in place of its own (see
    ``SimulatorState.answer_next``): ``body`` as JSON, or ``raw`` bytes as they are. With
    ``applied``, the request is carried out first and its answer lost on the way back."""

    status: int
    body: Any = None
    raw: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    applied: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    delay: float = 0.0
    status: int = 200
    variant: str = ""
    shape: float | None = None  # picks a variant shape (0 <= shape < 1); None: the usual


class Dice:
    """Rolls the faults for each request in arrival order, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"faults:{seed}")

    def roll(self, faults: Faults) -> Verdict:
        rng = self._rng
        delay = faults.latency + (rng.uniform(0.0, faults.jitter) if faults.jitter else 0.0)
        if faults.throttle_rate and rng.random() < faults.throttle_rate:
            return Verdict("throttle", delay, 429)
        if faults.error_rate and rng.random() < faults.error_rate:
            return Verdict("server_error", delay, rng.choice(SERVER_ERRORS))
        if faults.malformed_rate and rng.random() < faults.malformed_rate:
            return Verdict("malformed", delay, 200, rng.choice(MALFORMED))
        if faults.variant_rate and rng.random() < faults.variant_rate:
            return Verdict("ok", delay, shape=rng.random())
        return Verdict("ok", delay)


@dataclass(frozen=True, slots=True)
class DeliveryVerdict:
    """What goes wrong with one webhook delivery."""

    drop: bool = False
    delay: float = 0.0  # before the first attempt, a reorder hold included
    reordered: bool = False
    duplicate: bool = False
    signature: Signature = "valid"


class DeliveryDice:
    """Rolls the webhook faults for each delivery in the order of the status changes, from
    a generator of its own (the API's dice are not disturbed by webhooks). Every roll draws
    the same numbers whatever the settings, so that turning one fault on does not change
    which deliveries another one hits."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"webhooks:{seed}")

    def roll(self, faults: Faults) -> DeliveryVerdict:
        drop, jitter, reorder, duplicate, unsigned, wrong = (self._rng.random() for _ in range(6))
        delay = faults.webhook_delay + jitter * faults.webhook_jitter
        reordered = reorder < faults.webhook_reorder_rate
        if reordered:
            delay += faults.webhook_reorder_delay
        signature: Signature = "valid"
        if unsigned < faults.webhook_unsigned_rate:
            signature = "none"
        elif wrong < faults.webhook_wrong_key_rate:
            signature = "wrong_key"
        return DeliveryVerdict(
            drop=drop < faults.webhook_drop_rate,
            delay=delay,
            reordered=reordered,
            duplicate=duplicate < faults.webhook_duplicate_rate,
            signature=signature,
        )
