"""Judging an episode's final answer against the environment's expected value.

RL finds any slack in an outcome check, so the answer is compared whole, never
by substring: "May" must not match "Maybe it is held in June", "100" must not
match "1000", and a reply listing every candidate value must not win.

- A number is compared as a number: the reply's last number must equal it and
  stand alone: not an operand ("45 + 23"), not one of alternatives ("68 or 69",
  "67, 68", "67 68", "Marth, 1974, 100"). "23 plus 45 is 68." and "It has 9,400 people." state it.
- Text is compared word by word after normalising (case, punctuation, articles,
  titles such as "Dr."): the reply's last sentence must *end with* the value,
  and the value must not close a list ("blue, Paris", "Oslo or Paris").
  "Marth", "The capital of Veloria is Marth." and "It was discovered by Dr. Ilse
  Varga." state it; "Marth is the capital." does not (the answer comes last).
- ``others``: the environment's other candidate values; a reply naming any of
  them (whole words) is a list of guesses, not an answer.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_OPERATORS = "+-−*/×÷^"
_ALTERNATIVE_GAP = re.compile(r"[\s,;/|&?!:]*(?:\b(?:or|and)\b)?[\s,;/|&?!:]*(?:maybe|perhaps|possibly)?\s*")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+|[,;/&]")
_DROPPED = {"a", "an", "the", "dr", "mr", "mrs", "ms", "prof"}  # words that never decide an answer
_LIST_TOKENS = {",", ";", "/", "&", "or", "and"}
_SENTENCE_END = re.compile(r"(?<!\d)[.!?]+|[.!?]+(?!\d)|\n")


def as_number(value) -> float | None:
    """``value`` as a number when it is one ("2,310" -> 2310.0), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    return float(text.replace(",", "")) if _NUMBER.fullmatch(text) else None


def answer_matches(reply: str, expected, others=()) -> bool:
    """Whether ``reply`` states ``expected`` as its answer (see the module docstring for the rules)."""
    reply = str(reply or "")
    if any(_names(reply, other) for other in others if _words(str(other)) != _words(str(expected))):
        return False
    number = as_number(expected)
    if number is not None:
        stated = stated_number(reply)
        return stated is not None and abs(stated - number) < 1e-6
    return _ends_with_value(reply, str(expected))


def stated_number(text: str) -> float | None:
    """The reply's last number when it stands alone (not an operand, not among alternatives), else ``None``."""
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    last = numbers[-1]
    before, after = text[: last.start()].rstrip(), text[last.end():].lstrip()
    if (before and before[-1] in _OPERATORS) or (after and after[0] in _OPERATORS + "="):
        return None
    if len(numbers) > 1 and _ALTERNATIVE_GAP.fullmatch(text[numbers[-2].end(): last.start()]):
        return None
    if re.search(r"(?:[,;/&]|\b(?:or|and)\b)\s*$", before, flags=re.IGNORECASE):
        return None  # "Marth, 1974, 100": the last member of a list of values, not an answer
    if re.match(r"[,;]?\s*or\b", after, flags=re.IGNORECASE):
        return None  # "100 or Marth": a hedge
    return float(last.group().replace(",", ""))


def _tokens(text: str) -> list[str]:
    """Lower-cased words and list punctuation; thousands commas kept inside numbers ("9,400" -> "9400")."""
    tokens = [token.lower() for token in _TOKEN.findall(text)]
    return [token.replace(",", "") if token[0].isdigit() else token for token in tokens if token not in _DROPPED]


def _words(text: str) -> list[str]:
    return [token for token in _tokens(text) if token not in _LIST_TOKENS]


def _names(reply: str, value: str) -> bool:
    """Whether ``value``'s words occur in ``reply`` as a whole-word run."""
    want, words = _words(value), _words(reply)
    return bool(want) and any(words[i: i + len(want)] == want for i in range(len(words) - len(want) + 1))


def _ends_with_value(reply: str, expected: str) -> bool:
    sentences = [chunk for chunk in _SENTENCE_END.split(reply) if _words(chunk)]
    if not sentences:
        return False
    tokens, want = _tokens(sentences[-1]), _words(expected)
    if not want or tokens[-len(want):] != want:
        return False
    before = tokens[: -len(want)]
    return not (before and before[-1] in _LIST_TOKENS)  # "blue, Paris" / "Oslo or Paris": a list, not an answer
