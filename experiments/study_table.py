"""The study's README table and its sparse-vs-dense tests, from the per-job ``report.csv`` of a finished study.

    python experiments/study_table.py [experiments/results/digits_study] [--out study_table.md]

Rows: each task set (seg / depth / normal / MTL) × mode × weighting: n, group sparsity, MACs ratio, the main
metric of each task and Δm vs the dense single-task runs, mean ± std over seeds. Modes: ``dense`` (λ = 0, no target),
``sparse`` (λ > 0: the 32 px study), ``input`` / ``coupled`` (``sparsity.groups``, with a target: the 48 px study).
Below it, per task set, weighting and metric, each sparse mode − dense and coupled − input (equal MACs) with Welch's
t-test over the seeds (is the difference beyond seed noise at p < 0.05?), and the weightings of the dense
multi-task model against the study's. Last, the seed's second claim (:func:`sparsity_gain`): per sparse mode and
task, the gain from sparsity of the multi-task model against that of the single-task model, Welch's t over seeds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.reporting.metric_info import higher_is_better  # noqa: E402

METRICS = {"test/seg/miou": "seg mIoU ↑", "test/depth/abs_err": "depth abs ↓", "test/normal/mean": "normal mean (°) ↓"}
GAIN_HEAD = (
    "### Does sparsity help multi-task more than single-task?\n\nGain from sparsity: each sparse model's main "
    "metric against the mean of its dense counterparts (multi-task vs multi-task dense, single-task vs the "
    "single-task dense model of that task), % with + = better, mean ± std over seeds. The difference of the two "
    "gains is tested with the seed noise of all four arms (the dense means included), Welch–Satterthwaite "
    "degrees of freedom."
)
TASKS = {"[seg]": "seg", "[depth]": "depth", "[normal]": "normal", "[seg,depth,normal]": "MTL"}


def mode_of(config: str, lam: float) -> str:
    """From a job's config label and λ: a peer's ``method`` name, ``dense`` (λ = 0 and no target), ``coupled`` /
    ``input`` (the grouping of a sparse run) or ``sparse`` (λ > 0 with the default grouping, the 32 px study)."""
    method = re.search(r"method=(\w+)", config)
    if method and method.group(1) not in ("group_lasso", "group_lasso_coupled"):
        return method.group(1)
    targeted = "sparsity.target=" in config or "sparsity.target_macs=" in config
    if not targeted and not lam > 0:  # λ = 0 (a NaN λ is not a sparse run either)
        return "dense"
    if "sparsity.groups=coupled" in config or (method and method.group(1) == "group_lasso_coupled"):
        return "coupled"
    return "input" if targeted or "sparsity.groups=input" in config else "sparse"


def load(study: Path) -> pd.DataFrame:
    """One row per finished job with ``task``, ``mode`` (:func:`mode_of`) and ``weighting`` ("" when not set)."""
    df = pd.read_csv(study / "report.csv")
    df["task"] = df["config"].str.extract(r"tasks=(\[[^\]]*\])", expand=False).map(TASKS)
    df["mode"] = [mode_of(c, float(lam)) for c, lam in zip(df["config"], df["lambda"])]
    df["weighting"] = df["config"].str.extract(r"weighting=(\w+)", expand=False).fillna("")
    return df


def _groups(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(task, weighting) pairs present, task sets in TASKS order."""
    return [(t, w) for t in TASKS.values() for w in sorted(df.loc[df.task == t, "weighting"].unique())]


def mean_std(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    mean = f"{values.mean():.{digits}f}"
    return f"{mean} ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else mean


MODES = ("dense", "sparse", "input", "coupled")


def table(df: pd.DataFrame) -> str:
    weighted = bool(df["weighting"].any())
    head = ["task set", *(["weighting"] if weighted else []), "mode", "n", "group sparsity %", "MACs ratio",
            *METRICS.values(), "Δm vs STL dense %", "Δm vs dense %"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, weighting in _groups(df):
        for mode in MODES:
            part = df[(df.task == task) & (df.weighting == weighting) & (df["mode"] == mode)]
            if part.empty:
                continue
            cells = [
                task,
                *([weighting] if weighted else []),
                mode,
                str(len(part)),
                mean_std(part["group_sparsity_%"], 1),
                mean_std(part["macs_ratio"], 2) if mode != "dense" else "1",
                *(mean_std(part[k]) if k in part else "–" for k in METRICS),
                mean_std(part.get("delta_m_vs_stl", pd.Series(dtype=float)), 2),
                mean_std(part.get("delta_m_vs_dense", pd.Series(dtype=float)), 2) if mode != "dense" else "0",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def welch_row(label: str, name: str, key: str, base: pd.Series, other: pd.Series, names: tuple[str, str]) -> str:
    """One test line: ``other`` − ``base`` (+ = ``other`` better), Welch's t over seeds; "" when n < 2."""
    base, other = base.dropna(), other.dropna()
    if len(base) < 2 or len(other) < 2:
        return ""
    sign = 1.0 if higher_is_better(key) else -1.0
    gain = sign * (other.mean() - base.mean()) / abs(base.mean()) * 100
    p = stats.ttest_ind(other, base, equal_var=False).pvalue
    verdict = (f"yes, {names[1]} better" if gain > 0 else f"yes, {names[1]} worse") if p < 0.05 else "no"
    return (f"| {label} | {names[1]} vs {names[0]} | {name} | {mean_std(base)} | {mean_std(other)} | {gain:+.2f}% | "
            f"{p:.3f} | {verdict} |")  # fmt: skip


def tests(df: pd.DataFrame, study_weighting: str | None = None) -> str:
    """Per task set (and weighting) and metric: each sparse mode vs dense, coupled vs input; then the dense
    multi-task weightings vs ``study_weighting``. Sign: + = the second named better; Welch's t-test over seeds."""
    lines = ["| task set | comparison | metric | first | second | second better by | p (Welch) | beyond seed noise? |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    pairs = [("dense", "sparse"), ("dense", "input"), ("dense", "coupled"), ("input", "coupled")]
    for task, weighting in _groups(df):
        label = f"{task} ({weighting})" if weighting and task == "MTL" else task
        for base, other in pairs:
            for key, name in METRICS.items():
                part = df[(df.task == task) & (df.weighting == weighting)]
                series = {m: part[part["mode"] == m].get(key, pd.Series(dtype=float)) for m in (base, other)}
                lines.append(welch_row(label, name, key, series[base], series[other], (base, other)))
    mtl_dense = df[(df.task == "MTL") & (df["mode"] == "dense")]
    if study_weighting:
        for other in sorted(w for w in mtl_dense.weighting.unique() if w and w != study_weighting):
            for key, name in METRICS.items():
                series = {w: mtl_dense[mtl_dense.weighting == w].get(key, pd.Series(dtype=float))
                          for w in (study_weighting, other)}  # fmt: skip
                lines.append(welch_row("MTL dense", name, key, series[study_weighting], series[other],
                                       (study_weighting, other)))  # fmt: skip
    return "\n".join(line for line in lines if line)


def _relative(part: pd.DataFrame, ref: float, key: str) -> pd.Series:
    """Per seed: ``part``'s ``key`` relative to ``ref``, in % (+ = better), indexed by seed (one run per seed)."""
    if part["seed"].duplicated().any():
        raise ValueError(f"several runs per seed for {key}: select one arm (e.g. the study's weighting)")
    sign = 1.0 if higher_is_better(key) else -1.0
    return (sign * (part.set_index("seed")[key] - ref) / abs(ref) * 100).dropna()


def _side(df: pd.DataFrame, mode: str, key: str) -> tuple[pd.Series, pd.Series] | None:
    """(sparse, dense) per-seed % relative to the dense mean (+ = better); None when either has < 2 seeds."""
    dense = df[df["mode"] == "dense"]
    if key not in df or dense[key].dropna().empty:
        return None
    ref = dense[key].mean()
    sparse_rel, dense_rel = _relative(df[df["mode"] == mode], ref, key), _relative(dense, ref, key)
    return (sparse_rel, dense_rel) if len(sparse_rel) >= 2 and len(dense_rel) >= 2 else None


def gain_difference_test(mtl: tuple[pd.Series, pd.Series], stl: tuple[pd.Series, pd.Series]) -> tuple[float, float]:
    """(difference, p): gain from sparsity multi-task − single-task, each gain = mean(sparse) − mean(dense) of
    per-seed % values; its variance sums all four groups' var/n (the dense means are noisy too), degrees of
    freedom by Welch–Satterthwaite; two-sided p."""
    groups = [*mtl, *stl]
    diff = (mtl[0].mean() - mtl[1].mean()) - (stl[0].mean() - stl[1].mean())
    parts = [g.var(ddof=1) / len(g) for g in groups]
    se = sum(parts) ** 0.5
    if se == 0:
        return diff, 0.0 if diff else 1.0
    dof = sum(parts) ** 2 / sum(c**2 / (len(g) - 1) for c, g in zip(parts, groups) if c > 0)
    return diff, float(2 * stats.t.sf(abs(diff) / se, dof))


def sparsity_gain(df: pd.DataFrame, weighting: str | None = None) -> str:
    """Does sparsity help multi-task more than single-task? Per sparse mode and task: the gain of the sparse
    multi-task model over the dense one (its main metric, % vs the dense mean, per seed) against the gain of the
    sparse single-task model of that task over its dense one (:func:`gain_difference_test`); then the same on
    the per-seed mean over the three tasks. ``weighting`` selects the multi-task arm (several runs per seed are
    an error). "" until both sides have ≥ 2 seeds for some task."""
    mtl = df[df.task == "MTL"]
    mtl = mtl[mtl.weighting == weighting] if weighting is not None else mtl
    lines = []
    for mode in ("sparse", "input", "coupled"):
        sides: dict[str, list[tuple[pd.Series, pd.Series]]] = {"MTL": [], "STL": []}
        for key, name in METRICS.items():
            m, s = _side(mtl, mode, key), _side(df[df.task == name.split()[0]], mode, key)
            if m is None or s is None:
                continue
            sides["MTL"].append(m)
            sides["STL"].append(s)
            lines.append(_gain_row(mode, name, m, s))
        if len(sides["MTL"]) == len(METRICS):  # per seed, the mean over the three tasks (seeds present in all)
            m, s = (tuple(pd.concat([x[i] for x in sides[k]], axis=1).dropna().mean(axis=1) for i in (0, 1))
                    for k in ("MTL", "STL"))  # fmt: skip
            if min(len(x) for x in (*m, *s)) >= 2:
                lines.append(_gain_row(mode, "**mean of the three**", m, s))
    if not lines:
        return ""
    head = ["| sparse mode | metric | n (MTL sparse/dense, STL sparse/dense) | gain from sparsity, multi-task % | "
            "gain from sparsity, single-task % | multi-task − single-task | p (Welch–Satterthwaite) | "
            "beyond seed noise? |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    return "\n".join(head + lines)


def _gain_row(mode: str, name: str, mtl: tuple[pd.Series, pd.Series], stl: tuple[pd.Series, pd.Series]) -> str:
    diff, p = gain_difference_test(mtl, stl)
    verdict = (f"yes, {'multi' if diff > 0 else 'single'}-task gains more (or loses less)") if p < 0.05 else "no"
    n = f"{len(mtl[0])}/{len(mtl[1])}, {len(stl[0])}/{len(stl[1])}"
    gm, gs = mtl[0] - mtl[1].mean(), stl[0] - stl[1].mean()
    return f"| {mode} | {name} | {n} | {mean_std(gm, 2)} | {mean_std(gs, 2)} | {diff:+.2f} | {p:.3f} | {verdict} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", nargs="?", default=str(ROOT / "experiments" / "results" / "digits_study"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--weighting", default=None, help="the multi-task arm (when the study ran several)")
    args = parser.parse_args(argv)
    df = load(Path(args.study))
    try:
        gain = sparsity_gain(df, args.weighting)
    except ValueError as err:
        raise SystemExit(f"error: {err} (--weighting NAME)") from None
    text = table(df) + "\n\n" + tests(df, args.weighting) + (f"\n\n{GAIN_HEAD}\n\n{gain}" if gain else "")
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
