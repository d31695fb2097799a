"""Metric sinks: TensorBoard (default), Weights & Biases, MLflow.

``run.trackers`` in the recipe names them; ``RunDir.log_metrics`` writes every
step to ``metrics.jsonl`` (the record the report reads) and to each sink.
W&B and MLflow are optional packages, imported only when a recipe names them;
``missing_tracker_packages`` lets recipe validation fail before any work when
one is not installed.

A resumed run continues the same tracker run: the W&B run id and the MLflow run
id are kept in ``<run dir>/trackers.json``. TensorBoard drops the events from the
resume step on (``purge_step``); W&B and MLflow cannot forget logged points, so
a resumed step is logged again there (the report reads ``metrics.jsonl``, which
is rewound).
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

from posttrain.plugins import NotFound, Registry

# A tracker is a factory ``(path, run_cfg, recipe_dump, purge_step) -> sink`` with ``log(step, metrics)``
# and ``close()``, and optionally ``log_table(step, tag, columns, rows)`` (sample completions, eval outputs);
# ``@tracker("name")`` registers one, ``module:factory`` names one without registering.
TRACKERS: Registry = Registry("tracker", entry_point_group="posttrain.trackers")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny (or mlflow)"}


def tracker(name: str):
    return TRACKERS.decorator(name)


def check_trackers(trackers: list[str]) -> list[str]:
    """One message per named tracker that does not resolve or whose package is not importable
    (built-ins are checked without importing their package)."""
    problems = []
    for index, name in enumerate(trackers):
        try:
            TRACKERS.get(name)
        except NotFound as error:
            problems.append(f"run.trackers.{index}: {error}")
            continue
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            problems.append(f"run.trackers.{index}: {name!r} needs the {package!r} package (pip install {_INSTALL[name]})")
    return problems


class TensorBoardSink:
    def __init__(self, path: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(path / "tb"), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_table(self, step: int, tag: str, columns: tuple[str, ...], rows: list[dict]) -> None:
        """Sample completions, eval outputs: a Markdown table in TensorBoard's Text tab."""
        self.writer.add_text(tag, markdown_rows(rows, columns), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run per run directory; offline runs (``WANDB_MODE=offline`` or ``run.wandb.mode``) sync later."""

    def __init__(self, path: Path, run_name: str, settings, config: dict | None):
        import wandb

        ids = _read_ids(path)
        ids.setdefault("wandb", uuid.uuid4().hex[:12])  # W&B run ids: short, url-safe
        _write_ids(path, ids)
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            name=run_name,
            id=ids["wandb"],
            resume="allow",
            dir=str(path),
            config=config,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, step: int, tag: str, columns: tuple[str, ...], rows: list[dict]) -> None:
        import wandb

        data = [[_cell(row.get(column, "")) for column in columns] for row in rows]
        self.run.log({tag: wandb.Table(columns=list(columns), data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    """An MLflow run per run directory.

    Tracking URI: ``run.mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a local file
    store ``mlruns/`` beside the run directories (MLflow 3 keeps the file store behind
    ``MLFLOW_ALLOW_FILE_STORE``; choosing it here needs no server or database package).
    """

    def __init__(self, path: Path, run_name: str, settings, params: dict | None):
        import os

        import mlflow

        uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (path.parent / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        ids = _read_ids(path)
        if "mlflow" not in ids:
            experiment = self.client.get_experiment_by_name(settings.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment)
            ids["mlflow"] = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            _write_ids(path, ids)
            self._log_params(ids["mlflow"], params or {})
        self.run_id = ids["mlflow"]

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(_mlflow_key(key), str(value)[:500]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        # MLflow metric names allow only alphanumerics, _ - . space : and /.
        batch = [Metric(_mlflow_key(key), value, 0, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_table(self, step: int, tag: str, columns: tuple[str, ...], rows: list[dict]) -> None:
        """An artifact ``<tag>/step_<N>.json`` (MLflow's table format, shown in its Evaluation view)."""
        data = {column: [_cell(row.get(column, "")) for row in rows] for column in columns}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{tag}/step_{step}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def markdown_rows(rows: list[dict], columns: tuple[str, ...], width: int = 400) -> str:
    """A Markdown table of ``rows`` (cells cut to ``width`` characters), for a tracker's text panel."""
    if not rows:
        return ""

    def cell(value) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        text = text if len(text) <= width else text[:width] + "..."
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows])


def _cell(value):
    """A table cell for W&B / MLflow: numbers as numbers, everything else as text."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _mlflow_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in key)


@tracker("tensorboard")
def _tensorboard(path: Path, run_cfg, recipe_dump: dict | None, purge_step: int | None):
    return TensorBoardSink(path, purge_step)


@tracker("wandb")
def _wandb(path: Path, run_cfg, recipe_dump: dict | None, purge_step: int | None):
    return WandbSink(path, run_cfg.name, run_cfg.wandb, recipe_dump)


@tracker("mlflow")
def _mlflow(path: Path, run_cfg, recipe_dump: dict | None, purge_step: int | None):
    return MlflowSink(path, run_cfg.name, run_cfg.mlflow, _flat(recipe_dump or {}))


def make_sinks(path: Path, run_cfg, recipe_dump: dict | None = None, purge_step: int | None = None) -> list:
    """The sinks ``run_cfg.trackers`` names (``run_cfg`` None: TensorBoard only)."""
    names = list(run_cfg.trackers) if run_cfg is not None else ["tensorboard"]
    return [TRACKERS.get(name)(path, run_cfg, recipe_dump, purge_step) for name in names]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_ids(path: Path) -> dict:
    target = path / "trackers.json"
    return json.loads(target.read_text()) if target.exists() else {}


def _write_ids(path: Path, ids: dict) -> None:
    (path / "trackers.json").write_text(json.dumps(ids, indent=2))
