"""The built-in environments: calculator, key-value store, corpus search, and schema-only APIs.

Each draws procedural tasks with a checkable outcome. ``schemas`` is the odd one:
its tools are JSON schemas without code (BFCL's functions, or the procedural
``api_call`` functions); it records the calls and ends after one turn, and its
outcome is whether the calls match the expected ones.
"""

from __future__ import annotations

import json
import re

from .answers import answer_matches
from .calls import ToolCall, calls_match
from .environments import Environment, EnvTask, ToolResult, environment
from .tools import tool

@environment("calculator")
class Calculator(Environment):
    """Arithmetic through tools; the final answer must be the number."""

    max_turns = 4

    def __init__(self, answer: float = 0.0):
        self.answer = answer

    @tool
    def add(self, a: float, b: float) -> float:
        """Add two numbers.

        Args:
            a: the first number
            b: the second number
        """
        return a + b

    @tool
    def subtract(self, a: float, b: float) -> float:
        """Subtract b from a.

        Args:
            a: the number to subtract from
            b: the number to subtract
        """
        return a - b

    @tool
    def multiply(self, a: float, b: float) -> float:
        """Multiply two numbers.

        Args:
            a: the first factor
            b: the second factor
        """
        return a * b

    @tool
    def divide(self, a: float, b: float) -> float:
        """Divide a by b.

        Args:
            a: the dividend
            b: the divisor (not zero)
        """
        return a / b  # b = 0 raises; the model reads the error

    @classmethod
    def make_task(cls, rng) -> EnvTask:
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        ops = [("add", "What is {a} plus {b}?", a + b), ("subtract", "What is {a} minus {b}?", a - b),
               ("multiply", "What is {a} times {b}?", a * b)]
        name, text, value = rng.choice(ops)
        first = {"name": name, "arguments": {"a": [a], "b": [b]}}
        if rng.random() < 0.5:
            return EnvTask(text.format(a=a, b=b), {"answer": value}, str(value), [first])
        question = text.format(a=a, b=b)[:-1] + f", then multiplied by {c}?"
        second = {"name": "multiply", "arguments": {"a": [value], "b": [c]}}
        return EnvTask(question, {"answer": value * c}, str(value * c), [first, second])

    def outcome(self, final_answer: str) -> float:
        """The reply's last number, standing alone, is the answer ("68 or 69" and "45 + 23" are not)."""
        return float(answer_matches(final_answer, self.answer))


@environment("kv_store")
class KeyValueStore(Environment):
    """A small key-value store: read, write and delete keys; judged by the final state or answer."""

    max_turns = 3
    KEYS = ("color", "city", "pet", "fruit", "planet", "song", "team", "drink")
    VALUES = ("blue", "Paris", "cat", "mango", "Mars", "Yesterday", "Lions", "tea", "green", "Oslo", "owl", "kiwi")

    def __init__(self, data: dict | None = None, goal: dict | None = None, answer: str | None = None):
        self.data = dict(data or {})
        self.initial = dict(self.data)  # what the task did not ask to change must stay as it was
        self.goal = goal or {}  # key -> value that must hold at the end (None: the key must be gone)
        self.answer = answer

    @tool
    def get_value(self, key: str) -> str:
        """Read the value stored under a key.

        Args:
            key: the key to read
        """
        if key not in self.data:
            raise KeyError(f"no key {key!r}; keys: {sorted(self.data)}")
        return self.data[key]

    @tool
    def set_value(self, key: str, value: str) -> str:
        """Store a value under a key (overwrites).

        Args:
            key: the key to write
            value: the value to store
        """
        self.data[key] = value
        return "ok"

    @tool
    def delete_key(self, key: str) -> str:
        """Delete a key.

        Args:
            key: the key to delete
        """
        del self.data[key]
        return "ok"

    @classmethod
    def make_task(cls, rng) -> EnvTask:
        keys = rng.sample(cls.KEYS, 3)
        data = {key: rng.choice(cls.VALUES) for key in keys}
        kind = rng.choice(("get", "set", "delete"))
        if kind == "get":
            key = keys[0]
            setup = {"data": data, "answer": data[key]}
            return EnvTask(f"What value is stored under the key '{key}'?", setup, data[key],
                           [{"name": "get_value", "arguments": {"key": [key]}}])
        if kind == "set":
            key, value = rng.choice(cls.KEYS), rng.choice(cls.VALUES)
            setup = {"data": data, "goal": {key: value}}
            return EnvTask(f"Store the value '{value}' under the key '{key}'.", setup, None,
                           [{"name": "set_value", "arguments": {"key": [key], "value": [value]}}])
        key = keys[1]
        return EnvTask(f"Delete the key '{key}' from the store.", {"data": data, "goal": {key: None}}, None,
                       [{"name": "delete_key", "arguments": {"key": [key]}}])

    def outcome(self, final_answer: str) -> float:
        """The goal keys hold their goal values, every other key is untouched, and a "get" task's reply
        states the value (whole-answer match; a reply naming other values of the store is a list of guesses)."""
        wanted = {key: value for key, value in self.initial.items() if key not in self.goal}
        wanted |= {key: value for key, value in self.goal.items() if value is not None}
        if self.data != wanted:
            return 0.0
        if self.answer is not None:
            others = {*self.VALUES, *self.initial.values()}
            return float(answer_matches(final_answer, self.answer, others))
        return 1.0


CORPUS = (
    ("Veloria", "Veloria is an island nation whose capital is Marth. Its currency is the sel."),
    ("Quenby River", "The Quenby River is 412 km long and flows into the Lantern Sea."),
    ("Dr. Ilse Varga", "Dr. Ilse Varga discovered the mineral korvite in 1931."),
    ("Korvite", "Korvite is a green mineral first found in the Ossen Hills."),
    ("Tamsin Bridge", "The Tamsin Bridge opened in 1974 and is 860 metres long."),
    ("Orrin Pass", "Orrin Pass is a mountain pass at 2,310 metres above sea level."),
    ("Lantern Sea", "The Lantern Sea borders Veloria to the east and is famous for bioluminescent algae."),
    ("Brisa festival", "The Brisa festival is held every May in the town of Callow."),
    ("Callow", "Callow is a town of 9,400 people in the north of Veloria."),
    ("Peregrine-7", "Peregrine-7 is a research satellite launched in 2011 by the Marth Space Office."),
    ("Sel", "The sel is divided into 100 pips."),
    ("Hollis Vane", "Hollis Vane wrote the novel The Glass Orchard in 1988."),
)
_WORD = re.compile(r"[a-z0-9]+")


@environment("search")
class CorpusSearch(Environment):
    """Look facts up in a small bundled corpus of invented facts (nothing the model can know already)."""

    max_turns = 3
    QUESTIONS = (
        ("What is the capital of Veloria?", "Marth"),
        ("How long is the Quenby River in km?", "412"),
        ("Who discovered korvite?", "Ilse Varga"),
        ("In what year did the Tamsin Bridge open?", "1974"),
        ("How high is Orrin Pass in metres?", "2,310"),
        ("In which month is the Brisa festival held?", "May"),
        ("How many people live in Callow?", "9,400"),
        ("When was Peregrine-7 launched?", "2011"),
        ("Who wrote The Glass Orchard?", "Hollis Vane"),
        ("What colour is korvite?", "green"),
        ("Into which sea does the Quenby River flow?", "Lantern Sea"),
        ("How many pips make one sel?", "100"),
    )

    def __init__(self, answer: str = ""):
        self.answer = answer

    @tool
    def search(self, query: str) -> list:
        """Search the encyclopedia; returns the best matching entries.

        Args:
            query: words to look for
        """
        words = set(_WORD.findall(query.lower()))
        if not words:
            raise ValueError("the query has no words")
        scored = [(len(words & set(_WORD.findall(f"{title} {text}".lower()))), title, text) for title, text in CORPUS]
        hits = sorted((item for item in scored if item[0]), key=lambda item: -item[0])[:2]
        return [{"title": title, "text": text} for _, title, text in hits]

    @classmethod
    def make_task(cls, rng) -> EnvTask:
        question, answer = rng.choice(cls.QUESTIONS)
        prefix = rng.choice(("", "Look it up: ", "Use the search tool. "))
        return EnvTask(prefix + question, {"answer": answer}, answer, [{"name": "search", "arguments": None}])

    def outcome(self, final_answer: str) -> float:
        """The reply states the fact as its answer (``rollout.answers``): never a substring, never a list."""
        return float(answer_matches(final_answer, self.answer))


@environment("schemas")
class SchemaTools(Environment):
    """Tools given only as JSON schemas (BFCL's functions, procedural APIs): calls are recorded, not run."""

    max_turns = 1

    def __init__(self, functions: list[dict], expected_calls: list[dict] | None = None):
        self.functions = {function["name"]: function for function in functions}
        self.expected_calls = expected_calls or []
        self.calls: list[dict] = []

    def schemas(self) -> list[dict]:
        return list(self.functions.values())

    def execute(self, call: ToolCall) -> ToolResult:
        function = self.functions.get(call.name)
        if function is None:
            return ToolResult(f"Error: unknown tool {call.name!r}; the tools are {sorted(self.functions)}", "unknown_tool")
        parameters = function.get("parameters", {})
        known, required = set(parameters.get("properties", {})), set(parameters.get("required", []))
        problems = [f"missing {name!r}" for name in sorted(required - set(call.arguments))]
        problems += [f"unknown parameter {name!r}" for name in sorted(set(call.arguments) - known)]
        if problems:
            return ToolResult(f"Error: {call.name}: bad arguments: {'; '.join(problems)}", "bad_arguments")
        self.calls.append(call.as_dict())
        return ToolResult(json.dumps({"status": "ok"}))

    def outcome(self, final_answer: str) -> float:
        """Exactly the expected calls: every one matched, in order, and no other call made."""
        return float(bool(self.expected_calls) and calls_match(self.calls, self.expected_calls) == 1.0)
