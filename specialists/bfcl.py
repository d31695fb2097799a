"""BFCL (``bfcl-eval``) as held-out agent suites, scored by BFCL's own AST checker.

Suites: ``bfcl_simple`` (``BFCL_v4_simple_python``, 400 problems) and
``bfcl_multiple`` (``BFCL_v4_multiple``, 200), each a single user turn with one
or more function docs. The model sees the functions as JSON schemas in the
agent's system prompt (BFCL's ``dict``/``float``/``tuple`` types written as
JSON-schema ``object``/``number``/``array``, as BFCL's own function-calling
handlers do); the calls our parser reads from its first turn go, as
``[{name: {param: value}}]``, through ``is_function_calling_format_output`` and
``ast_checker``.

Why a stub module: ``ast_checker`` imports ``bfcl_eval.constants.model_config``
for one flag (``underscore_to_dot``: whether a model's API renamed dotted
function names), and that module imports every vendor SDK and tree-sitter. We
load the checker with a stand-in for that one module that answers ``False``
(we keep dotted names as the functions spell them); the stand-in is removed
from ``sys.modules`` afterwards, so nothing else sees it.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from functools import cache
from pathlib import Path

from posttrain.core.tasks import Problem

SUITES = {"bfcl_simple": "simple_python", "bfcl_multiple": "multiple"}
CHECKER_MODEL_NAME = "posttrain"  # the model name BFCL's checker asks about (our stand-in config knows it)
_JSON_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}


def data_dir() -> Path:
    import bfcl_eval

    return Path(bfcl_eval.__file__).parent / "data"


def load_suite(suite: str, num_problems: int) -> list[Problem]:
    """``num_problems`` evenly spaced problems of the category (all of them when it has fewer)."""
    category = SUITES[suite]
    rows = _read_jsonl(data_dir() / f"BFCL_v4_{category}.json")
    answers = {row["id"]: row["ground_truth"] for row in _read_jsonl(data_dir() / "possible_answer" / f"BFCL_v4_{category}.json")}
    count = min(num_problems, len(rows))
    picked = [rows[index * len(rows) // count] for index in range(count)]
    return [_problem(suite, row, answers[row["id"]]) for row in picked]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _problem(suite: str, row: dict, ground_truth: list) -> Problem:
    question = [message["content"] for message in row["question"][0] if message["role"] == "user"][-1]
    functions = [json_schema_function(function) for function in row["function"]]
    fields = {
        "env": "schemas",
        "setup": {"functions": functions},
        "tools": functions,
        "bfcl_functions": row["function"],
        "possible_answer": ground_truth,
        "category": SUITES[suite],
    }
    return Problem(question, fields, source=suite, id=row["id"])


def json_schema_function(function: dict) -> dict:
    """A BFCL function doc with JSON-schema type names (what the model is shown)."""

    def convert(node):
        if isinstance(node, dict):
            out = {key: convert(value) for key, value in node.items()}
            if isinstance(node.get("type"), str) and node["type"] in _JSON_TYPES:
                if _JSON_TYPES[node["type"]] is None:
                    out.pop("type")
                else:
                    out["type"] = _JSON_TYPES[node["type"]]
            return out
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    return convert(function)


def score(problem: Problem, calls: list[dict]) -> dict[str, float]:
    """BFCL's verdict on ``calls`` (``[{"name", "arguments"}]``): ``score`` (AST match) and ``format``."""
    decoded = [{call["name"]: call["arguments"]} for call in calls]
    checker = ast_checker_module()
    from bfcl_eval.utils import is_function_calling_format_output

    if not decoded or not is_function_calling_format_output(decoded):
        return {"score": 0.0, "format": 0.0}
    fields = problem.fields
    try:
        result = checker.ast_checker(
            fields["bfcl_functions"], decoded, fields["possible_answer"], checker.Language.PYTHON,
            fields["category"], CHECKER_MODEL_NAME,
        )
    except Exception:  # noqa: BLE001 - the checker can trip on odd model values; BFCL counts those as wrong
        return {"score": 0.0, "format": 1.0}
    return {"score": float(bool(result["valid"])), "format": 1.0}


@cache
def ast_checker_module() -> types.ModuleType:
    """``bfcl_eval.eval_checker.ast_eval.ast_checker``, loaded without the vendor-SDK model config."""
    name = "bfcl_eval.eval_checker.ast_eval.ast_checker"
    if name in sys.modules:
        return sys.modules[name]
    config_name = "bfcl_eval.constants.model_config"
    stand_in = types.ModuleType(config_name)
    stand_in.MODEL_CONFIG_MAPPING = {CHECKER_MODEL_NAME: types.SimpleNamespace(underscore_to_dot=False)}
    previous = sys.modules.get(config_name)
    sys.modules[config_name] = stand_in
    try:
        return importlib.import_module(name)
    finally:
        if previous is None:
            sys.modules.pop(config_name, None)
        else:
            sys.modules[config_name] = previous
