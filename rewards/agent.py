"""Agent rewards: the format of the calls, the calls themselves, and the environment's outcome.

The agent task passes each episode's ``calls`` (well-formed calls to known
tools with fitting arguments, in order), ``call_attempts`` (every call the
model tried, malformed ones included), ``outcome`` (the environment's verdict)
and the task's ``expected_calls`` as fields.
"""

from __future__ import annotations

from rollout.calls import calls_match

from .registry import reward


@reward("tool_call_format")
def tool_call_format(prompt: str, completion: str, *, calls: list, call_attempts: int, **_) -> float:
    """Mean over the episode's call attempts: 1 for a well-formed call of a known tool with fitting
    arguments, 0.5 for any other attempt (malformed JSON, unknown tool, bad arguments); 0 without any.

    The format signal a base model that writes prose needs before anything else can be learnt: the
    half credit rewards the first JSON-looking attempts, which are rare (about 4% of base samples).
    """
    if not call_attempts:
        return 0.0
    return (len(calls) + 0.5 * (call_attempts - len(calls))) / call_attempts


@reward("call_match")
def call_match(prompt: str, completion: str, *, calls: list, expected_calls: list, **_) -> float:
    """Expected calls matched in order (BFCL's rules: name and every argument) over the larger of the
    expected and the made call counts: a missing call and an extra (junk) call each cost their share."""
    return calls_match(calls, expected_calls)


@reward("env_outcome")
def env_outcome(prompt: str, completion: str, *, outcome: float, **_) -> float:
    """The environment's verdict: the final answer and/or the final state is right.

    Each environment's ``outcome`` compares whole answers (``rollout.answers``): never a
    substring, never a list of candidates; ``schemas`` wants exactly the expected calls.
    """
    return float(outcome)
