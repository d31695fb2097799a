"""Procedural Python problems: write a small function, checked by assert tests.

Each template is a family of functions (``add_{k}``, ``keep_greater_than_{k}``, ...)
with randomized names, argument names and constants; the reference solution is
ours and only computes the expected values of the tests. A problem's *identity* is
(template, constants, function name): its held-out membership hashes that, so a
held-out function never appears in training under that name with those constants,
whatever its argument names (the same template may, under other names). Its examples
and tests are a pure function of its identity and argument names, so a problem's text
never changes with the seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

FAMILIES = ("number", "list", "string")
_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "green", "level", "noon", "radar",
          "house", "light", "bird", "sun", "moon", "code", "data", "tree", "rock")


@dataclass(frozen=True)
class Template:
    key: str
    family: str
    names: tuple[str, ...]  # may use the constants, e.g. "add_{k}"
    args: tuple[tuple[str, ...], ...]  # alternative argument names
    describe: str  # uses {a0}, {a1} and the constants
    make_input: Callable[[random.Random, dict], tuple]
    solve: Callable[..., object]
    constants: Callable[[random.Random], dict] = field(default=lambda rng: {})


def _ints(rng, low=-20, high=50):
    return (rng.randint(low, high),)


def _int_list(rng, low=-9, high=30, min_len=0, max_len=7):
    return ([rng.randint(low, high) for _ in range(rng.randint(min_len, max_len))],)


def _nonempty(rng, c):
    return _int_list(rng, min_len=1)


def _word(rng, c):
    if rng.random() < 0.3:
        half = "".join(rng.choice("abcde") for _ in range(rng.randint(1, 3)))
        return (half + half[::-1][rng.randint(0, 1):],)
    return (rng.choice(_WORDS) + rng.choice(("", "s", "er", rng.choice(_WORDS))),)


def _sentence(rng, c):
    return (" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5))),)


def _k(low, high):
    return lambda rng: {"k": rng.randint(low, high)}


X = (("x",), ("n",), ("value",), ("num",))
XY = (("a", "b"), ("x", "y"), ("first", "second"))
NUMS = (("numbers",), ("nums",), ("values",), ("items",))
TEXT = (("s",), ("text",), ("word",))
WORDS = (("words",), ("parts",), ("items",))

TEMPLATES = (
    Template("add", "number", ("add_{k}", "plus_{k}", "increase_by_{k}"), X, "returns {a0} plus {k}",
             lambda r, c: _ints(r), lambda x, k: x + k, _k(2, 60)),
    Template("sub", "number", ("subtract_{k}", "minus_{k}", "decrease_by_{k}"), X, "returns {a0} minus {k}",
             lambda r, c: _ints(r), lambda x, k: x - k, _k(2, 60)),
    Template("mul", "number", ("times_{k}", "multiply_by_{k}", "scale_by_{k}"), X, "returns {a0} multiplied by {k}",
             lambda r, c: _ints(r), lambda x, k: x * k, _k(2, 12)),
    Template("divisible", "number", ("divisible_by_{k}", "is_multiple_of_{k}"), X,
             "returns True if {a0} is divisible by {k}, otherwise False",
             lambda r, c: (r.randint(0, 10) * c["k"] + r.choice((0, 0, 1, 2)),), lambda x, k: x % k == 0, _k(2, 12)),
    Template("square", "number", ("square", "squared", "sq"), X, "returns the square of {a0}",
             lambda r, c: _ints(r, -15, 15), lambda x: x * x),
    Template("clamp", "number", ("clamp_{lo}_{hi}", "limit_{lo}_{hi}"), X,
             "returns {a0} limited to the range {lo} to {hi}: {lo} if it is smaller, {hi} if it is larger",
             lambda r, c: _ints(r, c["lo"] - 10, c["hi"] + 10), lambda x, lo, hi: max(lo, min(hi, x)),
             lambda r: {"lo": (lo := r.randint(0, 10)), "hi": lo + r.randint(3, 30)}),
    Template("digit_sum", "number", ("digit_sum", "sum_of_digits", "add_digits"), X,
             "returns the sum of the decimal digits of the non-negative integer {a0}",
             lambda r, c: (r.randint(0, 99999),), lambda x: sum(map(int, str(x)))),
    Template("absdiff", "number", ("abs_difference", "distance", "gap"), XY,
             "returns the absolute difference between {a0} and {a1}",
             lambda r, c: _ints(r) + _ints(r), lambda a, b: abs(a - b)),
    Template("larger", "number", ("larger", "bigger", "max_of_two"), XY, "returns the larger of {a0} and {a1}",
             lambda r, c: _ints(r) + _ints(r), lambda a, b: max(a, b)),
    Template("even", "number", ("is_even", "even"), X, "returns True if {a0} is even, otherwise False",
             lambda r, c: _ints(r), lambda x: x % 2 == 0),
    Template("triangle", "number", ("sum_up_to", "total_to", "triangle"), X,
             "returns the sum of all integers from 1 to {a0} (0 when {a0} is 0)",
             lambda r, c: (r.randint(0, 40),), lambda x: x * (x + 1) // 2),
    Template("relu", "number", ("positive_part", "relu", "keep_positive"), X,
             "returns {a0} if it is positive, otherwise 0", lambda r, c: _ints(r, -30, 30), lambda x: max(x, 0)),
    Template("yes_above", "number", ("above_{k}", "check_over_{k}"), X,
             "returns the string 'yes' if {a0} is greater than {k}, otherwise the string 'no'",
             lambda r, c: _ints(r, c["k"] - 5, c["k"] + 5), lambda x, k: "yes" if x > k else "no", _k(0, 50)),
    Template("sum_above", "list", ("sum_above_{k}", "total_over_{k}"), NUMS,
             "returns the sum of the elements of the list {a0} that are greater than {k}",
             lambda r, c: _int_list(r), lambda xs, k: sum(x for x in xs if x > k), _k(0, 15)),
    Template("count_k", "list", ("count_{k}s", "how_many_{k}"), NUMS,
             "returns how many elements of the list {a0} are equal to {k}",
             lambda r, c: ([r.choice((c["k"], r.randint(0, 9))) for _ in range(r.randint(0, 7))],),
             lambda xs, k: xs.count(k), _k(0, 9)),
    Template("keep_above", "list", ("keep_above_{k}", "filter_over_{k}", "greater_than_{k}"), NUMS,
             "returns a list of the elements of {a0} that are greater than {k}, in their original order",
             lambda r, c: _int_list(r), lambda xs, k: [x for x in xs if x > k], _k(0, 15)),
    Template("keep_even", "list", ("keep_even", "only_even", "even_numbers"), NUMS,
             "returns a list of the even elements of {a0}, in their original order",
             lambda r, c: _int_list(r), lambda xs: [x for x in xs if x % 2 == 0]),
    Template("scale_list", "list", ("multiply_all_by_{k}", "scale_list_{k}"), NUMS,
             "returns a new list with every element of {a0} multiplied by {k}",
             lambda r, c: _int_list(r), lambda xs, k: [x * k for x in xs], _k(2, 10)),
    Template("shift_list", "list", ("add_{k}_to_all", "shift_by_{k}"), NUMS,
             "returns a new list with {k} added to every element of {a0}",
             lambda r, c: _int_list(r), lambda xs, k: [x + k for x in xs], _k(1, 20)),
    Template("list_max", "list", ("largest", "list_max", "biggest"), NUMS,
             "returns the largest element of the non-empty list {a0}", _nonempty, lambda xs: max(xs)),
    Template("list_min", "list", ("smallest", "list_min", "lowest"), NUMS,
             "returns the smallest element of the non-empty list {a0}", _nonempty, lambda xs: min(xs)),
    Template("reverse_list", "list", ("reverse_list", "backwards", "reversed_items"), NUMS,
             "returns a new list with the elements of {a0} in reverse order", lambda r, c: _int_list(r),
             lambda xs: xs[::-1]),
    Template("list_sum", "list", ("total", "list_sum", "add_all"), NUMS,
             "returns the sum of the elements of the list {a0} (0 for an empty list)", lambda r, c: _int_list(r),
             lambda xs: sum(xs)),
    Template("head", "list", ("first_{k}", "take_{k}", "head_{k}"), NUMS,
             "returns a list of the first {k} elements of {a0} (all of them if it is shorter)",
             lambda r, c: _int_list(r), lambda xs, k: xs[:k], _k(1, 5)),
    Template("dedupe", "list", ("unique", "dedupe", "remove_duplicates"), NUMS,
             "returns a list of the elements of {a0} without repeats, keeping the first occurrence of each",
             lambda r, c: ([r.randint(0, 5) for _ in range(r.randint(0, 8))],), lambda xs: list(dict.fromkeys(xs))),
    Template("count_even", "list", ("count_even", "how_many_even", "even_count"), NUMS,
             "returns how many elements of the list {a0} are even", lambda r, c: _int_list(r),
             lambda xs: sum(x % 2 == 0 for x in xs)),
    Template("last", "list", ("last", "last_item", "final_element"), NUMS,
             "returns the last element of the non-empty list {a0}", _nonempty, lambda xs: xs[-1]),
    Template("length", "list", ("length", "count_items", "size"), NUMS,
             "returns the number of elements in the list {a0}", lambda r, c: _int_list(r), lambda xs: len(xs)),
    Template("reverse_str", "string", ("reverse", "reverse_string", "backwards_text"), TEXT,
             "returns the string {a0} reversed", _word, lambda s: s[::-1]),
    Template("vowels", "string", ("count_vowels", "vowel_count", "num_vowels"), TEXT,
             "returns how many vowels (a, e, i, o, u) the lowercase string {a0} contains", _word,
             lambda s: sum(ch in "aeiou" for ch in s)),
    Template("count_char", "string", ("count_{c}", "how_many_{c}"), TEXT,
             "returns how many times the letter '{c}' appears in the string {a0}", _word,
             lambda s, c: s.count(c), lambda r: {"c": r.choice("aeionrst")}),
    Template("upper", "string", ("shout", "to_upper", "uppercase"), TEXT,
             "returns the string {a0} in upper case", _word, lambda s: s.upper()),
    Template("repeat", "string", ("repeat_{k}", "times_{k}_text", "echo_{k}"), TEXT,
             "returns the string {a0} repeated {k} times", _word, lambda s, k: s * k, _k(2, 4)),
    Template("palindrome", "string", ("is_palindrome", "palindrome", "reads_same_backwards"), TEXT,
             "returns True if the string {a0} reads the same forwards and backwards, otherwise False", _word,
             lambda s: s == s[::-1]),
    Template("replace", "string", ("swap_{c}_{d}", "replace_{c}_with_{d}"), TEXT,
             "returns the string {a0} with every '{c}' replaced by '{d}'", _word,
             lambda s, c, d: s.replace(c, d), lambda r: dict(zip("cd", r.sample("aeiorstn", 2)))),
    Template("prefix", "string", ("first_{k}_letters", "prefix_{k}", "head_text_{k}"), TEXT,
             "returns the first {k} characters of the string {a0} (all of it if it is shorter)", _word,
             lambda s, k: s[:k], _k(1, 5)),
    Template("word_count", "string", ("count_words", "word_count", "num_words"), TEXT,
             "returns the number of words in the string {a0}, where words are separated by single spaces",
             _sentence, lambda s: len(s.split())),
    Template("greet", "string", ("add_prefix_{p}", "prepend_{p}"), TEXT,
             "returns the string {a0} with '{p}' put in front of it", _word, lambda s, p: p + s,
             lambda r: {"p": r.choice(("pre", "un", "re", "mega", "x", "my_"))}),
    Template("join", "string", ("join_words", "glue", "combine"), WORDS,
             "returns the strings in the list {a0} joined together with '{sep}' between them",
             lambda r, c: ([r.choice(_WORDS) for _ in range(r.randint(0, 4))],), lambda ws, sep: sep.join(ws),
             lambda r: {"sep": r.choice(("-", ", ", "+", " ", "_"))}),
    Template("str_len", "string", ("text_length", "char_count", "string_size"), TEXT,
             "returns the number of characters in the string {a0}", _word, lambda s: len(s)),
)


def _stable_rng(*parts) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_problem(template: Template, constants: dict, name: str, args: tuple[str, ...], tests: int = 4) -> dict:
    """One row: question, assert tests, entry point, and the identity its held-out split hashes."""
    identity = f"{template.key}:{sorted(constants.items())}:{name}"
    rng = _stable_rng(identity, name, args)
    inputs, seen = [], set()
    for _ in range(tests * 10):
        item = template.make_input(rng, constants)
        if repr(item) not in seen:
            seen.add(repr(item))
            inputs.append(item)
        if len(inputs) == tests:
            break
    calls = [f"{name}({', '.join(map(repr, item))})" for item in inputs]
    expected = [template.solve(*item, **constants) for item in inputs]
    description = template.describe.format(**constants, **{f"a{i}": a for i, a in enumerate(args)})
    question = (
        f"Write a Python function `{name}({', '.join(args)})` that {description}.\n"
        f"For example, `{calls[0]}` should return `{expected[0]!r}`."
    )
    return {
        "question": question,
        "tests": [f"assert {call} == {value!r}" for call, value in zip(calls, expected)],
        "entry_point": name,
        "split_key": identity,
        "source": "code_synth",
    }


def synth_rows(seed: int, count: int, families: list[str] | None = None):
    """Up to ``count`` distinct problems (fewer if the templates run out), in a seed-determined order."""
    templates = [t for t in TEMPLATES if families is None or t.family in families]
    if not templates:
        raise ValueError(f"code_synth: no templates in families {families}; known: {list(FAMILIES)}")
    rng, seen = random.Random(seed), set()
    for _ in range(count * 10):
        template = rng.choice(templates)
        constants = template.constants(rng)
        name, args = rng.choice(template.names).format(**constants), rng.choice(template.args)
        key = (template.key, tuple(sorted(constants.items())), name, args)  # the question is a function of it
        if key in seen:
            continue
        seen.add(key)
        yield make_problem(template, constants, name, args)
        if len(seen) == count:
            return
