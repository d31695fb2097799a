"""Chat formatting: one place that turns messages into the token ids the engine sees.

Every sampler (RL, eval, distillation) formats through ``prompt_ids`` so a mode
reaches the model the same way everywhere: the mode's instruction as the system
message and, for a thinking mode, the thinking tags. For templates that do not
know the tags (SmolLM2's) we say how to use them in the system message; either
way a thinking prompt ends with the open tag, so the completion starts inside
the thinking block. Templates with their own switch (Qwen3's ``enable_thinking``)
get it from the mode, and a mode's ``template_kwargs`` pass any other switch
(docs/thinking.md shows both kinds of template).
"""

from __future__ import annotations

from .schema import ThinkingTags


def prompt_ids(tokenizer, user_message: str, system: str | None = None, mode=None, tags=None,
               history: list[dict] = ()) -> list[int]:
    """Token ids of a chat prompt, ending where the assistant (in ``mode``) starts.

    ``mode`` is a ``schema.EffortMode`` (``None``: plain chat); ``tags`` a
    ``schema.ThinkingTags`` (default ``<think>``/``</think>``); ``history`` the
    user/assistant turns before ``user_message`` (few-shot pairs), as given.
    """
    tags = tags or ThinkingTags()
    thinking = mode is not None and mode.thinking
    native = tags.open in (getattr(tokenizer, "chat_template", None) or "")
    parts = [system, mode.instruction if mode is not None else None]
    if thinking and not native:
        parts.append(tags.instruction.format(open=tags.open, close=tags.close))
    system_text = "\n".join(part for part in parts if part)
    messages = ([{"role": "system", "content": system_text}] if system_text else []) + list(history) + [
        {"role": "user", "content": user_message}
    ]
    extra = {"enable_thinking": thinking} if native and mode is not None else {}
    extra |= mode.template_kwargs if mode is not None else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    if thinking and not text.rstrip().endswith(tags.open):
        text += tags.open + "\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]
