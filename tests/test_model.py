"""The rules the immutable records carry."""

from __future__ import annotations

import pytest

from exporter.model import addressable


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
