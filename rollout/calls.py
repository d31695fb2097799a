"""Reading function calls out of a model turn.

The model is asked for JSON: ``{"name": "add", "arguments": {"a": 1, "b": 2}}``,
or a list of them. Small models wrap that in noise, so ``parse_calls``
tolerates ``<tool_call>`` tags, code fences, text before and after the JSON,
single-quoted (Python-literal) objects, ``parameters``/``args`` instead of
``arguments``, arguments given as a JSON string, and the OpenAI
``{"type": "function", "function": {...}}`` wrapping.

It rejects what is not a call: prose is a final answer (no calls); an object
that is not shaped like a call is not a call; a ``<tool_call>`` tag or a turn
that starts like JSON but does not parse is a *malformed* call (an error the
environment reports back to the model and the metrics count).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

ARGUMENT_KEYS = ("arguments", "parameters", "args")
_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_PY_CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


@dataclass
class ToolCall:
    name: str
    arguments: dict

    def as_dict(self) -> dict:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParsedTurn:
    """The calls of one model turn; ``malformed`` explains a call attempt that could not be read."""

    calls: list[ToolCall] = field(default_factory=list)
    malformed: str | None = None

    @property
    def is_final(self) -> bool:
        """No call and no failed attempt: the turn is the model's final answer."""
        return not self.calls and self.malformed is None


def parse_calls(text: str) -> ParsedTurn:
    """The calls in ``text`` (see the module docstring for what is tolerated and what is rejected)."""
    tagged = [chunk.strip() for chunk in _TAGGED.findall(text)]
    if tagged:
        turn = ParsedTurn()
        for chunk in tagged:
            part = _calls_in(_unfence(chunk))
            if part is None:
                return ParsedTurn(malformed=f"could not read the call inside <tool_call>: {chunk[:80]!r}")
            turn.calls += part
        return turn
    body = _unfence(text)
    calls = _calls_in(body)
    if calls:
        return ParsedTurn(calls)
    if _attempted_call(body):
        return ParsedTurn(malformed=f"the turn starts like a JSON call but is not one: {body.strip()[:80]!r}")
    return ParsedTurn()


def _attempted_call(body: str) -> bool:
    """A turn that opens with JSON which does not parse, or parses to call-like objects that are not calls."""
    stripped = body.lstrip()
    if not stripped.startswith(("{", "[")):
        return False
    end = _balanced_end(stripped, 0)
    value = _load(stripped[:end]) if end else None
    if value is None:
        return True
    first = value[0] if isinstance(value, list) and value else value
    return isinstance(first, dict) and ("name" in first or "function" in first)


def _unfence(text: str) -> str:
    fenced = _FENCED.search(text)
    return fenced.group(1) if fenced else text


def _calls_in(text: str) -> list[ToolCall] | None:
    """Calls in the first JSON/Python literal of ``text`` that reads as calls; ``None`` if none does."""
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        end = _balanced_end(text, start)
        if end is None:
            continue
        value = _load(text[start:end])
        calls = _as_calls(value)
        if calls:
            return calls
    return None


def _balanced_end(text: str, start: int) -> int | None:
    """Index after the bracket closing ``text[start]``, skipping quoted strings; ``None`` if unclosed."""
    depth, quote, escaped = 0, None, False
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def _load(snippet: str):
    try:
        return json.loads(snippet)
    except ValueError:
        pass
    try:
        return _literal(ast.parse(snippet, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return None


def _literal(node):
    """A Python literal, where ``true``/``false``/``null`` are also constants (JSON written with single quotes)."""
    if isinstance(node, ast.Name) and node.id in _PY_CONSTANTS:
        return _PY_CONSTANTS[node.id]
    if isinstance(node, ast.Dict):
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.Constant):
        return node.value
    raise ValueError(f"not a literal: {ast.dump(node)[:60]}")


def _as_calls(value) -> list[ToolCall] | None:
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item) for item in items]
    return calls if calls and all(calls) else None


def _as_call(item) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        item = item["function"]
    name = item.get("name")
    keys = [key for key in ARGUMENT_KEYS if key in item]
    if not isinstance(name, str) or not name or len(keys) != 1 or set(item) - {"name", "type", keys[0]}:
        return None
    arguments = item[keys[0]]
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
        arguments = _load(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name, arguments)


def calls_match(calls: list[dict], expected: list[dict]) -> float:
    """``matched / max(len(expected), len(calls))``: every call counts, so extra calls lower the score.

    ``matched`` is the longest in-order pairing of made calls with ``expected`` ones
    (BFCL possible-answer style, ``call_matches``): a junk call before or between the
    right ones costs its share but does not shift the rest out of place. Dividing by
    the larger count is precision and recall at once: ``[right, junk, junk]`` against
    ``[right]`` scores 1/3, ``[right]`` against ``[right, other]`` scores 1/2.
    """
    if not expected:
        return 0.0
    return _in_order_matches(calls, expected) / max(len(expected), len(calls))


def _in_order_matches(calls: list[dict], expected: list[dict]) -> int:
    """The longest common subsequence of ``calls`` and ``expected`` under ``call_matches`` (a small table)."""
    best = [[0] * (len(expected) + 1) for _ in range(len(calls) + 1)]
    for i, got in enumerate(calls):
        for j, want in enumerate(expected):
            best[i + 1][j + 1] = best[i][j] + 1 if call_matches(got, want) else max(best[i][j + 1], best[i + 1][j])
    return best[-1][-1]


def call_matches(call: dict, expected: dict) -> bool:
    """Same name, and every argument one of its allowed values (``""`` allowed: it may be left out).

    As BFCL's AST checker: arguments the expectation does not list are wrong,
    strings compare case- and punctuation-insensitively, numbers by value
    (an int where a float is expected is fine), lists element by element.
    """
    if call.get("name") != expected["name"]:
        return False
    if expected.get("arguments") is None:
        return True
    arguments, allowed = call.get("arguments") or {}, expected["arguments"]
    if set(arguments) - set(allowed):
        return False
    for name, values in allowed.items():
        if name not in arguments:
            if "" not in values:
                return False
        elif not any(_same(arguments[name], value) for value in values if value != ""):
            return False
    return True


_PUNCTUATION = re.compile(r"[ ,./\-_*^]")


def _same(got, want) -> bool:
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return abs(got - want) < 1e-6
    if isinstance(got, str) and isinstance(want, str):
        return _PUNCTUATION.sub("", got).lower() == _PUNCTUATION.sub("", want).lower()
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        return set(got) == set(want) and all(_same(got[key], want[key]) for key in got)
    return got == want
