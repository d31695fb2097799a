"""Code rewards: the completion's program, run with the problem's tests in the sandbox.

Two test styles, chosen by the problem's fields:

- ``tests``: assert lines (``["assert add_7(1) == 8", ...]``), run one by one, so the
  fraction that passes is known (``code_tests_partial`` scores it);
- ``test`` + ``entry_point`` (HumanEval): the suite's ``check(candidate)`` is called on
  the completion's function. ``code_prompt`` (the function's signature and docstring)
  is put in front of the code, so a completion that wrote only the body still runs.

Nothing here executes model code in this process: every program goes to
``rewards.sandbox.run_tests``, which runs the solution in one process and the tests in
another (the judge) that reaches the solution's function only through pipes with plain
data; the tally comes back on a channel the solution never holds. So a solution that
shadows ``exec``/``print``/``assert`` helpers, returns always-equal objects, prints a fake
tally, exits early or inspects frames cannot pass without solving. A completion that is
garbage scores 0.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from .registry import RewardResult, reward
from .sandbox import Checker, SandboxLimits, SandboxResult, run_tests

DEFAULT_TIMEOUT_S = 3.0  # HumanEval's own default per program
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from |@)")
_MAX_TRIMS = 200


@dataclass
class CodeOutcome:
    """How one completion did on its problem's tests."""

    passed: bool
    tests_passed: float  # share of assert lines that passed (HumanEval: 0 or 1)
    has_code_block: bool
    sandbox: SandboxResult


def extract_code(completion: str, entry_point: str | None = None, prefix: str = "") -> str:
    """The program in ``completion``: a fenced block (the one defining ``entry_point`` if any), else
    the longest stretch of lines that compiles (after ``prefix``, e.g. a HumanEval signature)."""
    blocks = [body for language, body in _FENCE.findall(completion or "")
              if language.lower() in ("", "python", "python3", "py") and body.strip()]
    if blocks:
        if entry_point:
            defining = [b for b in blocks if _defines(b, entry_point)]
            if defining:
                return defining[0]
        return blocks[0]
    return _compiling_stretch(completion or "", prefix)


def has_code_block(completion: str) -> bool:
    return bool(_FENCE.search(completion or ""))


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def _compiles(source: str) -> bool:
    try:
        compile(source, "<candidate>", "exec")  # compiling runs nothing
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _compiling_stretch(text: str, prefix: str) -> str:
    """Drop prose before the first code-looking line, then trailing lines until it compiles."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line) or line.startswith((" ", "\t"))]
    start = starts[0] if starts else 0
    for end in range(len(lines), max(start, len(lines) - _MAX_TRIMS), -1):
        candidate = "\n".join(lines[start:end]).rstrip() + "\n"
        if _compiles(prefix + candidate):
            return candidate
    return "\n".join(lines[start:]) + "\n"


def humaneval_solution(code_prompt: str, completion: str, entry_point: str) -> str:
    """The prompt (imports, helpers, signature) then the model's code: a full function redefines
    the stub, a bare body completes it (indented if the model did not)."""
    code = extract_code(completion, entry_point, prefix=code_prompt)
    if _defines(code, entry_point):
        return f"{code_prompt}\n{code}"
    candidates = [code_prompt + code, code_prompt + textwrap.indent(textwrap.dedent(code), "    ")]
    return next((c for c in candidates if _compiles(c)), candidates[0])


def run_problem(completion: str, fields: dict, limits: SandboxLimits | None = None) -> CodeOutcome:
    """Run ``completion`` against the tests in ``fields`` (``tests``, or ``test`` + ``entry_point``)."""
    completion = completion if isinstance(completion, str) else str(completion or "")
    limits = limits or SandboxLimits(timeout_s=float(fields.get("timeout_s") or DEFAULT_TIMEOUT_S))
    if fields.get("tests"):
        tests = _test_lines(fields["tests"])
        code = extract_code(completion, fields.get("entry_point"))
        result = run_tests(code, Checker("asserts", tests, fields.get("entry_point")), limits)
    elif fields.get("test") and fields.get("entry_point"):
        entry_point, prompt = fields["entry_point"], fields.get("code_prompt", "")
        solution = humaneval_solution(prompt, completion, entry_point)
        # The prompt is trusted problem code: the judge runs it too, for helpers the tests call (e.g. poly).
        result = run_tests(solution, Checker("check", fields["test"], entry_point, prelude=prompt), limits)
    else:
        raise ValueError(
            "code reward: the problem needs a 'tests' field (assert lines) or 'test' + 'entry_point' "
            f"(HumanEval style); it has {sorted(fields)}"
        )
    share = result.tests_passed / result.tests_total if result.tests_total else 0.0
    return CodeOutcome(result.passed, share, has_code_block(completion), result)


def _test_lines(tests) -> list[str]:
    if isinstance(tests, str):
        tests = tests.splitlines()
    lines = [str(t).strip() for t in tests if str(t).strip()]
    if not lines:
        raise ValueError("code reward: 'tests' holds no test lines")
    return lines


def _result(outcome: CodeOutcome, score: float) -> RewardResult:
    return RewardResult(
        score,
        components={
            "passed": float(outcome.passed),
            "tests_passed": outcome.tests_passed,
            "code_block": float(outcome.has_code_block),
            "timeout": float(outcome.sandbox.status == "timeout"),
        },
        info={"status": outcome.sandbox.status, "stderr": outcome.sandbox.stderr[-500:]},
    )


@reward("code_tests")
def code_tests(prompt: str, completion: str, **fields) -> RewardResult:
    """1.0 when every test passes in the sandbox, else 0.0 (components: share passed, code block, timeout)."""
    outcome = run_problem(completion, fields)
    return _result(outcome, float(outcome.passed))


@reward("code_tests_partial")
def code_tests_partial(prompt: str, completion: str, **fields) -> RewardResult:
    """The share of the problem's assert lines that pass (HumanEval-style problems: 0 or 1)."""
    outcome = run_problem(completion, fields)
    return _result(outcome, outcome.tests_passed)
