"""A resume is checked before anything is written: its checkpoint is data, it was trained with the same method and
model config as this run asks for, and it has training left to do (a finished run resumes only to train longer)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.safe_load import read_torch_file
from lightning_sparse_mtl.core.validate import get, normalize_tasks

# What a resume must not change (the trainer, the data loader, the scheduler's length may change).
RESUME_KEYS = ("lambda", "tasks", "task_weights", "model", "sparsity", "weighting", "optimizer")
_FREE = {"model.weights"}  # the checkpoint holds the weights: where they first came from does not matter


def first_difference(then: Any, now: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first dotted key where two plain configs differ, with both values (None when equal)."""
    if where in _FREE:
        return None
    if isinstance(then, Mapping) and isinstance(now, Mapping):
        for key in sorted(set(then) | set(now), key=str):
            diff = first_difference(then.get(key), now.get(key), f"{where}.{key}")
            if diff:
                return diff
        return None
    if isinstance(then, list | tuple) and isinstance(now, list | tuple) and len(then) == len(now):
        for i, (a, b) in enumerate(zip(then, now)):
            diff = first_difference(a, b, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if then == now else (where, then, now)


def epochs_done(ckpt: Mapping) -> int:
    """Epochs whose training part the checkpoint has seen (Lightning saves at the end of the epoch's training)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


def finishes_own_run(ckpt_path: str | os.PathLike, run_dir: str | os.PathLike | None) -> bool:
    """True when ``ckpt_path`` lies in ``<run_dir>/checkpoints/`` and that run has no ``results.json``: a run
    stopped after its last training step (during test, prune or export) is finished by resuming it there."""
    if run_dir is None:
        return False
    run = Path(run_dir).resolve()
    return Path(ckpt_path).resolve().parent == run / "checkpoints" and not (run / "results.json").exists()


def check_resume_config(
    cfg: Any, ckpt_path: str | os.PathLike, trust: bool = False, run_dir: str | os.PathLike | None = None
) -> None:
    """Refuse (one line) a resume whose config differs from the checkpoint's in :data:`RESUME_KEYS`, or that
    would take no step (``trainer.max_epochs`` / ``max_steps`` already reached) — unless it finishes its own
    interrupted run (:func:`finishes_own_run`: no step, then test, prune and ``results.json``)."""
    ckpt = read_torch_file(ckpt_path, trust=trust)
    stored = ckpt.get("hyper_parameters", {}).get("cfg") if isinstance(ckpt, Mapping) else None
    if not isinstance(stored, Mapping) or "state_dict" not in ckpt:
        raise UserError(f"{ckpt_path} is not a lightning-sparse-mtl training checkpoint; resume needs "
                        "<run>/checkpoints/last.ckpt")  # fmt: skip
    for key in RESUME_KEYS:
        now = get(cfg, key)
        then = stored.get(key)
        if key == "tasks":
            now, then = normalize_tasks(now), normalize_tasks(then) if then is not None else then
        diff = first_difference(then, now, key)
        if diff:
            where, was, asked = diff
            kind = "model" if key in ("model", "tasks") else "training"
            raise UserError(f"{ckpt_path} was trained with a different {kind} config ({where}={was!r} there, "
                            f"{asked!r} here); resume with the original run's overrides (its "
                            ".hydra/overrides.yaml; trainer.max_epochs may grow), or start a new run")  # fmt: skip
    if finishes_own_run(ckpt_path, run_dir):
        return
    done, step = epochs_done(ckpt), int(ckpt.get("global_step", 0))
    max_epochs, max_steps = get(cfg, "trainer.max_epochs"), get(cfg, "trainer.max_steps", -1)
    if isinstance(max_steps, int) and max_steps > 0 and step >= max_steps:
        raise UserError(f"{ckpt_path} already took {step} steps (trainer.max_steps={max_steps}): nothing to train; "
                        f"to train longer resume with trainer.max_steps > {step}")  # fmt: skip
    if isinstance(max_epochs, int) and 0 < max_epochs <= done:
        raise UserError(f"{ckpt_path} already trained {done} epochs (trainer.max_epochs={max_epochs}): nothing to "
                        f"train; to train longer resume with trainer.max_epochs > {done}")  # fmt: skip
