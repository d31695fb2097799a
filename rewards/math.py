"""Math rewards: the completion's *stated* final answer, compared to the gold by ``math-verify``.

Why not ``math_verify.parse(completion)``: it evaluates whatever expression it
finds, so a completion that restates the question ("7 + 5 =", "3 * 4") was
credited with the question's value. Here the answer is found by our rules and
must be a literal value; ``math-verify`` only decides whether that literal
equals the gold ("0.5" vs "1/2" vs "\\frac{1}{2}").
"""

from __future__ import annotations

import re

from .registry import reward

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
# A literal value: a number, a fraction of numbers, or a simple LaTeX value (\frac, \sqrt, \pi); never an operation.
_LITERAL = re.compile(
    rf"-?(?:(?:{_NUM})(?:/(?:{_NUM}))?|\\[dt]?frac\{{-?(?:{_NUM})\}}\{{-?(?:{_NUM})\}}|(?:{_NUM})?\\sqrt\{{(?:{_NUM})\}}|(?:{_NUM})?\\pi)"
)
# The math-looking run right after an answer marker ("answer is", "####"): numbers, operators, LaTeX, "or"/"and" --
# taken whole, so "the answer is 7 + 5" or "12 or 13" is seen as an expression or a list, not as "7" or "12".
_RUN = re.compile(r"(?:\\[a-zA-Z]+|\\[()\[\]$%,!]|[-−+*/×÷^=()\[\]{}\d.,$%\s]|\bor\b|\band\b)+")
_MARKERS = re.compile(r"\banswer\b\s*(?:is\b\s*:?|[:=])|####", re.IGNORECASE)
_NUMBER = re.compile(rf"(?<![\w.])-?(?:{_NUM})")
_OPERATORS = "+-−*/×÷^="
# Between two numbers, these make them alternatives ("12 or 13", "12, 13", "12 / 13", "12 13").
_ALTERNATIVE_GAP = re.compile(r"[\s,;/|?!]*(?:\b(?:or|and)\b)?[\s,;/|?!]*(?:maybe|perhaps|possibly)?\s*")
_UNIT_WORDS = re.compile(r"(?:\s+(?!or\b|and\b)[A-Za-z]+){0,3}\s*$")  # "12 apples"; never "12 or thirteen"
_TEXT_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mbox|textnormal)\{([^{}]*)\}")


@reward("math_verify")
def math_verify(prompt: str, completion: str, *, answer: str, **_) -> float:
    """1.0 if the completion's stated final answer is a literal equal to ``answer``, else 0.0.

    The final answer is, in this order:

    1. every ``\\boxed{...}``;
    2. else every explicit statement: "answer is N", "answer: N", "#### N", and a
       trailing "= N" at the very end of the text ("7 + 5 = 12" states 12);
    3. else the last standalone number (not next to an operator such as ``+`` or
       ``=``, and not one of several alternatives such as "12 or 13").

    Each stated answer must be a literal value: a number (thousands commas, units
    and ``$``/``%`` dropped), a fraction, or a simple LaTeX value (``\\frac``,
    ``\\sqrt``, ``\\pi``); in "expr = N" only N counts. An expression to evaluate
    ("7 + 5", "3 * 4", "\\boxed{7+5}") scores 0. Several stated answers must all
    equal the gold: "\\boxed{12} \\boxed{13}" or "12 or 13" score 0. Equality is
    ``math_verify.verify`` on the parsed literal, so "0.5" equals "\\frac{1}{2}".
    """
    from math_verify import parse, verify

    stated = stated_answers(str(completion or ""))
    gold = parse(str(answer))
    if not gold or not stated or None in stated:
        return 0.0
    for literal in stated:
        predicted = parse(literal)
        if not predicted or not verify(gold, predicted):
            return 0.0
    return 1.0


def stated_answers(text: str) -> list[str | None]:
    """The completion's final answers as literals (``None`` for one that is not a literal); ``[]`` if none."""
    text = _TEXT_WRAPPERS.sub(r" \1 ", text)
    boxed = _boxed_contents(text)
    if boxed:
        return [literal_value(inner) for inner in boxed]
    statements = [_run_after(text, marker.end()) for marker in _MARKERS.finditer(text)]
    stated = [literal_value(value) for value in statements if value is not None]
    trailing = _trailing_equation(text)
    if trailing is not None:
        stated.append(trailing)
    if stated:
        return stated
    number = _last_standalone_number(text)
    return [] if number is None else [number]


def literal_value(text: str) -> str | None:
    """``text`` as a literal value for ``math_verify.parse`` ("1,000 apples" -> "1000"); ``None`` if it is not one."""
    value = text.split("=")[-1]  # "7 + 5 = 12" states 12; "x = 3" states 3
    for noise in ("\\$", "$", "\\%", "%", "\\,", "\\!", "\\ ", "\\(", "\\)", "\\[", "\\]", "^\\circ", "^{\\circ}", "−"):
        value = value.replace(noise, "-" if noise == "−" else " ")
    value = _UNIT_WORDS.sub("", value.strip().strip("*").strip().rstrip(".,;:!").strip())
    value = re.sub(r"\s+", "", value).strip("*")
    if not _LITERAL.fullmatch(value):
        return None
    return value.replace(",", "") if "{" not in value else value


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced."""
    contents = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                contents.append(text[start:index])
                break
    return contents


def _run_after(text: str, start: int) -> str | None:
    """The math run right after an answer marker, when one starts there (``None`` for "the answer is that ...")."""
    run = _RUN.match(text, start)
    if not run or not re.search(r"\d|\\[dt]?frac|\\sqrt|\\pi", run.group()):
        return None
    return run.group()


def _trailing_equation(text: str) -> str | None:
    """N when the text ends with "= N" (units and closing punctuation allowed after it), else ``None``."""
    head, equals, tail = text.rpartition("=")
    if not equals or not head.strip():
        return None
    return literal_value(tail.strip().rstrip("$)]*.!\\ \n"))


def _last_standalone_number(text: str) -> str | None:
    """The last number that is not an operand ("7 + 5"), not a list member ("12 or 13"); ``None`` otherwise."""
    numbers = list(_NUMBER.finditer(text))
    for position in range(len(numbers) - 1, -1, -1):
        number = numbers[position]
        before, after = text[: number.start()].rstrip(), text[number.end():].lstrip()
        if (before and before[-1] in _OPERATORS) or (after and after[0] in _OPERATORS):
            continue
        if position and _ALTERNATIVE_GAP.fullmatch(text[numbers[position - 1].end(): number.start()]):
            return None
        return number.group().replace(",", "")
    return None
