"""Chat formatting: one place that turns messages into the token ids the engine sees."""

from __future__ import annotations


def prompt_ids(tokenizer, user_message: str, system: str | None = None) -> list[int]:
    """Token ids of a single-turn chat prompt, ending where the assistant starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
