"""Why the multi-task model lags: gradient conflict and loss scales of the dense multi-task runs of a study.

    python experiments/task_gradient_table.py experiments/results/digits_study_48/runs [--out task_gradients.md]

Reads each ``mtl_<arm>_dense_s<seed>`` job's ``csv/metrics.csv``: the ``task_grad/*`` columns that
``lightning_sparse_mtl.training.task_gradients.TaskGradientProbe`` logs (per-task gradient norms on the shared
encoder, pairwise cosines, the fraction of conflicting pairs), the training losses and the weighting's task
weights. One row per arm (the job name's ``<arm>``: its weighting, or a variant such as ``fixed_seg4``) and epoch
(first and last with probe values), mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

PREFIXES = ("task_grad/", "train/")


def epoch_means(metrics_csv: Path) -> pd.DataFrame:
    """``epoch`` × (task_grad/* and train/<task>/{loss,weight}) per-epoch means; ``_epoch`` columns preferred to
    the per-step ones, suffixes dropped."""
    df = pd.read_csv(metrics_csv)
    keep: dict[str, str] = {}
    for col in df.columns:
        if not col.startswith(PREFIXES) or col.endswith("_step") and col[: -len("_step")] + "_epoch" in df:
            continue
        keep[col] = col.removesuffix("_epoch").removesuffix("_step")
    per_epoch = df[["epoch", *keep]].rename(columns=keep).groupby("epoch").mean(numeric_only=True)
    return per_epoch.T.groupby(level=0).mean().T  # a key logged both per step and per epoch: one column


def collect(runs_dir: Path) -> pd.DataFrame:
    """One row per (job, epoch): ``arm``, ``weighting``, ``seed``, ``epoch`` and the per-epoch means."""
    frames = []
    for job in sorted(runs_dir.glob("mtl_*dense_s*")):
        metrics, results = job / "csv" / "metrics.csv", job / "results.json"
        if not (metrics.is_file() and results.is_file()):
            continue
        config = json.loads(results.read_text()).get("config") or {}
        means = epoch_means(metrics).reset_index()
        # the arm: the job name without ``mtl_`` and ``_dense_s<seed>`` (its weighting, or e.g. ``fixed_seg4``)
        means.insert(0, "arm", job.name.rsplit("_dense_s", 1)[0].removeprefix("mtl_"))
        means.insert(1, "weighting", (config.get("weighting") or {}).get("name", "?"))
        means.insert(2, "seed", config.get("seed"))
        frames.append(means)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    return f"{values.mean():.3g} ± {values.std(ddof=1):.2g}" if len(values) > 1 else f"{values.mean():.3g}"


def markdown(df: pd.DataFrame) -> str:
    grads = sorted(c for c in df.columns if c.startswith("task_grad/"))
    losses = sorted(c for c in df.columns if c.startswith("train/") and c.endswith(("/loss", "/weight")))
    losses = [c for c in losses if c != "train/loss"]
    columns = [*grads, *losses]
    head = ["run", "epoch", "n", *(c.removeprefix("task_grad/") for c in grads),
            *(c.removeprefix("train/") for c in losses)]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, part in df.groupby("arm"):
        probed = part.dropna(subset=grads, how="all")  # the test stage logs at epoch = max_epochs: no probe values
        for epoch in sorted({int(probed.epoch.min()), int(probed.epoch.max())}):
            rows = part[part.epoch == epoch]
            cells = [str(arm), str(epoch), str(len(rows)), *(_cell(rows[c]) for c in columns)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_task_gradient_table(runs_dir: Path, out: Path) -> Path | None:
    """``out`` (markdown) and ``out`` with ``.csv`` (every epoch) from the dense multi-task runs; None if none."""
    df = collect(runs_dir)
    if df.empty or not any(c.startswith("task_grad/") for c in df.columns):
        return None
    df.to_csv(out.with_suffix(".csv"), index=False)
    head = ("# Dense multi-task runs: gradient conflict and loss scales\n\nPer-task gradients on the shared encoder "
            "(weighted by the task weights in use), logged every few steps by `TaskGradientProbe`; epoch means, "
            "mean ± std over seeds, first and last epoch. `a~b/cos` < 0: the two tasks pull the shared weights "
            "apart; `norm_ratio`: largest / smallest task gradient norm.\n\n")  # fmt: skip
    out.write_text(head + markdown(df) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs_dir)
    out = Path(args.out) if args.out else runs_dir.parent / "task_gradients.md"
    written = write_task_gradient_table(runs_dir, out)
    print(out.read_text() if written else f"no dense multi-task run with task_grad/* columns in {runs_dir}")


if __name__ == "__main__":
    main()
