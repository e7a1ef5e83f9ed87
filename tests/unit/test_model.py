"""The rules the immutable records carry."""

from __future__ import annotations

import dataclasses

import pytest

from exporter.model import Webhook, addressable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", False),
        (".", False),
        ("..", False),
        ("...", True),
        (" .", True),
        ("%2E", True),
        ("./", True),
        ("a/..", True),
        ("b60ef3da-fbbb-441b-9168-8235b0035248", True),
    ],
    ids=[
        "empty",
        "dot",
        "dotdot",
        "three-dots",
        "space-dot",
        "encoded-dot",
        "dot-slash",
        "slash-dotdot",
        "uuid",
    ],
)
def test_only_empty_dot_and_dotdot_are_not_addressable(text: str, expected: bool) -> None:
    """Empty, "." and ".." cannot be one URL path segment; any other text, quoted whole, is."""
    assert addressable(text) is expected


def test_a_webhook_is_enabled_by_default_and_immutable() -> None:
    """A Webhook record says enabled unless told otherwise, and cannot be changed."""
    hook = Webhook(id="w1", url="https://exporter.example.com/webhooks/realtimekit")
    assert (hook.enabled, hook.events, hook.name) == (True, (), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hook.enabled = False  # type: ignore[misc]  # the point: the field is frozen
