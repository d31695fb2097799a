"""Reading recipe YAML that anyone wrote: bounded, unambiguous, and never a traceback.

PyYAML's safe loader builds no arbitrary objects, but it still accepts what no
recipe can mean: a key given twice in one mapping (the last silently wins),
aliases that expand a few hundred bytes into billions of nodes (the validator
would walk them and the error formatter print them), an alias inside its own
anchor (a cyclic structure), nesting deep enough to exhaust the stack, and
integers too long for Python to convert. ``load_yaml`` refuses each with one
``YamlRefused`` line naming the field path and the line.

This module knows nothing of recipe fields (``posttrain/core/schema.py`` does);
``posttrain/recipe.py`` turns a refusal into a ``RecipeError``.
"""

from __future__ import annotations

import reprlib

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 256 * 1024  # a recipe is a few KiB; the largest shipped one is ~3 KiB
MAX_NODES = 20_000  # nodes after alias expansion; the largest shipped recipe has a few hundred
MAX_DEPTH = 48  # nesting after alias expansion; recipes nest ~6 deep, Python's stack ~300 YAML levels
MAX_INT_DIGITS = 64  # past Python's own limit (4300 digits) int() raises a bare ValueError
MERGE_TAG = "tag:yaml.org,2002:merge"
INT_TAG = "tag:yaml.org,2002:int"


class YamlRefused(ValueError):
    """YAML a recipe may not hold; the message is one line: ``path (line N): what``."""


def short(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, without rendering more of a big value than that."""
    shortener = reprlib.Repr()  # Python 3.11's takes no keyword arguments
    shortener.maxlevel, shortener.maxstring, shortener.maxother, shortener.maxlong = 3, limit, limit, limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _RecipeLoader(yaml.SafeLoader):
    """A safe loader that refuses deep nesting as it reads (PyYAML composes recursively)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class):
        # refused while scanning: the scanner looks up to 1024 characters ahead per open bracket and
        # rechecks every open one each token, so "[[[[..." costs seconds before the composer sees it
        if self.flow_level >= MAX_DEPTH:
            raise YamlRefused(f"(line {self.line + 1}): nested deeper than {MAX_DEPTH} levels")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlRefused(f"(line {line}): nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _Measure().visit(node, (), 0)
        return node


class _Measure:
    """One pass over the composed node graph, each anchored node measured once (so a billion-laughs
    document costs its own size, not its expansion): size and depth after expansion, cycles,
    duplicate keys, NUL characters, integers too long to convert."""

    def __init__(self):
        self.done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded height)
        self.open: set[int] = set()

    def visit(self, node: Node, path: tuple[str, ...], depth: int) -> tuple[int, int]:
        key = id(node)
        if key in self.open:
            _refuse(path, node, "an alias inside its own anchor (a structure that contains itself)")
        if key in self.done:
            size, height = self.done[key]
        else:
            self.open.add(key)
            size, height = self._children(node, path, depth)
            self.open.discard(key)
            self.done[key] = (size, height)
        if depth + height > MAX_DEPTH:
            _refuse(path, node, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
        return size, height

    def _children(self, node: Node, path: tuple[str, ...], depth: int) -> tuple[int, int]:
        if isinstance(node, ScalarNode):
            _check_scalar(node, path)
            return 1, 0
        pairs = []
        if isinstance(node, SequenceNode):
            pairs = [(None, child, path + (str(index),)) for index, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            pairs = _mapping_entries(node, path)
        size, height = 1, 0
        for key_node, child, child_path in pairs:
            if key_node is not None:
                size += self.visit(key_node, child_path, depth + 1)[0]
            child_size, child_height = self.visit(child, child_path, depth + 1)
            size, height = size + child_size, max(height, child_height + 1)
            if size > MAX_NODES:
                _refuse(path, node, f"expands to more than {MAX_NODES} nodes (aliases of aliases?)")
        return size, height


def _mapping_entries(node: MappingNode, path: tuple[str, ...]) -> list:
    """``(key node, value node, value path)`` per entry; a key given twice is refused (merge keys
    ``<<`` excepted: explicit keys overriding merged ones is what YAML merging means)."""
    first_line: dict[tuple[str, str], int] = {}
    entries = []
    for key_node, value_node in node.value:
        scalar = isinstance(key_node, ScalarNode)
        name = key_node.value if scalar else "?"
        if scalar and key_node.tag != MERGE_TAG:
            ident = (key_node.tag, name)
            if ident in first_line:
                _refuse(path + (name,), key_node, f"duplicate key {short(name)} (first at line {first_line[ident]})")
            first_line[ident] = key_node.start_mark.line + 1
        entries.append((key_node, value_node, path + (name,)))
    return entries


def _check_scalar(node: ScalarNode, path: tuple[str, ...]) -> None:
    if "\x00" in node.value:
        _refuse(path, node, "contains a NUL character")
    if node.tag == INT_TAG and len(node.value) > MAX_INT_DIGITS:
        _refuse(path, node, f"an integer of {len(node.value)} characters (at most {MAX_INT_DIGITS})")


def _refuse(path: tuple[str, ...], node: Node, what: str):
    where = ".".join(short(part, 40).strip("'") for part in path) or "(top level)"
    raise YamlRefused(f"{where} (line {node.start_mark.line + 1}): {what}")


def load_yaml(text: str):
    """``text`` parsed by the safe loader with the refusals above; ``YamlRefused`` (one line) otherwise."""
    if len(text) > MAX_BYTES:
        raise YamlRefused(f"{len(text)} characters; a recipe is at most {MAX_BYTES // 1024} KiB")
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlRefused:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise YamlRefused(f"not valid YAML{where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise YamlRefused(f"not valid YAML: {short(str(error).splitlines()[0] if str(error) else error)}") from None
    except (ValueError, RecursionError) as error:  # a scalar Python cannot convert; a stack the checks missed
        raise YamlRefused(f"not a value a recipe can hold: {short(str(error))}") from None


def decode(raw: bytes) -> str:
    """UTF-8 text (a BOM allowed); ``YamlRefused`` naming the field and line of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        bad = raw[error.start : error.start + 1].hex()
        path = _path_at_line(raw.decode("utf-8-sig", errors="replace"), line)
        raise YamlRefused(f"{path or '(file)'} (line {line}): not UTF-8 text (byte 0x{bad})") from None


def _path_at_line(text: str, line: int) -> str | None:
    """The field path of the deepest value on ``line`` (1-based) of ``text``, when the text parses."""
    try:
        root = yaml.compose(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, RecursionError):
        return None
    found, stack = None, [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is None or not node.start_mark.line + 1 <= line <= node.end_mark.line + 1:
            continue
        found = ".".join(path) or found
        if isinstance(node, SequenceNode):
            stack += [(child, path + (str(i),)) for i, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            stack += [(value, path + (str(key.value),)) for key, value in node.value if isinstance(key, ScalarNode)]
    return found
