"""Learned widths vs even widths at equal *measured* speed: ``method=tp_uniform`` beside the coupled group lasso.

    python experiments/even_width_study.py                      # the queue below, resumable (finished jobs skipped)
    python experiments/even_width_study.py --report-only --speed speed_even   # tables + figure from finished jobs
    python experiments/even_width_study.py --tiny --out /tmp/e  # the pipeline end to end, minutes

The trained coupled models run at ~0.85 of their MACs ratio at deployment sizes, even-width nets at 0.92-0.96
(``docs/results.md``): at equal MACs an even net is faster. What a user deploys for is accuracy at a latency, so
this study trains the even-width net itself — every channel space at one width fraction, multiples of 16, chosen
for the MACs budget, trained at that width for the whole ``digits_sparse`` budget (``method=tp_uniform``) — at the
grouping study's budgets and seeds, in the grouping study's run directory, so that
``grouping_speed.py --name <speed>`` times both arms' dynamic-size exports in one run. Jobs: ``even_m<t>_s<seed>``,
targets 0.25, 0.12, 0.08 (seed 0), then seeds 1 and 2 at each; then ``even_late_m<t>_s0`` at 0.25 and 0.12: the
same widths reached by pruning the net after 2/3 of the budget trained dense (``tp_magnitude``'s split), so that
"trained narrow from the start" is not the only even-width recipe. The report (``even_width.md``,
``even_width.png``) puts each arm's mean Δ vs dense beside its ONNX Runtime speedup at 288 × 384 and 128 × 256 from
``<out>/<speed>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from digits_study import TINY, add_queue_arguments, run_queue, select_jobs  # noqa: E402

from lightning_sparse_mtl.reporting.arms import dense_mean, run_delta, welch_p  # noqa: E402

ARMS = {
    "even": "tp_uniform (even widths, from the first step)",
    "even_late": "tp_uniform after 2/3 dense training",
    "coupled": "group lasso, coupled",
}
LATE = "method.dense_fraction=0.6667"  # even_late: tp_magnitude's split (prune the trained net, fine-tune the rest)


def jobs(
    targets: list[float], seeds: list[int], seed_targets: list[float], late_targets: list[float]
) -> list[tuple[str, list[str]]]:
    """``[(job name, overrides)]``: every target at seed 0, the further seeds at ``seed_targets``, then the
    ``even_late`` arm (pruned after 2/3 dense training) at ``late_targets``, seed 0."""
    order = [(t, 0) for t in targets] + [(t, s) for s in seeds if s != 0 for t in seed_targets]
    out = [(f"even_m{t:g}_s{s}", ["method=tp_uniform", f"sparsity.target_macs={t}", f"seed={s}"]) for t, s in order]
    late = [(f"even_late_m{t:g}_s0", ["method=tp_uniform", LATE, f"sparsity.target_macs={t}", "seed=0"])
            for t in late_targets]  # fmt: skip
    return out + late


def speedups(speed: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(run, "HxW:B") -> (ONNX Runtime speedup, speedup / MACs ratio), from a ``grouping_speed.py`` JSON."""
    return {(r["run"], f"{r['size'][0]}x{r['size'][1]}:{r['batch']}"): (r["speedup"], r["speedup_over_macs_ratio"])
            for r in speed["rows"]}  # fmt: skip


def rows(runs_dir: Path, targets: list[float], seeds: list[int], speed: dict | None) -> list[dict]:
    """One row per (budget, arm): runs, MACs fraction, mean Δ vs the mean of the dense runs, and per size the
    speedup (mean, std, runs timed) and the mean speedup / MACs ratio."""

    def read(name: str) -> dict | None:
        f = runs_dir / name / "results.json"
        return json.loads(f.read_text()) if f.is_file() else None

    dense = [r for r in (read(f"dense_s{s}") for s in seeds) if r]
    if not dense:
        return []
    ref, fast = dense_mean(dense), speedups(speed) if speed else {}
    sizes = sorted({k[1] for k in fast}, reverse=True)
    out = []
    for t in sorted(targets, reverse=True):
        for arm in ARMS:
            named = {f"{arm}_m{t:g}_s{s}": read(f"{arm}_m{t:g}_s{s}") for s in seeds}
            named = {n: r for n, r in named.items() if r}
            if not named:
                continue
            delta = [run_delta(r, ref) for r in named.values()]
            macs = [1 / r["pruned/macs_ratio"] for r in named.values()]
            row = {"budget": t, "arm": arm, "runs": sorted(named), "n": len(named), "delta": delta,
                   "macs": float(np.mean(macs))}  # fmt: skip
            for size in sizes:
                got = [fast[(n, size)][0] for n in named if (n, size) in fast]
                per_mac = [fast[(n, size)][1] for n in named if (n, size) in fast]
                std = float(np.std(got, ddof=1)) if len(got) > 1 else math.nan
                row[size] = (float(np.mean(got)), std, len(got), float(np.mean(per_mac)) if got else math.nan)
            out.append(row)
    return out


def _pm(values: list[float], digits: int = 2) -> str:
    mean = float(np.mean(values))
    return f"{mean:+.{digits}f}" + (f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else "")


def markdown(table: list[dict], speed_name: str | None) -> str:
    sizes = sorted({k for r in table for k in r if isinstance(k, str) and ":" in k}, reverse=True)
    head = ["budget", "arm", "n", "MACs kept", "mean Δ vs dense (%)", *[f"ORT speedup {s}" for s in sizes]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        speed = [f"{r[s][0]:.2f}×" + (f" ± {r[s][1]:.2f}" if r[s][2] > 1 else "") + f" ({r[s][3]:.2f})"
                 + (f" [n = {r[s][2]}]" if r[s][2] != r["n"] else "") if r.get(s) and r[s][2] else "—"
                 for s in sizes]  # fmt: skip
        cells = [f"{r['budget']:g}", ARMS[r["arm"]], str(r["n"]), f"{r['macs']:.3f}", _pm(r["delta"]), *speed]
        lines.append("| " + " | ".join(cells) + " |")
    tests = []
    for t in sorted({r["budget"] for r in table}, reverse=True):
        pair = {r["arm"]: r["delta"] for r in table if r["budget"] == t}
        if all(len(pair.get(a, [])) >= 2 for a in ("even", "coupled")):  # even_late runs one seed
            tests.append(f"- budget {t:g}: Welch p of the per-seed mean Δ, even vs coupled = "
                         f"{welch_p(pair['even'], pair['coupled']):.2g}")  # fmt: skip
    source = f"`{speed_name}.json` (`grouping_speed.py`, both arms timed in one run)" if speed_name else "none given"
    return ("# Even widths vs learned widths at equal measured speed (`digits_sparse` recipe)\n\nmean ± std over "
            "seeds; mean Δ against the mean of the dense λ = 0 runs over the nine test metrics (positive = better "
            f"than dense); speedups: ONNX Runtime, dense / pruned, 2 threads, from {source}; in brackets the mean "
            "speedup / MACs ratio; [n = k]: only k of the runs timed (a run without a dynamic-size export is skipped)."
            "\n\n"
            + "\n".join(lines) + "\n" + ("\n" + "\n".join(tests) + "\n" if tests else ""))  # fmt: skip


def plot(table: list[dict], size: str, path: Path) -> Path | None:
    """Mean Δ vs dense against the ONNX Runtime speedup at ``size``, one point per (arm, budget), std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in table if r.get(size) and r[size][2]]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, marker in zip(ARMS, "o^s"):
        mine = sorted((r for r in points if r["arm"] == arm), key=lambda r: r[size][0])
        if not mine:
            continue
        x = [r[size][0] for r in mine]
        y = [float(np.mean(r["delta"])) for r in mine]
        xerr = [0 if math.isnan(r[size][1]) else r[size][1] for r in mine]
        yerr = [float(np.std(r["delta"], ddof=1)) if r["n"] > 1 else 0 for r in mine]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=f"{marker}-", capsize=3, label=ARMS[arm])
        for r, xi, yi in zip(mine, x, y):
            ax.annotate(f"{r['budget']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"ONNX Runtime speedup over dense at {size.replace(':', ', batch ')} (higher is faster)")
    ax.set_ylabel("mean Δ vs dense (%), higher is better")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "grouping"))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.12, 0.08])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-targets", type=float, nargs="+", default=[0.25, 0.12, 0.08])
    parser.add_argument("--late-targets", type=float, nargs="*", default=[0.25, 0.12])
    parser.add_argument("--speed", default=None, help="stem of a grouping_speed.py JSON in --out (its speedups)")
    add_queue_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    runs_dir = out / "runs"
    extra = [*(TINY if args.tiny else []), *args.overrides]
    todo = select_jobs(jobs(args.targets, args.seeds, args.seed_targets, args.late_targets), args.only)
    if args.dry_run:
        for name, overrides in todo:
            print(name, " ".join(["experiment=digits_sparse", *extra, *overrides]))
        return
    for _ in run_queue(todo, lambda n: runs_dir / n, extra, args, experiment="digits_sparse"):
        pass
    if args.speed and not (out / f"{args.speed}.json").is_file():
        parser.error(f"--speed {args.speed}: no {out / args.speed}.json (run grouping_speed.py --name {args.speed})")
    speed = json.loads((out / f"{args.speed}.json").read_text()) if args.speed else None
    table = rows(runs_dir, args.targets, args.seeds, speed)
    if not table:
        print("no dense run yet: no table")
        return
    (out / "even_width.md").write_text(markdown(table, args.speed))
    sizes = sorted({k for r in table for k in r if isinstance(k, str) and ":" in k}, reverse=True)
    if sizes:
        plot(table, sizes[0], out / "even_width.png")
    print((out / "even_width.md").read_text())


if __name__ == "__main__":
    main()
