"""Tools: typed Python functions the model may call, with a JSON schema derived from the signature.

A tool is a plain function (or an environment method) with type hints and a
Google-style docstring::

    @tool
    def add(a: float, b: float) -> float:
        \"\"\"Add two numbers.

        Args:
            a: the first number
            b: the second number
        \"\"\"
        return a + b

``add.schema`` is ``{"name": "add", "description": ..., "parameters": <JSON schema>}``
(pydantic builds the parameter schema from the hints, so ``Literal``, lists,
defaults and nested models work). ``add.call(arguments)`` validates the
arguments against the same model before running: a bad argument is a
``ToolArgumentError`` naming the parameter, never a crash.

This module must not know about environments, prompts or the engine.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the tool's signature (the message names the parameters)."""


@dataclass
class Tool:
    """A callable the model may use: its name, description, argument model and function."""

    name: str
    description: str
    arguments_model: type[BaseModel]
    fn: typing.Callable[..., Any]
    parameters: dict = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = _compact(self.arguments_model.model_json_schema())

    @property
    def schema(self) -> dict:
        """The OpenAI-style function schema shown to the model."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def validate(self, arguments: Any) -> dict:
        """Checked and converted keyword arguments, or ``ToolArgumentError``."""
        if not isinstance(arguments, dict):
            raise ToolArgumentError(f"{self.name}: arguments must be an object, got {type(arguments).__name__}")
        try:
            parsed = self.arguments_model.model_validate(arguments)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc'])) or '(arguments)'}: {item['msg']}" for item in error.errors()
            )
            raise ToolArgumentError(f"{self.name}: bad arguments: {problems}") from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    def call(self, arguments: Any) -> Any:
        return self.fn(**self.validate(arguments))

    def bind(self, instance) -> Tool:
        """This tool with ``instance`` as its first argument (an environment method, bound to its state)."""
        return Tool(self.name, self.description, self.arguments_model, self.fn.__get__(instance))

    def __get__(self, instance, owner):  # a tool defined in a class body reads back bound on an instance
        return self if instance is None else self.bind(instance)


def tool(fn=None, *, name: str | None = None):
    """Make ``fn`` a ``Tool`` (``@tool`` or ``@tool(name="other")``); in a class, ``self`` is skipped."""

    def make(function) -> Tool:
        return tool_from_function(function, name=name)

    return make(fn) if fn is not None else make


def tool_from_function(fn, name: str | None = None) -> Tool:
    """Derive the argument model from ``fn``'s hints and docstring (every parameter needs a hint)."""
    tool_name = name or fn.__name__
    description, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = {}
    for param in inspect.signature(fn).parameters.values():
        if param.name == "self":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args/**kwargs cannot be described to the model")
        if param.name not in hints:
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=arg_docs.get(param.name)))
    model = create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return Tool(tool_name, description or tool_name, model, fn)


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """A Google-style docstring's summary (text before the first section) and ``Args:`` descriptions."""
    summary, args, section, current = [], {}, None, None
    for line in doc.splitlines():
        header = _SECTION.match(line.strip())
        if header:
            section, current = header.group(1), None
            continue
        if section is None:
            summary.append(line.strip())
        elif section in ("Args", "Arguments", "Parameters"):
            match = _ARG_LINE.match(line)
            if match and len(line) - len(line.lstrip()) <= 4:
                current = match.group(1)
                args[current] = match.group(2).strip()
            elif current and line.strip():
                args[current] += " " + line.strip()
    return " ".join(part for part in summary if part).strip(), args


def call_json_schema(functions: list[dict]) -> dict:
    """The JSON schema of exactly one call of one of ``functions`` (``Environment.schemas()``: name,
    parameters), as ``{"name": <function>, "arguments": {...}}``. For constrained decoding (``tool_choice:
    required``): the call then always parses, names a known function and passes no unknown argument."""
    if not functions:
        raise ValueError("a call schema needs at least one function")
    shared_defs, options = {}, []
    for function in functions:
        arguments = _json_types(function.get("parameters") or {"type": "object", "properties": {}})
        shared_defs |= arguments.pop("$defs", {})  # nested models: their $refs point at the root's $defs
        options.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": {"additionalProperties": False} | arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    schema = {"anyOf": options}
    return schema | {"$defs": shared_defs} if shared_defs else schema


_PYTHON_TYPES = {"dict": "object", "float": "number", "int": "integer", "tuple": "array", "list": "array",
                 "str": "string", "bool": "boolean"}  # BFCL-style schemas name Python types


def _json_types(schema):
    """``schema`` with Python type names as JSON-schema ones; a type JSON schema lacks (``any``) is dropped."""
    if isinstance(schema, list):
        return [_json_types(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            value = _PYTHON_TYPES.get(value, value)
            if value not in ("object", "array", "string", "number", "integer", "boolean", "null"):
                continue
        out[key] = {name: _json_types(sub) for name, sub in value.items()} if key == "properties" else _json_types(value)
    return out


def _compact(schema):
    """Drop pydantic's titles (they repeat the names) and ``additionalProperties`` (validation enforces it):
    they only cost prompt tokens. A parameter named ``title`` stays."""
    if isinstance(schema, dict):
        return {
            key: ({name: _compact(sub) for name, sub in value.items()} if key == "properties" else _compact(value))
            for key, value in schema.items()
            if not (key == "title" and isinstance(value, str)) and key != "additionalProperties"
        }
    if isinstance(schema, list):
        return [_compact(item) for item in schema]
    return schema
