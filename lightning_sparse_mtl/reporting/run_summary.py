"""The short summary printed at the end of a run that pruned: what a person reads in ten seconds.

Accuracy per task, zero groups, params and MACs before -> after, the measured speedup per runtime, the files
written and the next commands. Plain text, at most :data:`MAX_LINES` lines, built from the run's ``results.json``
dict alone (no model, no config object), so it can be printed again for any finished run::

    from lightning_sparse_mtl.reporting.run_summary import summary_text
    from lightning_sparse_mtl.core.results import read_results

    print(summary_text(read_results("outputs/<date>/<time>/results.json")))
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_sparse_mtl.reporting.metric_info import higher_is_better

MAX_LINES = 20
MAX_TASK_LINES = 5
MAX_METRICS_PER_TASK = 3
RUNTIME_NAMES = {"eager": "eager PyTorch", "onnxruntime": "ONNX Runtime", "cuda_eager": "CUDA eager",
                 "cuda_compile": "CUDA compile"}  # fmt: skip
FILES = ("results.json", "checkpoints/last.ckpt", "pruned.pt", "pruned.pt2", "pruned.onnx", "dense.onnx")
# the key a sweep over the run's own knob varies, and the values it tries
SWEEPS = {"macs": ("sparsity.target_macs", "0.3,0.4,0.6"), "groups": ("sparsity.target", "0.5,0.7,0.8")}
LAMBDA_SWEEP = ("lambda", "1e-5,2e-5,4e-5")


def _short(n: float) -> str:
    """12057345 -> '12.06M', 93100000 -> '93.1M', 5300 -> '5.3k'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.4g}{suffix}"
    return f"{n:.4g}"


def _path(p: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """A path relative to ``cwd`` when it lies below it (shorter to read and copy), else as given."""
    try:
        rel = os.path.relpath(p, cwd or os.getcwd())
    except ValueError:  # another drive
        return str(p)
    return str(p) if rel.startswith("..") else rel


def _metric(key: str, value: float) -> str:
    name = key.split("/")[-1]
    unit = "°" if key.split("/")[1] == "normal" and name in ("mean", "median") else ""
    hib = higher_is_better(key)
    arrow = "" if hib is None else ("↑" if hib else "↓")
    return f"{name} {value:.4g}{unit}{arrow}"


def accuracy_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per task, its first :data:`MAX_METRICS_PER_TASK` test metrics (``test/<task>/<metric>``)."""
    tasks: dict[str, list[str]] = {}
    for key, value in results.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "test" and isinstance(value, int | float) and not isinstance(value, bool):
            tasks.setdefault(parts[1], []).append(_metric(key, float(value)))
    lines = [f"  {task:<12}{'  '.join(m[:MAX_METRICS_PER_TASK])}" for task, m in tasks.items()]
    if len(lines) > MAX_TASK_LINES:
        lines = [*lines[: MAX_TASK_LINES - 1], f"  ... and {len(lines) - MAX_TASK_LINES + 1} more tasks"]
    if "test/delta_m" in results:
        lines.append(f"  {'Δm':<12}{results['test/delta_m']:+.2f}% vs the baselines")
    return lines


def sparsity_line(results: Mapping[str, Any]) -> str:
    """Zero groups (and the target the controller aimed at, with the final λ)."""
    stats = results.get("sparsity") or {}
    pct = results.get("sparsity/group_sparsity", stats.get("group_sparsity", 0.0))
    counts = f" ({stats['zero_groups']:,} of {stats['total_groups']:,})" if "zero_groups" in stats else ""
    target = results.get("sparsity/target")
    if isinstance(target, Mapping) and "kind" in target:
        aim = (f"target MACs {1 - target['fraction']:.2g} of dense" if target["kind"] == "macs"
               else f"target {target['fraction']:.0%} zero groups")  # fmt: skip
        lam = f"{aim}, final λ {results.get('sparsity/final_lambda', 0.0):.2g}"
    else:
        lam = f"λ {results.get('lambda', 0.0):g}"
    return f"  {'zero groups':<12}{pct:.1f}%{counts}; {lam}"


def size_lines(results: Mapping[str, Any]) -> list[str]:
    """Params and MACs (per image) before -> after, exact pruning."""
    dp, pp = results["dense/params"], results["pruned/params"]
    dm, pm = results["dense/macs"], results["pruned/macs"]
    eff = results.get("pruned/macs_ratio_effective")
    eff_txt = f"; {eff:.2f}× without padding taps" if eff else ""
    return [
        f"  {'params':<12}{_short(dp)} → {_short(pp)} ({dp / max(pp, 1):.2f}× fewer)",
        f"  {'MACs':<12}{_short(dm)} → {_short(pm)} per image ({pm / max(dm, 1):.2f} of dense, "
        f"{dm / max(pm, 1):.2f}× fewer{eff_txt})",
    ]


def speed_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per runtime: the paired speedup dense / pruned at each batch size timed."""
    rows: dict[str, list[tuple[int, float]]] = {}
    for key, value in results.items():
        parts = key.split("/")  # pruned/<runtime>/speedup_b<B>
        if len(parts) == 3 and parts[0] == "pruned" and parts[2].startswith("speedup_b"):
            batch = parts[2].removeprefix("speedup_b")
            if batch.isdigit() and isinstance(value, int | float):
                rows.setdefault(parts[1], []).append((int(batch), float(value)))
    best = results.get("pruned/best_runtime")
    lines = []
    for runtime, cells in rows.items():
        text = "  ".join(f"batch {b} {s:.2f}×" for b, s in sorted(cells))
        mark = "  (fastest pruned model)" if runtime == best else ""
        lines.append(f"  {'speedup':<12}{RUNTIME_NAMES.get(runtime, runtime) + ':':<15}{text}{mark}")
    return lines or [f"  {'speedup':<12}not measured"]


def files_line(results: Mapping[str, Any], cwd: str | os.PathLike | None = None) -> str:
    run_dir = results.get("run_dir")
    names = [f for f in FILES if not run_dir or (Path(run_dir) / f).exists()]  # exports need the [deploy] extra
    where = f" in {_path(run_dir, cwd)}/" if run_dir else ""
    return f"  {'files':<12}{', '.join(names)}{where}"


def next_lines(
    results: Mapping[str, Any], overrides: Sequence[str] = (), cwd: str | os.PathLike | None = None
) -> list[str]:
    """Evaluate the compact model, prune again, sweep the run's own knob over seeds, report the sweep."""
    run_dir = results.get("run_dir")
    pruned = _path(results.get("pruned/path") or Path(run_dir or "<run>") / "pruned.pt", cwd)
    ckpt = _path(results.get("ckpt_path") or Path(run_dir or "<run>") / "checkpoints/last.ckpt", cwd)
    target = results.get("sparsity/target")
    key, values = SWEEPS.get(target.get("kind"), LAMBDA_SWEEP) if isinstance(target, Mapping) else LAMBDA_SWEEP
    own = (key, "seed", "ckpt_path", "trust_checkpoint")  # a sweep starts new runs: no resume, no run dir of this one
    kept = [o for o in overrides if (k := o.split("=", 1)[0].lstrip("+~")) not in own and not k.startswith("hydra.")]
    sweep = " ".join(
        ["python -m lightning_sparse_mtl.train -m", *map(shlex.quote, kept), f"{key}={values}", "seed=0,1,2"]
    )
    cmd = "python -m lightning_sparse_mtl."
    return [
        f"  {'next':<12}evaluate:    {cmd}evaluate ckpt_path={pruned}",
        f"  {'':<12}prune again: {cmd}prune ckpt_path={ckpt} repeats=10",
        f"  {'':<12}sweep:       {sweep}",
        f"  {'':<12}report:      {cmd}report multirun/<date>/<time>",
    ]


def summary_lines(
    results: Mapping[str, Any], overrides: Sequence[str] = (), cwd: str | os.PathLike | None = None
) -> list[str]:
    """The summary of a run that pruned (``pruned/params`` in ``results``); ``[]`` for any other run.

    ``overrides``: the run's command-line overrides, kept in the suggested sweep command. At most
    :data:`MAX_LINES` lines.
    """
    if "pruned/params" not in results or "dense/macs" not in results:
        return []
    lines = [
        "summary",
        *accuracy_lines(results),
        sparsity_line(results),
        *size_lines(results),
        *speed_lines(results),
        files_line(results, cwd),
        *next_lines(results, overrides, cwd),
    ]
    return lines[:MAX_LINES]


def summary_text(
    results: Mapping[str, Any], overrides: Sequence[str] = (), cwd: str | os.PathLike | None = None
) -> str:
    """:func:`summary_lines` joined by newlines ('' when the run did not prune)."""
    return "\n".join(summary_lines(results, overrides, cwd))
