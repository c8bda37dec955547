"""Weights & Biases glue: one W&B run per Hydra job, one group per multirun, config once, final tables.

``logger=wandb`` builds :class:`HydraWandbLogger` (a ``WandbLogger`` whose ``group``/``name`` default to the
multirun's name — its sweep dir relative to where it was launched — and ``<job num>_<overrides>``). The module's
hyperparameters (``{"cfg": cfg}``) are logged as the resolved config itself, once (no ``cfg`` copy); metrics
logged through Lightning as float32 keep their shortest decimal form (λ = 1e-5, not 9.99999974e-06).
``train`` calls :func:`log_run_config` after building the trainer (config + ``define_metric``: the summary of
every ``val/<task>/<metric>`` is its best value, max or min by the metric's direction),
:func:`log_final_tables` once ``results`` are known (tables, and with ``log_model`` the compact model as an
artifact; Lightning's WandbLogger uploads the checkpoints) and :func:`finish_loggers` at the very end (also on
failure), so each job of a multirun closes its own run. Every function is a no-op without a W&B logger.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_sparse_mtl.core.configs import plain_config
from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.mtl.tasks import build_task

MAX_NAME_LEN = 128  # W&B limit for group / run names
NAME_EXCLUDE = ("logger", "callbacks", "trainer.enable_progress_bar", "hydra.")  # not part of a run's name
# results.json scalar prefixes shown in the final "results" table
RESULT_PREFIXES = ("test/", "sparsity/", "pruned/", "dense/")
RESULT_KEYS = ("params", "wall_time_s", "lambda", "seed")
PRUNING_ROWS = (  # (row label, dense key, pruned key); a dense "params" falls back to results["params"]
    ("params", "dense/params", "pruned/params"),
    ("MACs", "dense/macs", "pruned/macs"),
    ("latency b1 (ms)", "dense/latency_b1_ms", "pruned/latency_b1_ms"),
    ("latency b8 (ms)", "dense/latency_b8_ms", "pruned/latency_b8_ms"),
)


def _short(text: str | Path) -> str:
    """``text`` cut to what W&B accepts for a group or a name (the end is kept: it is the distinctive part)."""
    text = str(text)
    return text if len(text) <= MAX_NAME_LEN else text[-MAX_NAME_LEN:]


def readable_dir(path: str | Path, launch_dir: str | Path | None) -> str:
    """``path`` relative to the launch dir when inside it (``multirun/2026-12-01/21-00-00``), else its last two
    components; never an absolute path."""
    path = Path(path)
    if launch_dir is not None:
        full = path if path.is_absolute() else Path(launch_dir) / path
        try:
            return full.resolve().relative_to(Path(launch_dir).resolve()).as_posix()
        except ValueError:
            pass
    return "/".join(path.parts[-2:]) if not path.is_absolute() or len(path.parts) > 2 else path.name


def run_name_overrides(overrides: list[str]) -> str:
    """The job's overrides that say what it is: logger/callback plumbing (:data:`NAME_EXCLUDE`) is left out."""
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(NAME_EXCLUDE)]
    return ",".join(kept)


def hydra_group_and_name() -> tuple[str | None, str | None]:
    """(group, name) for the current Hydra job. group: the multirun's name, its sweep dir relative to the launch
    dir (shared by its jobs), or for a single run its own run dir, likewise. name: ``<job num>_<overrides>`` in a
    multirun (overrides in command-line order, without logger/callback plumbing), else the overrides (or the run
    dir name when there are none)."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    overrides = run_name_overrides(list(hc.overrides.get("task") or []))
    cwd = hc.runtime.get("cwd")
    if hc.mode == RunMode.MULTIRUN:
        num = hc.job.get("num")
        name = f"{num}_{overrides}" if overrides else str(num)
        return _short(readable_dir(hc.sweep.dir, cwd)), name[:MAX_NAME_LEN]
    name = overrides[:MAX_NAME_LEN] or _short(Path(hc.runtime.output_dir).name)
    return _short(readable_dir(hc.run.dir, cwd)), name


def shortest_float(value: float) -> float:
    """A float32 value (what Lightning logs) as its shortest decimal: 9.99999974737875e-06 -> 1e-05. Other
    values are returned unchanged."""
    if isinstance(value, float) and math.isfinite(value) and float(np.float32(value)) == value:
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return value


def _close_stale_run() -> None:
    """Finish a W&B run left open by an earlier job of this process (e.g. one that crashed)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


class HydraWandbLogger(WandbLogger):
    """``WandbLogger`` for Hydra jobs: ``group``/``name`` default to :func:`hydra_group_and_name`, and a run left
    open by a previous job in the same process is closed first (so a new job never reuses it)."""

    def __init__(self, group: str | None = None, name: str | None = None, **kwargs: Any) -> None:
        auto_group, auto_name = hydra_group_and_name()
        if rank_zero_only.rank == 0:
            _close_stale_run()
        super().__init__(name=name or auto_name, group=group or auto_group, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """The module's ``{"cfg": cfg}`` is logged as the resolved config itself (its keys at the top level)."""
        params = dict(params) if isinstance(params, Mapping) else dict(vars(params))
        if set(params) == {"cfg"}:
            params = plain_config(params["cfg"])
        super().log_hyperparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics({k: shortest_float(v) for k, v in metrics.items()}, step)


def wandb_loggers(trainer: L.Trainer | None) -> list[WandbLogger]:
    return [lg for lg in (trainer.loggers if trainer is not None else []) if isinstance(lg, WandbLogger)]


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def val_metric_summaries(config: Mapping[str, Any]) -> dict[str, str]:
    """``{"val/<task>/<metric>": "max" | "min"}`` (best value by the metric's direction) plus ``val/loss``."""
    data = config.get("data") or {}
    out = {"val/loss": "min"}
    for task in config.get("tasks") or []:
        try:
            spec = build_task(task, max(2, int(data.get("num_classes") or 2)), data.get("attributes") or [])
        except UserError:
            continue
        out.update({f"val/{task}/{m}": "max" if hib else "min" for m, hib in spec.higher_is_better.items()})
    return out


@rank_zero_only
def log_run_config(trainer: L.Trainer, config: Mapping[str, Any]) -> None:
    """Put the full resolved train config (``plain_config(cfg)``) into ``wandb.config`` (its top-level keys,
    ``lambda`` among them, become W&B config columns) and define the validation metrics so the run summary holds
    their best value (``summary["val/seg/miou"]["max"]``), stepped by ``trainer/global_step``."""
    for logger in wandb_loggers(trainer):
        run = logger.experiment
        run.config.update(dict(config), allow_val_change=True)
        run.define_metric("trainer/global_step")
        for key, summary in val_metric_summaries(config).items():
            # a "." in define_metric names means nesting ("within_11.25"): escaped
            run.define_metric(key.replace(".", "\\."), step_metric="trainer/global_step", summary=summary)


def results_rows(results: Mapping[str, Any]) -> list[list[Any]]:
    """``[[key, value]]`` for every finite scalar result (``test/``, ``sparsity/``, ``pruned/``, ``dense/``,
    params, wall time, lambda, seed)."""
    return [[k, v] for k, v in results.items() if _scalar(v) and (k.startswith(RESULT_PREFIXES) or k in RESULT_KEYS)]


def layer_rows(results: Mapping[str, Any]) -> list[list[Any]]:
    """``[[layer, groups, zero_groups, group_sparsity, weight_sparsity]]`` from ``results["sparsity"]["layers"]``."""
    layers = (results.get("sparsity") or {}).get("layers") or {}
    return [
        [name, s.get("groups"), s.get("zero_groups"), s.get("group_sparsity"), s.get("weight_sparsity")]
        for name, s in layers.items()
    ]


def pruning_rows(results: Mapping[str, Any]) -> list[list[Any]]:
    """``[[quantity, dense, pruned, pruned/dense]]`` for params, MACs and latencies present in ``results``;
    empty when the run was not pruned. A missing value is None."""
    if not any(_scalar(results.get(p)) for _, _, p in PRUNING_ROWS):
        return []
    rows = []
    for label, dense_key, pruned_key in PRUNING_ROWS:
        dense = results.get(dense_key, results.get("params") if label == "params" else None)
        dense = dense if _scalar(dense) else None
        pruned = results[pruned_key] if _scalar(results.get(pruned_key)) else None
        if dense is None and pruned is None:
            continue
        ratio = pruned / dense if dense and pruned is not None else None
        rows.append([label, dense, pruned, ratio])
    return rows


def log_compact_model(logger: WandbLogger, results: Mapping[str, Any]) -> Any:
    """With ``log_model`` on: the compact (pruned) model file as a ``model`` artifact, its size figures as
    metadata; returns the artifact (None when there is nothing to log)."""
    path = results.get("pruned/path")
    if not getattr(logger, "_log_model", False) or not path or not Path(path).is_file():
        return None
    import wandb

    run = logger.experiment
    meta = {k: v for k, v in results.items() if k.startswith(("pruned/", "dense/")) and _scalar(v)}
    artifact = wandb.Artifact(f"compact-{run.id}", type="model", metadata=meta)
    artifact.add_file(str(path), name=Path(path).name)
    run.log_artifact(artifact, aliases=["latest", "compact"])
    return artifact


@rank_zero_only
def log_final_tables(trainer: L.Trainer, results: Mapping[str, Any]) -> list:
    """Log the final results as W&B tables (``final/results``, ``final/layer_sparsity`` with a bar chart,
    ``final/pruning``), copy the scalar results into the run summary and, with ``log_model``, log the compact
    model as an artifact. Returns the artifacts logged. No-op without a WandbLogger."""
    loggers = wandb_loggers(trainer)
    if not loggers:
        return []
    import wandb

    scalars = results_rows(results)
    layers = layer_rows(results)
    pruning = pruning_rows(results)
    artifacts = []
    for logger in loggers:
        run = logger.experiment
        run.summary.update(dict(scalars))
        payload: dict[str, Any] = {"final/results": wandb.Table(columns=["key", "value"], data=scalars)}
        if layers:
            cols = ["layer", "groups", "zero_groups", "group_sparsity", "weight_sparsity"]
            table = wandb.Table(columns=cols, data=layers)
            payload["final/layer_sparsity"] = table
            payload["final/layer_sparsity_chart"] = wandb.plot.bar(
                table, "layer", "group_sparsity", title="group sparsity per layer (%)"
            )
        if pruning:
            payload["final/pruning"] = wandb.Table(columns=["quantity", "dense", "pruned", "ratio"], data=pruning)
        run.log({**payload, "trainer/global_step": trainer.global_step})
        artifacts.append(log_compact_model(logger, results))
    return [a for a in artifacts if a is not None]


def finish_loggers(trainer: L.Trainer | None, failed: bool = False) -> None:
    """Close the W&B run of each WandbLogger of ``trainer`` (one run per Hydra job); no-op for other loggers and
    for loggers whose run was never started. ``failed`` marks the run as crashed (exit code 1)."""
    for logger in wandb_loggers(trainer):
        run = getattr(logger, "_experiment", None)
        if run is not None and hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)
