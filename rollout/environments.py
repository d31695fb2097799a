"""Environments: the state of one tool-use episode, its tools, and its verifiable outcome.

Writing one is as short as writing a reward: a class registered by name whose
tool methods carry ``@tool``, a ``make_task`` that draws one procedural task,
and an ``outcome`` that checks the episode::

    @environment("counter")
    class Counter(Environment):
        def __init__(self, target: int = 0):
            self.value, self.target = 0, target

        @tool
        def increment(self, by: int) -> int:
            \"\"\"Add ``by`` to the counter and return it.\"\"\"
            self.value += by
            return self.value

        @classmethod
        def make_task(cls, rng):
            target = rng.randint(1, 9)
            return EnvTask(f"Bring the counter to {target}.", setup={"target": target},
                           expected_calls=[{"name": "increment", "arguments": {"by": [target]}}])

        def outcome(self, final_answer):
            return float(self.value == self.target)

One instance lives for one episode (``EnvTask.setup`` are its constructor's
keyword arguments). ``execute`` never raises: an unknown tool, arguments that
do not fit the signature and an exception inside the tool come back as an
error result (``ToolResult.error`` names the kind, for the metrics).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from posttrain.plugins import Registry, get_subclass

from .calls import ToolCall
from .tools import Tool, ToolArgumentError

ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "tool_exception")


@dataclass
class EnvTask:
    """One procedural task: the user's request, the episode's setup, and what a right episode looks like.

    ``expected_calls``: ``[{"name": ..., "arguments": {param: [allowed values]}}]`` in order,
    as BFCL's possible answers (``""`` among the allowed values: the parameter may be left out;
    ``"arguments": None``: any arguments).
    """

    question: str
    setup: dict = field(default_factory=dict)
    answer: str | None = None
    expected_calls: list[dict] = field(default_factory=list)


@dataclass
class ToolResult:
    content: str
    error: str | None = None  # one of ERROR_KINDS, or None when the call worked


class Environment:
    """Base class: collects the ``@tool`` methods, executes calls, reports the outcome."""

    name = "?"
    max_turns = 4  # model turns per episode; the rollout's own limit also applies
    # "auto": the model decides whether to call; "required": its first turn is decoded under the schema of a
    # call of one of the tools (``SamplingSpec.json_schema``), as OpenAI's tool_choice="required"
    tool_choice = "auto"

    def tools(self) -> list[Tool]:
        """The tools of this episode (the ``@tool`` methods bound to this instance)."""
        found = []
        for attr in dir(type(self)):
            value = getattr(type(self), attr, None)
            if isinstance(value, Tool):
                found.append(value.bind(self))
        return found

    def schemas(self) -> list[dict]:
        return [one.schema for one in self.tools()]

    def execute(self, call: ToolCall) -> ToolResult:
        """Run ``call``; every failure becomes an error result for the model to read."""
        tools = {one.name: one for one in self.tools()}
        if call.name not in tools:
            return ToolResult(f"Error: unknown tool {call.name!r}; the tools are {sorted(tools)}", "unknown_tool")
        try:
            arguments = tools[call.name].validate(call.arguments)
        except ToolArgumentError as error:
            return ToolResult(f"Error: {error}", "bad_arguments")
        try:
            value = tools[call.name].fn(**arguments)
        except Exception as error:  # noqa: BLE001 - the model's call may make a tool raise anything
            return ToolResult(f"Error: {call.name} raised {type(error).__name__}: {error}", "tool_exception")
        return ToolResult(value if isinstance(value, str) else json.dumps(value, default=str))

    @classmethod
    def make_task(cls, rng: random.Random) -> EnvTask:
        raise NotImplementedError(f"environment {cls.name!r} has no procedural tasks")

    def outcome(self, final_answer: str) -> float:
        """1.0 when the episode reached its goal (by the final answer and/or the state), else 0.0."""
        raise NotImplementedError


ENVIRONMENTS: Registry[type[Environment]] = Registry("environment", entry_point_group="posttrain.environments")


def environment(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Register an ``Environment`` subclass under ``name``; a second registration of a name is refused."""

    def register(cls):
        cls.name = name
        return ENVIRONMENTS.register(name, cls)

    return register


def environment_names() -> list[str]:
    return ENVIRONMENTS.names()


def environment_class(name: str) -> type[Environment]:
    """The environment a recipe names: registered, ``module:Class``, or a ``posttrain.environments`` entry point."""
    return get_subclass(ENVIRONMENTS, name, Environment)


def make_environment(name: str, setup: dict | None = None) -> Environment:
    return environment_class(name)(**(setup or {}))
