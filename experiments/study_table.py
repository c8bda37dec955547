"""The study's README table and its sparse-vs-dense tests, from the per-job ``report.csv`` of a finished study.

    python experiments/study_table.py [experiments/results/digits_study] [--out study_table.md]

Rows: each task set (seg / depth / normal / MTL) × {dense, sparse}: n, group sparsity, MACs ratio, the main
metric of each task and Δm vs the dense single-task runs, mean ± std over seeds. Below it, per task set and
metric, sparse − dense with Welch's t-test over the seeds (is the difference beyond seed noise at p < 0.05?).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.reporting.metric_info import higher_is_better  # noqa: E402

METRICS = {"test/seg/miou": "seg mIoU ↑", "test/depth/abs_err": "depth abs ↓", "test/normal/mean": "normal mean (°) ↓"}
TASKS = {"[seg]": "seg", "[depth]": "depth", "[normal]": "normal", "[seg,depth,normal]": "MTL"}


def load(study: Path) -> pd.DataFrame:
    """One row per finished job with ``task`` and ``mode`` (dense: λ = 0, sparse: λ > 0)."""
    df = pd.read_csv(study / "report.csv")
    df["task"] = df["config"].str.extract(r"tasks=(\[[^\]]*\])", expand=False).map(TASKS)
    df["mode"] = (df["lambda"].astype(float) > 0).map({True: "sparse", False: "dense"})
    return df


def mean_std(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    mean = f"{values.mean():.{digits}f}"
    return f"{mean} ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else mean


def table(df: pd.DataFrame) -> str:
    head = ["task set", "mode", "n", "group sparsity %", "MACs ratio", *METRICS.values(), "Δm vs STL dense %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in TASKS.values():
        for mode in ("dense", "sparse"):
            part = df[(df.task == task) & (df["mode"] == mode)]
            if part.empty:
                continue
            cells = [task, mode, str(len(part)), mean_std(part["group_sparsity_%"], 1),
                     mean_std(part["macs_ratio"], 2) if mode == "sparse" else "1",
                     *(mean_std(part[k]) if k in part else "–" for k in METRICS),
                     mean_std(part["delta_m_vs_stl"], 2)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tests(df: pd.DataFrame) -> str:
    """Sparse − dense per task set and metric (sign: + = sparse better), Welch's t-test over seeds."""
    lines = ["| task set | metric | dense | sparse | sparse better by | p (Welch) | beyond seed noise? |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in TASKS.values():
        for key, name in METRICS.items():
            dense = df[(df.task == task) & (df["mode"] == "dense")].get(key, pd.Series(dtype=float)).dropna()
            sparse = df[(df.task == task) & (df["mode"] == "sparse")].get(key, pd.Series(dtype=float)).dropna()
            if len(dense) < 2 or len(sparse) < 2:
                continue
            sign = 1.0 if higher_is_better(key) else -1.0
            gain = sign * (sparse.mean() - dense.mean()) / abs(dense.mean()) * 100
            p = stats.ttest_ind(sparse, dense, equal_var=False).pvalue
            verdict = ("yes, sparse better" if gain > 0 else "yes, sparse worse") if p < 0.05 else "no"
            lines.append(f"| {task} | {name} | {mean_std(dense)} | {mean_std(sparse)} | {gain:+.2f}% | {p:.3f} | "
                         f"{verdict} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", nargs="?", default=str(ROOT / "experiments" / "results" / "digits_study"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    df = load(Path(args.study))
    text = table(df) + "\n\n" + tests(df)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
