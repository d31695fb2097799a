"""The run directory: resolved recipe, metrics (TensorBoard + JSONL), samples, checkpoints.

Layout::

    runs/<name>/
      recipe.yaml          the resolved recipe (after overrides), as run
      metrics.jsonl        one JSON object per logged step
      tb/                  TensorBoard event files (W&B / MLflow too when ``run.trackers`` names them):
                           step metrics, eval scalars at their step, sample and eval outputs as tables
      trackers.json        the W&B / MLflow run ids, so a resumed run continues the same tracker run
      samples.jsonl        sampled completions with their rewards
      eval/<tag>.json      held-out eval results
      checkpoints/step_N/  safetensors (or the peft adapter) + trainer state

The JSONL logs are appended one line per row, so a driver killed mid-write leaves
a torn last line: reading drops it with one warning. A bad line anywhere else was
not written by us that way, and is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import yaml

from .trackers import make_sinks

log = logging.getLogger("posttrain")
LOGS = ("metrics.jsonl", "samples.jsonl")  # appended per step; a resume rewinds both
EVAL_TABLE_ROWS = 8  # eval outputs sent to the trackers per eval


class DamagedLog(ValueError):
    """A JSONL log with a bad line before its last: not what a kill leaves, so not guessed around."""


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL log; a torn last line (a kill mid-write) is dropped with a warning."""
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # harmless, and not what a kill leaves
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number == len(lines):
            log.warning("%s: dropped a torn last line (line %d, %d characters), left by a run killed while "
                        "writing it", path, number, len(line))
        else:
            raise DamagedLog(f"{path}: line {number} of {len(lines)} is not a JSON object ({line[:80]!r}); "
                             "only a last line can be torn by a kill: repair or delete that line")
    return rows


class RunDir:
    def __init__(self, root: str | Path, name: str):
        self.path = Path(root) / name
        self.path.mkdir(parents=True, exist_ok=True)
        self._sinks: list | None = None
        self._purge_step: int | None = None
        self._run_cfg = None  # the recipe's ``run`` section (trackers); None: TensorBoard only
        self._recipe_dump: dict | None = None

    def save_recipe(self, recipe) -> Path:
        """Snapshot the recipe; its ``run.trackers`` decide where ``log_metrics`` writes."""
        self._recipe_dump = recipe.model_dump(mode="json")
        self._run_cfg = recipe.run
        target = self.path / "recipe.yaml"
        target.write_text(yaml.safe_dump(self._recipe_dump, sort_keys=False))
        return target

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **clean}) + "\n")
        for sink in self._metric_sinks():
            sink.log(step, clean)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        with open(self.path / "samples.jsonl", "a") as handle:
            for row in rows:
                handle.write(json.dumps({"step": step, **row}) + "\n")
        self._log_table(step, "samples", ("mode", "reward", "prompt", "completion"), rows)

    def log_eval(self, step: int, tag: str, report: dict[str, dict], outputs: list[dict] = ()) -> None:
        """An eval's scalars (``eval/<suite>/<mode>/<metric>``) and its first outputs to the trackers at
        ``step``; not to ``metrics.jsonl`` (``eval/<tag>.json`` is the record)."""
        scalars = {f"eval/{key}/{name}": float(value) for key, entry in report.items() for name, value in entry.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        for sink in self._metric_sinks():
            sink.log(step, scalars)
        self._log_table(step, f"eval/{tag}", ("suite", "mode", "score", "question", "output"), list(outputs)[:EVAL_TABLE_ROWS])

    def _log_table(self, step: int, tag: str, columns: tuple[str, ...], rows: list[dict]) -> None:
        for sink in self._metric_sinks():
            if rows and hasattr(sink, "log_table"):  # optional for a sink; the built-in ones have it
                sink.log_table(step, tag, columns, rows)

    def save_eval(self, tag: str, result: dict) -> Path:
        target = self.path / "eval" / f"{tag}.json"
        target.parent.mkdir(exist_ok=True)
        target.write_text(json.dumps(result, indent=2))
        return target

    def save_eval_outputs(self, tag: str, rows: list[dict]) -> Path:
        """``eval/<tag>_outputs.jsonl``: every greedy eval output, raw."""
        target = self.path / "eval" / f"{tag}_outputs.jsonl"
        target.parent.mkdir(exist_ok=True)
        target.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))
        return target

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step}"

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint (``save`` renames a checkpoint into place when whole)."""
        found = []
        for path in (self.path / "checkpoints").glob("step_*"):
            step = path.name.removeprefix("step_")
            if step.isdigit() and (path / "trainer_state.pt").exists():
                found.append((int(step), path))
        return max(found) if found else None

    def load_eval(self, tag: str) -> dict | None:
        target = self.path / "eval" / f"{tag}.json"
        return json.loads(target.read_text()) if target.exists() else None

    def rewind(self, step: int) -> None:
        """Forget what was logged at ``step`` and after (a resumed run redoes those steps)."""
        for name in LOGS:
            path = self.path / name
            if path.exists():
                # from step 0 nothing is kept, so nothing needs to parse (a fresh start over a damaged log)
                kept = [row for row in read_jsonl(path) if _step_of(row) < step] if step > 0 else []
                path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._purge_step = step

    def has_logs(self) -> bool:
        return any((self.path / name).exists() for name in LOGS)

    def check_logs(self) -> None:
        """``DamagedLog`` unless every log reads (a torn last line does): before a resume starts anything."""
        for name in LOGS:
            if (self.path / name).exists():
                read_jsonl(self.path / name)

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return read_jsonl(path) if path.exists() else []

    def _metric_sinks(self) -> list:
        if self._sinks is None:
            self._sinks = make_sinks(self.path, self._run_cfg, self._recipe_dump, self._purge_step)
        return self._sinks

    def close(self) -> None:
        for sink in self._sinks or []:
            sink.close()
        self._sinks = None


def _step_of(row: dict) -> float:
    step = row.get("step", -1)
    return step if isinstance(step, (int, float)) else -1
