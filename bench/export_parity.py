"""An exported run against the run's own after-eval: the same greedy completions on held-out prompts?

1. ``posttrain export RUN`` (merged, in the run's ``model.engine_dtype``) into a scratch directory;
2. a vLLM engine started on the export (a plain model directory, as any user would load it);
3. ``N`` held-out problems of the run's task, in its eval modes, through the one eval path
   (``posttrain/core/evaluation.py``: the run's recipe, its prompts, greedy decoding, and its
   pass@k samples in the same batch unless ``--pass-k 1``);
4. each output compared with ``RUN/eval/after_outputs.jsonl`` for the same suite, mode and question.

A greedy token can flip where two logits tie within bf16 rounding and the batch differs (CPU
kernels reduce in batch-dependent order): ``--problems`` equal to the run's ``eval.num_problems``
rebuilds the run's own eval batch.

Run: ``PYTHONPATH=. python bench/export_parity.py runs/quickstart --problems 10`` (~3 min on 2 loaded cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder heads sys.path: keep it from shadowing packages.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import ray  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from posttrain.core.driver import start_engine  # noqa: E402
from posttrain.core.evaluation import evaluate_suites  # noqa: E402
from posttrain.core.modes import eval_mode_names  # noqa: E402
from posttrain.core.rundir import read_jsonl  # noqa: E402
from posttrain.core.tasks import make_task  # noqa: E402
from posttrain.evaluate import find_checkpoint  # noqa: E402
from posttrain.core.checkpoints import saved_checkpoint  # noqa: E402
from posttrain.export import default_dtype, export_checkpoint  # noqa: E402
from posttrain.raycluster import init_ray  # noqa: E402
from posttrain.recipe import load_recipe  # noqa: E402
from specialists.loop import eval_mode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--problems", type=int, default=10)
    parser.add_argument("--pass-k", type=int, default=None, help="default: the run's eval.pass_k (its eval batched these samples too)")
    args = parser.parse_args()
    reference = {(r["suite"], r["mode"], r["question"]): r for r in read_jsonl(args.run / "eval" / "after_outputs.jsonl")}
    scratch = Path(tempfile.mkdtemp(prefix="export-parity-"))
    try:
        compare(args, reference, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compare(args, reference: dict, scratch: Path) -> None:
    started = time.perf_counter()
    dtype = default_dtype(str(args.run))
    out = export_checkpoint(saved_checkpoint(find_checkpoint(str(args.run))), scratch / "model", dtype=dtype)
    export_s = time.perf_counter() - started
    recipe = load_recipe(args.run / "recipe.yaml", [f"model.path={out}"])
    task = make_task(recipe.task, seed=recipe.run.seed)
    suites = task.heldout_suites(recipe.eval.suites, args.problems)
    modes = {name: eval_mode(recipe, name) for name in eval_mode_names(recipe)}
    init_ray()
    engine = start_engine(recipe, str(out))
    outputs: list[dict] = []
    try:
        evaluate_suites(engine, AutoTokenizer.from_pretrained(out), task, suites, modes, recipe.thinking_tags,
                        pass_k=args.pass_k or recipe.eval.pass_k, temperature=recipe.eval.temperature, outputs=outputs)
    finally:
        ray.kill(engine)
    same = compared = 0
    for row in outputs:
        ref = reference.get((row["suite"], row["mode"], row["question"]))
        if ref is None:
            continue
        compared += 1
        same += ref["output"] == row["output"]
        mark = "same" if ref["output"] == row["output"] else f"DIFFERS (run: {ref['output']!r})"
        print(f"  {row['question'][:50]!r:54s} -> {row['output'][:40]!r:44s} {mark}")
    print(f"export ({dtype}) of {args.run}: {export_s:.1f} s; greedy outputs equal to the run's after-eval: "
          f"{same}/{compared} prompts ({len(outputs) - compared} without a reference row); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
