"""Procedural instruction-following prompts: a writing task on a topic plus 1-3 verifiable constraints.

Each constraint is drawn from ``rewards.instruct.CHECKERS`` (IFEval-style, not
the IFBench test constraints) with random arguments and phrased in English; the
row carries the ids and arguments its reward needs. Constraints that cannot
hold together (lowercase and all capitals, JSON and bullet points, ...) are
never drawn into one prompt. Rows are deduplicated, and any prompt that equals
an IFBench test prompt is dropped, so training never sees the test set.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset

TOPICS = [
    "the ocean at night", "a city bicycle commute", "learning a second language", "houseplants",
    "the history of tea", "a rainy afternoon", "saving money as a student", "volcanoes", "honeybees",
    "a first day at a new job", "public libraries", "winter camping", "the moon landing", "street food",
    "recycling at home", "a lost umbrella", "chess for beginners", "morning routines", "desert animals",
    "building a birdhouse", "the invention of the printing press", "a mountain village", "friendship",
    "electric cars", "a school science fair", "jazz music", "baking bread", "time management",
    "the water cycle", "a train journey", "ancient Rome", "a neighborhood garden", "thunderstorms",
    "a robot that learns to paint", "the importance of sleep", "coral reefs", "a small bookshop",
    "board games with family", "the first snowfall", "a lighthouse keeper", "healthy breakfasts",
    "solar energy", "a visit to a museum", "penguins", "a childhood memory", "online privacy",
    "a marathon runner", "the northern lights", "writing letters by hand", "a busy airport",
]

TASKS = [
    "Write a short paragraph about {topic}.",
    "Describe {topic} to a ten-year-old.",
    "Give some practical advice related to {topic}.",
    "Write a brief story involving {topic}.",
    "Explain why people might care about {topic}.",
    "Write a short blog post about {topic}.",
    "Write a friendly note to a friend about {topic}.",
    "Summarize what you know about {topic}.",
    "Write a product description for something related to {topic}.",
    "Write a short poem about {topic}.",
]

KEYWORDS = ["river", "lantern", "silver", "garden", "whistle", "harbor", "maple", "compass", "velvet", "orbit",
            "meadow", "puzzle", "candle", "echo", "pebble", "thunder", "ribbon", "falcon", "marble", "breeze"]
FORBIDDEN = ["very", "really", "thing", "good", "important", "great", "also", "just", "many", "people"]
START_WORDS = ["Today", "Imagine", "Yes", "Once", "Listen", "Honestly", "First", "Well"]
END_PHRASES = ["Is there anything else I can help with?", "That is all for now.", "Thanks for reading.",
               "Let me know what you think."]
SPLITTERS = ["Section", "Part", "Step"]


@dataclass(frozen=True)
class ConstraintSpec:
    """How to draw one constraint: its id, what it excludes, and ``draw(rng) -> (kwargs, phrase)``."""

    instruction_id: str
    tags: frozenset[str]  # two constraints sharing a tag are never drawn together
    draw: Callable[[random.Random], tuple[dict, str]]


def _spec(instruction_id: str, tags: str, draw: Callable) -> ConstraintSpec:
    return ConstraintSpec(instruction_id, frozenset(tags.split()), draw)


def _relation(rng: random.Random, low: tuple[int, int], high: tuple[int, int]) -> tuple[str, int]:
    relation = rng.choice(["less than", "at least"])
    return relation, rng.randint(*(high if relation == "less than" else low))


def _words(rng):
    relation, n = _relation(rng, (20, 60), (40, 120))
    return {"relation": relation, "num_words": n}, f"Answer with {relation} {n} words."


def _sentences(rng):
    relation, n = _relation(rng, (2, 5), (3, 6))
    return {"relation": relation, "num_sentences": n}, f"Your response should contain {relation} {n} sentences."


def _paragraphs(rng):
    n = rng.randint(2, 4)
    return {"num_paragraphs": n}, f"Write exactly {n} paragraphs, separated from each other by a blank line."


def _bullets(rng):
    n = rng.randint(2, 5)
    return {"num_bullets": n}, f'Your answer must contain exactly {n} bullet points, each on its own line starting with "* ".'


def _keywords(rng):
    chosen = rng.sample(KEYWORDS, 2)
    return {"keywords": chosen}, f"Include the keywords {chosen[0]} and {chosen[1]} in your response."


def _forbidden(rng):
    chosen = rng.sample(FORBIDDEN, 2)
    return {"forbidden_words": chosen}, f"Do not use the words {chosen[0]} or {chosen[1]} anywhere in your response."


def _frequency(rng):
    word, n = rng.choice(KEYWORDS), rng.randint(2, 4)
    return {"keyword": word, "frequency": n, "relation": "at least"}, f"Use the word {word} at least {n} times."


def _sections(rng):
    n, splitter = rng.randint(2, 4), rng.choice(SPLITTERS)
    phrase = f"Split your response into {n} sections, starting each with {splitter} X (for example {splitter} 1)."
    return {"num_sections": n, "section_spliter": splitter}, phrase


def _end(rng):
    phrase = rng.choice(END_PHRASES)
    return {"end_phrase": phrase}, f"Finish your response with this exact phrase: {phrase} No other words should follow it."


def _start(rng):
    word = rng.choice(START_WORDS)
    return {"first_word": word}, f'Begin your response with the word "{word}".'


def _highlights(rng):
    n = rng.randint(1, 3)
    return {"num_highlights": n}, f"Highlight at least {n} part{'s' if n > 1 else ''} of your answer with markdown, i.e. *highlighted part*."


def _placeholders(rng):
    n = rng.randint(1, 3)
    return {"num_placeholders": n}, f"Include at least {n} placeholder{'s' if n > 1 else ''} in square brackets, such as [name]."


def _fixed(phrase: str) -> Callable:
    return lambda rng: ({}, phrase)


CONSTRAINT_SPECS = [
    _spec("change_case:english_lowercase", "case", _fixed("Your entire response must be in lowercase letters; no capital letters are allowed.")),
    _spec("change_case:english_capital", "case", _fixed("Write your entire response in English capital letters only.")),
    _spec("length_constraints:number_words", "length", _words),
    _spec("length_constraints:number_sentences", "length", _sentences),
    _spec("length_constraints:number_paragraphs", "layout", _paragraphs),
    _spec("detectable_format:number_bullet_lists", "layout", _bullets),
    _spec("keywords:existence", "keywords", _keywords),
    _spec("keywords:forbidden_words", "forbidden", _forbidden),
    _spec("keywords:frequency", "keywords", _frequency),
    _spec("detectable_format:json_format", "layout case start end wrap title comma", _fixed("Wrap your entire output in JSON format.")),
    _spec("detectable_format:title", "title", _fixed("Give your answer a title wrapped in double angular brackets, such as <<my title>>.")),
    _spec("detectable_format:multiple_sections", "layout", _sections),
    _spec("startend:end_checker", "end case", _end),
    _spec("startend:start_checker", "start", _start),
    _spec("startend:quotation", "wrap start end", _fixed("Wrap your entire response in double quotation marks.")),
    _spec("punctuation:no_comma", "comma", _fixed("Do not use any commas in your response.")),
    _spec("detectable_content:postscript", "end case", lambda rng: ({"postscript_marker": "P.S."}, "At the end of your response, add a postscript starting with P.S.")),
    _spec("detectable_format:number_highlighted_sections", "highlight", _highlights),
    _spec("detectable_content:number_placeholders", "placeholder", _placeholders),
]
SPEC_IDS = [spec.instruction_id for spec in CONSTRAINT_SPECS]


def _draw_constraints(rng: random.Random, specs: list[ConstraintSpec], count: int) -> list[tuple[str, dict, str]]:
    chosen, used_tags = [], set()
    for spec in rng.sample(specs, len(specs)):
        if len(chosen) == count:
            break
        if spec.tags & used_tags:
            continue
        kwargs, phrase = spec.draw(rng)
        chosen.append((spec.instruction_id, kwargs, phrase))
        used_tags |= spec.tags
    return chosen


def _rows(seed: int, count: int, min_constraints: int, max_constraints: int, constraint_ids, excluded_prompts):
    rng = random.Random(seed)
    specs = [s for s in CONSTRAINT_SPECS if not constraint_ids or s.instruction_id in constraint_ids]
    seen = set(excluded_prompts)
    for _ in range(count):
        task = rng.choice(TASKS).format(topic=rng.choice(TOPICS))
        constraints = _draw_constraints(rng, specs, rng.randint(min_constraints, max_constraints))
        question = " ".join([task] + [phrase for _, _, phrase in constraints])
        if question.strip() in seen:
            continue
        seen.add(question.strip())
        yield {
            "question": question,
            "instruction_id_list": [instruction_id for instruction_id, _, _ in constraints],
            "kwargs_json": json.dumps([kwargs for _, kwargs, _ in constraints]),
            "source": "if_synth",
        }


def load_if_synth(seed: int, count: int, min_constraints: int, max_constraints: int, constraint_ids=(),
                  excluded_prompts=()) -> Dataset:
    """Procedural prompts (deterministic in ``seed``), minus ``excluded_prompts`` (IFBench's test prompts)."""
    unknown = sorted(set(constraint_ids) - set(SPEC_IDS))
    if unknown:
        raise ValueError(f"if_synth constraints {unknown} are unknown; known: {SPEC_IDS}")
    return Dataset.from_generator(
        _rows,
        gen_kwargs={
            "seed": seed, "count": count, "min_constraints": min_constraints, "max_constraints": max_constraints,
            "constraint_ids": tuple(sorted(constraint_ids)), "excluded_prompts": tuple(sorted(excluded_prompts)),
        },
    )
