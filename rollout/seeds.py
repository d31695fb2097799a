"""Where a rollout's randomness comes from: every vLLM request carries its own seed.

A completion is a function of (weights, prompt, step seed, seed key, sample index),
never of which engine served it, what else was in its batch, or what ran before it
on that engine. So ``engine.replicas: M`` samples what one engine samples, and a
resumed run samples step ``k`` as the uninterrupted run did.

- The **step seed** is ``sampling_seed(run.seed, step)``, set by ``RolloutEngine.reseed``.
- A prompt's **seed key** says which prompt of the step it is: ``SamplingSpec.seed_key``
  when the caller gives one (a multi-turn turn: its episode and turn), else
  ``(call, position)`` -- the number of submit calls since the reseed and the prompt's
  place in its call (``EnginePool`` counts and numbers a whole step's prompts the
  same way before spreading them over replicas).
- Sample ``k`` of a prompt gets ``request_seed(...) + k``: vLLM seeds the ``n > 1``
  children of a seeded request as ``seed + index``, so a plain ``n``-sample request and
  ``n`` one-sample thinking requests draw from the same streams.

On CPU a seeded request needs whole prefills: vLLM rolls a request's generator back
after a partial-prefill step (``gen.set_offset``), which a CPU generator refuses ("CPU
Generator does not use offset"). ``cpu_scheduler_args`` turns chunked prefill off and
makes a step's token budget hold the longest prompt, so no prefill is ever cut.

It must not know about engines, replicas or recipes.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 62  # room for ``+ k`` below 2**63 (torch.Generator.manual_seed's range); vLLM adds the index
CPU_BATCHED_TOKENS = 4096  # vLLM's own CPU default for max_num_batched_tokens (LLM class)


def sampling_seed(run_seed: int, step: int) -> int:
    """The sampler seed of a step: a pure function of (run seed, step), so a resumed run
    samples step k as the uninterrupted run did (same weights, same prompts, same stream)."""
    return (run_seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def request_seed(step_seed: int, key: tuple[int, ...], phase: str) -> int:
    """The vLLM seed of sample 0 of the prompt with seed key ``key`` in ``phase`` (``sample``: the first
    request, ``answer``: a budget-forced sample's answer request); sample ``k`` uses this + ``k``."""
    text = f"{step_seed}|{phase}|{','.join(str(part) for part in key)}"
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)


def prompt_digest(token_ids: list[int]) -> int:
    """A stable 32-bit digest of a prompt (part of a multi-turn turn's seed key)."""
    data = b"".join(token.to_bytes(4, "little", signed=True) for token in token_ids)
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big")


def cpu_scheduler_args(max_model_len: int) -> dict:
    """vLLM arguments under which no CPU prefill is ever split (see the module docstring)."""
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(CPU_BATCHED_TOKENS, max_model_len)}
