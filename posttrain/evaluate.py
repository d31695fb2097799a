"""``posttrain eval CHECKPOINT --suites humaneval,gsm8k [--modes ...] [--recipe R] [--set key=value ...]``
and ``posttrain eval CHECKPOINT --dataset FILE_OR_ID --domain D [--reward NAME ...] [--column FIELD=COL ...]``.

Evaluates any model on named held-out suites through the Task interface (each
suite scored by its own scorer, through the one eval path ``posttrain/core/evaluation.py``):

- CHECKPOINT: a built-in name (``smollm2-135m-instruct``), a model directory or hub
  id, a checkpoint ``PolicyTrainer.save`` wrote (full weights, or a LoRA adapter:
  merged into its base in a temporary directory, because vLLM loads full models),
  or a run directory (its newest checkpoint).
- a suite's domain is found by name: first the recipe's own task(s), then every
  registered task's ``suite_config``, then each domain's source kinds with their
  defaults (``suite_task_configs``).
- ``--dataset``: every row of your own file (or hub split) is one suite (an eval-only ``dataset`` source of
  domain ``--domain``, ``docs/data.md``), scored by the domain's scorer or, with ``--reward``, by the named
  rewards (``score`` = their weighted sum, each one's value beside it); checked like a recipe before Ray starts.
- modes, thinking tags, eval settings (pass@k, budget sweep) and the engine come
  from ``--recipe`` (with overrides), else the run's own ``recipe.yaml`` (a run directory
  or one of its checkpoints), else the defaults: one non-thinking ``default`` mode.

Writes ``OUTPUT/eval/<tag>.json`` (and ``<tag>_budget_sweep.json``) in the run
directory layout, so ``posttrain report OUTPUT`` reads it, plus ``OUTPUT/eval_info.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import yaml

from .core.checkpoints import engine_model_dir
from .core.driver import start_engine, stop_engines
from .core.evaluation import budget_sweep, cells_for, evaluate_cells
from .core.models import load_tokenizer
from .core.modes import sweep_mode_name
from .core.rundir import RunDir
from .core.schema import TaskConfig
from .core.tasks import make_task, task_class, task_domains
from .raycluster import init_ray
from .recipe import RecipeError, apply_overrides, validate_recipe

log = logging.getLogger("posttrain.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="built-in model name, model or checkpoint directory, run directory, or hub id")
    parser.add_argument("--suites", default=None, help="comma-separated held-out suites; default: the recipe's eval.suites or its task's own")
    parser.add_argument("--modes", default=None, help="comma-separated recipe modes; default: the recipe's eval modes")
    parser.add_argument("--recipe", default=None, help="recipe YAML for modes, thinking tags, eval and engine settings")
    parser.add_argument("--num-problems", type=int, default=None, help="problems per suite (default: eval.num_problems)")
    parser.add_argument("--base", default=None, help="base model of a LoRA checkpoint (default: the adapter's record)")
    parser.add_argument("--output", type=Path, default=None, help="default: runs/eval-<checkpoint name>")
    parser.add_argument("--tag", default="eval", help="results go to OUTPUT/eval/<tag>.json")
    parser.add_argument("--dataset", default=None, help="your own held-out rows: a json/jsonl/parquet/csv file or directory, or a hub id")
    parser.add_argument("--domain", default=None, help="--dataset: the domain whose prompts and scorer it uses (math, code, instruct, agent, ...)")
    parser.add_argument("--split", default="train", help="--dataset: the split to evaluate (a local file is its one split)")
    parser.add_argument("--prompt-column", default="prompt", help="--dataset: the column of the user message")
    parser.add_argument("--messages-column", default=None, help="--dataset: a chat column [{role, content}] holding the prompt instead")
    parser.add_argument("--column", dest="columns", action="append", default=[], metavar="FIELD=COLUMN",
                        help="--dataset: read the domain's FIELD from COLUMN (e.g. --column answer=final_answer)")
    parser.add_argument("--reward", dest="rewards", action="append", default=[], metavar="NAME[=WEIGHT]",
                        help="--dataset: score by these rewards (registered name or module:function) instead of the domain's scorer")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted recipe overrides, e.g. --set eval.pass_k=1 model.max_model_len=2048")


def run_eval_command(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        checkpoint = find_checkpoint(args.checkpoint)
        recipe, groups = plan(args, checkpoint)
    except (RecipeError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report, sweeps = evaluate_checkpoint(recipe, checkpoint, groups, args.base, bool(getattr(args, "rewards", None)))
    out = args.output or Path("runs") / f"eval-{_checkpoint_name(checkpoint)}"
    (out / "eval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / f"{args.tag}.json").write_text(json.dumps(report, indent=2))
    for name, sweep in sweeps.items():
        (out / "eval" / f"{args.tag}{name}_budget_sweep.json").write_text(json.dumps(sweep, indent=2))
    info = {"checkpoint": checkpoint, "suites": {s: cfg["domain"] for cfg, names in groups for s in names},
            "modes": list(_modes(recipe, args.modes)), "seconds": time.perf_counter() - started}
    (out / "eval_info.json").write_text(json.dumps(info, indent=2))
    print(f"\n{checkpoint} -> {out / 'eval' / (args.tag + '.json')}   wall time: {info['seconds'] / 60:.1f} min")
    print("\n".join(result_table(report)))
    return 0


def find_checkpoint(spec: str) -> str:
    """A run directory -> its newest complete checkpoint; anything else as given."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        latest = RunDir(path.parent, path.name).latest_checkpoint()
        if latest is None:
            raise FileNotFoundError(f"{spec!r} is neither a model, an adapter checkpoint, nor a run directory with a checkpoint")
        return str(latest[1])
    return spec


def own_recipe(spec: str) -> Path | None:
    """The ``recipe.yaml`` a run wrote, for a run directory or one of its ``checkpoints/step_N``."""
    path = Path(spec).expanduser()
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path
    found = run_dir / "recipe.yaml"
    return found if path.is_dir() and found.is_file() else None


def plan(args, checkpoint: str):
    """The recipe (``--recipe`` + overrides, or defaults) and the suites grouped by task config."""
    if args.recipe and not Path(args.recipe).is_file():
        raise RecipeError(f"recipe file {args.recipe!r} does not exist")
    recipe_file = args.recipe or own_recipe(args.checkpoint)
    if recipe_file and not args.recipe:
        log.info("evaluating with the run's own recipe %s (--recipe overrides it)", recipe_file)
    data = yaml.safe_load(Path(recipe_file).read_text()) if recipe_file else {}
    data = apply_overrides(data or {}, list(args.overrides))
    if args.num_problems is not None:
        data.setdefault("eval", {})["num_problems"] = args.num_problems
    if getattr(args, "dataset", None):
        return _dataset_plan(args, checkpoint, data)
    own = _recipe_tasks(data)
    names = split_names(args.suites) if args.suites else (data.get("eval") or {}).get("suites")
    if not names and not own:
        raise ValueError("name the suites (--suites gsm8k,humaneval,...) or give a --recipe whose task has suites")
    groups = suite_task_configs(names or None, own)
    if not own:
        data["task"] = groups[0][0]
    data.setdefault("model", {})["path"] = _validation_model(checkpoint, args.base)
    recipe = validate_recipe(data, origin=str(recipe_file or "eval defaults"))
    _modes(recipe, args.modes)  # unknown modes fail here, before the engine starts
    return recipe, groups


def _dataset_plan(args, checkpoint: str, data: dict):
    """``--dataset``: the recipe with one eval-only dataset source as its task, validated (files, columns,
    rewards, model) like any recipe; its one suite is every row."""
    if not args.domain:
        raise ValueError(f"--dataset needs --domain (one of {', '.join(task_domains())})")
    if args.suites:
        raise ValueError("give --suites or --dataset, not both")
    source = {"kind": "dataset", "path": args.dataset, "split": args.split, "heldout": "all",
              "prompt": args.prompt_column, "messages": args.messages_column, "columns": _pairs(args.columns, "--column")}
    task = {"domain": args.domain, "sources": [source]}
    if args.rewards:
        task["rewards"] = [{"name": name, "weight": float(weight or 1)} for name, weight in
                           (spec.partition("=")[::2] for spec in args.rewards)]
    data["task"] = task
    data.pop("distill", None), data.pop("pipeline", None)
    data.setdefault("grpo", {})["steps"] = 0  # an eval-only source trains nothing
    data.setdefault("model", {})["path"] = _validation_model(checkpoint, args.base)
    recipe = validate_recipe(data, origin=f"--dataset {args.dataset}")
    _modes(recipe, args.modes)
    cfg = recipe.task.model_dump(mode="json")
    return recipe, [(cfg, _suite_names(cfg))]


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} {item!r}: expected FIELD=COLUMN")
        pairs[key] = value
    return pairs


def split_names(text: str) -> list[str]:
    """Comma-separated names; commas inside parentheses belong to a name (``arithmetic(max=15,ops=+-,terms=2)``)."""
    return [name.strip() for name in re.split(r",(?![^()]*\))", text) if name.strip()]


def _recipe_tasks(data: dict) -> list[dict]:
    tasks = [data["task"]] if isinstance(data.get("task"), dict) else []
    distill = data.get("distill") if isinstance(data.get("distill"), dict) else {}
    return tasks + [cfg for cfg in (distill.get("domains") or {}).values() if isinstance(cfg, dict)]


def suite_task_configs(names: list[str] | None, own: list[dict]) -> list[tuple[dict, list[str]]]:
    """``[(task config dict, [suite, ...])]`` covering ``names`` (None: every suite of the recipe's tasks)."""
    held = [(cfg, _suite_names(cfg)) for cfg in own]
    if names is None:
        return held
    groups: dict[str, tuple[dict, list[str]]] = {}
    by_domain: dict[str, dict] = {}  # suites found by name: one task per domain, its sources merged
    missing = []
    for name in names:
        cfg = next((cfg for cfg, suites in held if name in suites), None)
        if cfg is not None:
            group = groups.setdefault(json.dumps(cfg, sort_keys=True), (cfg, []))
            group[1].extend([name] if name not in group[1] else [])
        elif (found := _registered_config(name)) is not None:
            merged = by_domain.setdefault(found["domain"], {**found, "sources": []})
            merged["sources"] += [s for s in found["sources"] if s not in merged["sources"]]
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"unknown held-out suite(s) {missing}: no registered task ({', '.join(task_domains())}) has them")
    # a config built from suite names holds exactly those suites (an alias such as `arithmetic` included)
    return list(groups.values()) + [(cfg, _suite_names(cfg)) for cfg in by_domain.values()]


def _suite_names(cfg: dict) -> list[str]:
    return list(make_task(TaskConfig.model_validate(cfg)).heldout_suites(None, 1))


def _registered_config(suite: str) -> dict | None:
    for domain in task_domains():
        cls = task_class(domain)
        if cfg := cls.suite_config(suite) or _default_source_config(cls, suite):
            return cfg
    return None


def _default_source_config(cls, suite: str) -> dict | None:
    """A domain with no ``suite_config``: try each of its source kinds with defaults, keep one naming ``suite``."""
    for kind in cls.source_kinds():
        cfg = {"domain": cls.domain, "sources": [{"kind": kind}]}
        try:
            if suite in make_task(TaskConfig.model_validate(cfg)).heldout_suites(None, 1):
                return cfg
        except Exception as error:  # noqa: BLE001 - a source that cannot load with defaults names no suite
            log.debug("%s source %r with defaults: %s", cls.domain, kind, error)
    return None


def _validation_model(checkpoint: str, base: str | None) -> str:
    """What ``model.path`` validates against: the adapter's base for a LoRA checkpoint."""
    adapter = Path(checkpoint).expanduser() / "adapter_config.json"
    if adapter.exists():
        return base or json.loads(adapter.read_text()).get("base_model_name_or_path") or checkpoint
    return checkpoint


def _modes(recipe, names: str | None) -> dict:
    chosen = split_names(names) if names else (recipe.eval.modes or list(recipe.task.modes if recipe.task else recipe.modes))
    unknown = [name for name in chosen if name not in recipe.modes]
    if unknown:
        raise ValueError(f"--modes: {unknown} are not modes of the recipe ({sorted(recipe.modes)})")
    modes = {}
    for name in chosen:  # eval.max_tokens sets the allowance of non-thinking modes, as in the GRPO eval
        mode = recipe.modes[name]
        if recipe.eval.max_tokens and not mode.thinking:
            mode = mode.model_copy(update={"max_tokens": recipe.eval.max_tokens})
        modes[name] = mode
    return modes


def evaluate_checkpoint(recipe, checkpoint: str, groups, base: str | None = None,
                        score_by_rewards: bool = False) -> tuple[dict, dict]:
    """Start one engine on the checkpoint; every suite of every group in one batched eval; ``(report, sweeps)``."""
    init_ray()  # RAY_ADDRESS / `ray job submit`, a `ray start` cluster here, else a local one
    modes, sweeps = _modes(recipe, None), {}
    tasks = [(make_task(TaskConfig.model_validate(cfg), seed=recipe.run.seed), names) for cfg, names in groups]
    for task, _ in tasks:
        task.score_by_rewards = score_by_rewards
    task_suites = [(task, task.heldout_suites(names, recipe.eval.num_problems)) for task, names in tasks]
    with engine_model_dir(checkpoint, base, recipe.model.trust_remote_code) as model_dir:
        engine = start_engine(recipe, model_dir)
        tokenizer = load_tokenizer(model_dir, recipe.model)
        try:
            cells = [cell for task, suites in task_suites for cell in cells_for(task, suites, modes)]
            report = evaluate_cells(engine, tokenizer, cells, recipe.thinking_tags,
                                    pass_k=recipe.eval.pass_k, temperature=recipe.eval.temperature)
            if recipe.eval.budget_sweep and (name := sweep_mode_name(recipe)):
                sweep = budget_sweep(engine, tokenizer, task_suites, recipe.modes[name], recipe.eval.budget_sweep,
                                     recipe.thinking_tags)
                sweeps[""] = {"mode": name, **sweep}
        finally:
            stop_engines(engine)
    return report, sweeps


def result_table(report: dict) -> list[str]:
    lines = [f"  {'suite/mode':44s} {'problems':>8s} {'score':>7s} {'pass@k':>7s} {'think tok':>9s} {'answer tok':>10s}"]
    for key, entry in report.items():
        passk = next((f"{v:.3f}" for k, v in entry.items() if k.startswith("pass@")), "-")
        lines.append(f"  {key:44s} {entry['problems']:8d} {entry['accuracy']:7.3f} {passk:>7s} "
                     f"{entry['mean_thinking_tokens']:9.1f} {entry['mean_answer_tokens']:10.1f}")
    return lines


def _checkpoint_name(checkpoint: str) -> str:
    path = Path(checkpoint)
    if path.parent.name == "checkpoints":  # runs/<name>/checkpoints/step_N -> <name>-step_N
        return f"{path.parent.parent.name}-{path.name}"
    return path.name or checkpoint.replace("/", "_")
