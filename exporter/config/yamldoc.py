"""YAML text -> a document of safe types, bounded while it is composed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

try:  # libyaml's parser: the same events as PyYAML's, for loads about 3 times as fast
    from yaml._yaml import CParser as _Events
except ImportError:  # pragma: no cover (a PyYAML built without libyaml)
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Events(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


if TYPE_CHECKING:
    from collections.abc import Callable

# Bounds on the YAML document, far beyond any real configuration, checked while it is
# composed: PyYAML's recursive composer overflows Python's stack at about 500 levels (this
# configuration has 5), Python refuses to convert integers of over 4300 digits, and aliases
# let a small file stand for a document the validators would walk in full.
MAX_YAML_DEPTH: Final = 64
# Aliases counted as copies of what they refer to; 20,000 livestreams with expect_live
# are 100,000 nodes.
MAX_YAML_NODES: Final = 125_000
# Far below Python's limit, yet long enough that a number too large for its setting is
# still reported against its key by the validators.
MAX_YAML_INT_LENGTH: Final = 1000


class YamlError(Exception):
    """YAML that cannot be read, that repeats a key in one mapping, or that is out of
    bounds (MAX_YAML_DEPTH, MAX_YAML_NODES, MAX_YAML_INT_LENGTH); the message quotes
    nothing of the text but a position, and keys its reader chose to show."""


def parse_yaml(text: str, *, shown: Callable[[object], str | None]) -> object:
    """The document in ``text`` (safe types only). A key repeated in one mapping is an error
    rather than the last one winning; ``shown(key)`` says how such a key may be named (None:
    not at all). A document out of bounds is an error too, before it is built."""
    loader = _Loader(text, shown)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        # Only the position: PyYAML's own message can quote part of the offending line.
        mark = getattr(exc, "problem_mark", None)
        raise YamlError(f"not valid YAML{_at(mark)}") from None
    # Backstops: the bounds of _Loader should leave neither.
    except RecursionError:
        raise YamlError("not valid YAML: nested too deeply") from None
    except ValueError:
        raise YamlError("not valid YAML: a value that cannot be read") from None
    finally:
        loader.dispose()


class _Mark(Protocol):  # PyYAML's, or libyaml's
    line: int
    column: int


def _at(mark: _Mark | None) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


_INT_TAG: Final = "tag:yaml.org,2002:int"


class _Loader(Composer, _Events, SafeConstructor, Resolver):
    """PyYAML's safe loader (its composer, in Python, on top of libyaml's events where
    available), which measures the document while composing it: depth, and size with
    every alias counted as a copy of the node it refers to. A document out of bounds is
    refused at the event that crosses them, so that neither PyYAML's recursive composer
    and constructor nor the validators ever see it."""

    def __init__(self, text: str, shown: Callable[[object], str | None]) -> None:
        _Events.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._shown = shown
        self._open: list[list[int]] = []  # per node being composed: its height and size so far
        self._anchored: dict[yaml.Node, tuple[int, int]] = {}  # height and size, once complete
        self._nodes = 0  # composed so far, aliases counted in full

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if event is None:  # pragma: no cover (the composer asks only when one is due)
            return super().compose_node(parent, index)
        mark: _Mark | None = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the node the alias names
            if node is None or (shape := self._anchored.get(node)) is None:
                # Its anchor is still open: a node that contains itself.
                raise YamlError(f"an alias inside the value it refers to{_at(mark)}")
            height, size = shape
            if len(self._open) + height > MAX_YAML_DEPTH:
                raise YamlError(f"nested deeper than {MAX_YAML_DEPTH} levels{_at(mark)}")
        else:
            if len(self._open) >= MAX_YAML_DEPTH:
                raise YamlError(f"nested deeper than {MAX_YAML_DEPTH} levels{_at(mark)}")
            self._count(1, mark)
            self._open.append([0, 0])
            node = super().compose_node(parent, index)
            below_height, below_size = self._open.pop()
            height, size = below_height + 1, below_size + 1
            if node is not None and getattr(event, "anchor", None) is not None:
                self._anchored[node] = (height, size)
        if self._open:
            above = self._open[-1]
            above[0] = max(above[0], height)
            above[1] += size
        if isinstance(event, yaml.AliasEvent):
            self._count(size, mark)
        return node

    def _count(self, nodes: int, mark: _Mark | None) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise YamlError(
                f"more than {MAX_YAML_NODES} values (an alias counting as a copy of what it "
                f"refers to){_at(mark)}"
            )

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # Checked before int(), whose time grows with the square of the length.
        if node.tag == _INT_TAG and len(node.value) > MAX_YAML_INT_LENGTH:
            raise YamlError(
                f"an integer longer than {MAX_YAML_INT_LENGTH} characters{_at(node.start_mark)}"
            )
        try:
            return super().construct_object(node, deep=deep)
        except ValueError:  # a scalar Python cannot take, such as the date 2001-13-45
            raise YamlError(f"a value that cannot be read{_at(node.start_mark)}") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) may be overridden; only plain scalar keys are checked.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                name = self._shown(key)
                raise YamlError(
                    f"duplicate key{'' if name is None else ' ' + name}{_at(key_node.start_mark)}"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
