"""Your own data: the ``dataset`` source every domain takes, loaded once, checked before any work.

One schema (``DatasetSource``, ``kind: dataset``) and one loader for math, code,
instruction following and agents (and the SFT stage's ``sft.data``): a hub id, or
a local json / jsonl / parquet / csv file or a directory of them, read with
``datasets``. What differs per domain is only which fields a problem must carry
(``Task.dataset_fields``: ``answer`` for math, ``tests`` for code, ...); the
source's ``columns`` maps those fields to the dataset's own column names.

A row becomes a ``Problem``: its prompt from the ``prompt`` column, or from a
chat ``messages`` column (system + user turns, few-shot pairs; the last turn is
the user's); its domain fields from the mapped columns; and every other column
under its own name, so it reaches the rewards as a keyword argument
(``rewards/scoring.py`` passes a reward only the keywords it accepts).

Held-out rows: a named split (``heldout_split``), or the stable hash slice of the
prompt (``heldout: hash``, as every built-in source), or every row (``all``: an
eval-only source, what ``posttrain eval --dataset`` builds), or none.

``check_dataset_source`` answers every way a dataset can fail to fit -- a file that
does not exist, a format that does not match its suffix, a hub id that cannot be
reached, an empty split, a missing column, a filter or a prompt that does not fit
-- as messages naming the field path and the columns that *are* there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from datasets import Dataset, DatasetDict, disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
from datasets import load_dataset as _load_dataset
from pydantic import Field, model_validator

from .hub import looks_like_hub_id, unreachable_message
from .schema import Source

HELDOUT_PERCENT = 10  # share of every hash-split source reserved for held-out eval
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
RESERVED = ("prompt", "completion")  # a reward's positional arguments: never passed as keywords too
LOCAL_HINT = "download it where the hub is reachable, or point the path at a local file or directory"
Scalar = str | int | float | bool


def is_heldout(key: str) -> bool:
    """Whether a problem (by its identity text) belongs to the held-out slice: stable across seeds and runs."""
    digest = hashlib.sha256(key.strip().encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


class DatasetError(ValueError):
    """A dataset that cannot be read as configured; the message names what is wrong."""


class DatasetSource(Source):
    kind: Literal["dataset"] = Field(description="your own data: a hub id, or a local json / jsonl / parquet / csv file or directory (docs/data.md)")
    path: str = Field(description="local file or directory (relative to the working directory), or a hub id 'org/name'")
    format: Literal["json", "parquet", "csv"] | None = Field(None, description="file format; default: from the file suffix (.jsonl/.json, .parquet, .csv)")
    split: str = Field("train", description="the split to train on")
    subset: str | None = Field(None, description="hub datasets: the configuration (subset) name")
    prompt: str | None = Field("prompt", description="column holding the user message (unused when `messages` is set)")
    messages: str | None = Field(None, description="column holding the prompt as chat turns [{role, content}]: system, few-shot user/assistant pairs, then the user turn")
    columns: dict[str, str] = Field(default_factory=dict, description="the domain's fields -> your column names, e.g. {answer: final_answer}; a field not listed is read from the column of its own name")
    system: str | None = Field(None, description="system message for every prompt of this source (before the mode's instruction)")
    instruction: str | None = Field(None, description="appended to every user message of this source instead of task.instruction ('' for none)")
    filter: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict, description="keep rows whose column equals the value (or one of the listed values)")
    heldout: Literal["hash", "all", "none"] = Field("hash", description="held-out rows: hash = a stable 10% slice by prompt; all = every row (an eval-only source); none = train on every row")
    heldout_split: str | None = Field(None, description="a split that is the held-out suite (then every row of `split` trains)")
    suite: str | None = Field(None, description="the name of its held-out suite (eval reports, eval.suites); default: dataset(<file stem or hub id>)")

    @model_validator(mode="after")
    def _one_prompt_column(self) -> DatasetSource:
        if self.messages is None and not self.prompt:
            raise ValueError("set `prompt` (a text column) or `messages` (a chat column)")
        reserved = sorted(set(self.columns) & set(RESERVED))
        if reserved:
            raise ValueError(f"columns: {reserved} are the prompt and completion themselves, not fields")
        return self


def suite_name(source: DatasetSource) -> str:
    if source.suite:
        return source.suite
    path = Path(source.path)
    return f"dataset({path.stem if not looks_like_hub_id(source.path) or path.exists() else source.path})"


def shared_hint(path: str) -> str:
    """``../shared`` is beside a posttrain checkout: a recipe naming it works from the checkout only."""
    if Path(path).parts[:2] == ("..", "shared"):
        return "; ../shared sits beside a posttrain checkout: run from the checkout's root, or give an absolute path"
    return ""


def _local_format(path: Path, declared: str | None) -> str:
    files = sorted(p for p in path.rglob("*") if p.suffix in FORMATS) if path.is_dir() else [path]
    suffixes = {FORMATS.get(p.suffix) for p in files}
    if declared:
        return declared
    if not files:
        raise DatasetError(f"directory {str(path)!r} holds no .jsonl / .json / .parquet / .csv file")
    if None in suffixes or len(suffixes) != 1:
        raise DatasetError(f"{str(path)!r}: cannot tell the format from the suffix (set `format`: json, parquet or csv)")
    return suffixes.pop()


def open_split(path: str, split: str, subset: str | None = None, format: str | None = None) -> Dataset:
    """One split of a local file (its rows are the split ``train``), of a local directory (splits by file
    name: ``train.parquet``, ``test.parquet``, ``data/train-*.jsonl``; otherwise ``train``) or of a hub dataset."""
    local = Path(path).expanduser()
    if local.exists():
        kind = _local_format(local, format)
        try:
            where = {"data_dir": str(local)} if local.is_dir() else {"data_files": str(local)}
            loaded = load_dataset(kind, **where)
        except Exception as error:  # noqa: BLE001 - pyarrow / json errors: say which file and format
            if "corresponds to no data" in str(error):  # datasets' words for a file with no rows
                raise DatasetError(f"{path!r} holds no rows (an empty split)") from None
            raise DatasetError(f"cannot read {path!r} as {kind}: {_first_line(error)}") from None
        return _pick_split(loaded, split, path)
    if not looks_like_hub_id(path) or Path(path).suffix in FORMATS:
        raise DatasetError(f"file {path!r} does not exist (relative paths are from the working directory, {Path.cwd()}){shared_hint(path)}")
    if message := unreachable_message(path, "dataset", LOCAL_HINT):
        raise DatasetError(message)
    try:
        loaded = load_dataset(path, subset)
    except Exception as error:  # noqa: BLE001 - an unknown id, a gated one, a missing subset
        raise DatasetError(f"cannot load hub dataset {path!r}: {_first_line(error)}") from None
    return _pick_split(loaded, split, path)


def _pick_split(loaded: DatasetDict, split: str, path: str) -> Dataset:
    if split not in loaded:
        raise DatasetError(f"{path!r} has no split {split!r} (splits: {sorted(loaded)})")
    return loaded[split]


def load_dataset(*args, **kwargs) -> DatasetDict:
    """``datasets.load_dataset`` without its progress bars (a check reads a few files; bars are noise)."""
    shown = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        return _load_dataset(*args, **kwargs)
    finally:
        if shown:
            enable_progress_bars()


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _filtered(rows: Dataset, source: DatasetSource) -> Dataset:
    if not source.filter:
        return rows
    wanted = {col: set(v) if isinstance(v, list) else {v} for col, v in source.filter.items()}
    shown = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        return rows.filter(lambda row: all(row[col] in values for col, values in wanted.items()))
    finally:
        if shown:
            enable_progress_bars()


def field_columns(source: DatasetSource, fields: tuple[str, ...]) -> dict[str, str]:
    """Domain field -> column it is read from."""
    return {name: source.columns.get(name, name) for name in (*fields, *source.columns)}


def check_dataset_source(source: DatasetSource, where: str, required: tuple[str, ...]) -> list[str]:
    """Every problem with ``source`` for a domain whose problems need ``required`` fields, each naming its field path."""
    try:
        rows = open_split(source.path, source.split, source.subset, source.format)
    except DatasetError as error:
        return [f"{where}.{'split' if 'has no split' in str(error) else 'path'}: {error}"]
    try:
        heldout_rows = open_split(source.path, source.heldout_split, source.subset, source.format) if source.heldout_split else None
    except DatasetError as error:
        return [f"{where}.heldout_split: {error}"]
    columns = rows.column_names
    there = f"(columns: {columns})"
    problems = [f"{where}.{field}: no column {column!r} in {source.path} {there}" for field, column in _wanted(source, required).items()
                if column not in columns]
    if heldout_rows is not None and set(heldout_rows.column_names) != set(columns):
        problems.append(f"{where}.heldout_split: split {source.heldout_split!r} has other columns ({heldout_rows.column_names}) than {source.split!r} {there}")
    if problems:
        return problems
    if len(rows) == 0:
        return [f"{where}.split: split {source.split!r} of {source.path} is empty {there}"]
    kept = _filtered(rows, source)
    if len(kept) == 0:
        return [f"{where}.filter: no row of {source.path} ({len(rows)} rows) passes {source.filter}"]
    try:
        for row in kept.select(range(min(len(kept), 64))):
            row_problem(row, source, required, "?")
    except DatasetError as error:
        return [f"{where}.{'messages' if source.messages else 'prompt'}: {error}"]
    return []


def _wanted(source: DatasetSource, required: tuple[str, ...]) -> dict[str, str]:
    """Field path (below the source) -> the column it needs."""
    wanted = {"messages": source.messages} if source.messages else {"prompt": source.prompt}
    wanted |= {f"columns.{name}" if name in source.columns else f"columns.{name} (default)": column
               for name, column in field_columns(source, required).items()}
    wanted |= {f"filter.{column}": column for column in source.filter}
    return wanted


def chat_turns(messages) -> tuple[list[dict], str]:
    """``(turns before the last user turn, that user turn's text)`` of a prompt given as chat turns."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise DatasetError(f"a messages cell must be a list of {{role, content}} turns, got {str(messages)[:80]!r}")
    if not messages or messages[-1]["role"] != "user":
        raise DatasetError("a prompt's messages must end with a user turn (an assistant reply is a completion, not a prompt)")
    unknown = sorted({m["role"] for m in messages} - {"system", "user", "assistant"})
    if unknown:
        raise DatasetError(f"messages hold roles {unknown}; a prompt has system, user and assistant turns")
    return [{"role": m["role"], "content": str(m["content"])} for m in messages[:-1]], str(messages[-1]["content"])


def row_problem(row: dict, source: DatasetSource, fields: tuple[str, ...], name: str):
    """``(question, context turns, fields)`` of one row: domain fields by mapping, every other column by name."""
    if source.messages:
        context, question = chat_turns(row[source.messages])
    else:
        question, context = row[source.prompt], []
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"prompt column {source.prompt!r} holds {str(question)[:60]!r}, not text")
    if source.system is not None:
        context = [{"role": "system", "content": source.system}] + [t for t in context if t["role"] != "system"]
    mapped = field_columns(source, fields)
    consumed = {source.messages or source.prompt, *mapped.values()}
    values = {column: value for column, value in row.items() if column not in consumed and column not in RESERVED}
    values |= {name: row[column] for name, column in mapped.items() if column in row}
    values["source"] = name
    return question, context, values


def first_rows(source: DatasetSource, count: int) -> list[dict]:
    """The first ``count`` rows of ``split`` that pass the filter (what a check reads; never the whole set)."""
    rows = _filtered(open_split(source.path, source.split, source.subset, source.format), source)
    return list(rows.select(range(min(count, len(rows)))))


def dataset_rows(source: DatasetSource, heldout: bool) -> list[dict]:
    """The training rows (``heldout=False``) or the held-out rows of ``source``, filtered."""
    if source.heldout_split:
        split = source.heldout_split if heldout else source.split
        return list(_filtered(open_split(source.path, split, source.subset, source.format), source))
    rows = list(_filtered(open_split(source.path, source.split, source.subset, source.format), source))
    if source.heldout == "all":
        return rows if heldout else []
    if source.heldout == "none":
        return [] if heldout else rows
    return [row for row in rows if is_heldout(_identity(row, source)) == heldout]


def _identity(row: dict, source: DatasetSource) -> str:
    if source.messages:
        return json.dumps(row[source.messages], sort_keys=True)
    return str(row[source.prompt])
