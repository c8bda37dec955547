"""Why the multi-task model lags in the 32 px study: its dense runs again, probed, under each weighting.

    python experiments/why_mtl_32.py [--seeds 0] [--lock /tmp/lsmtl-heavy.lock]    # resumable
    python experiments/why_mtl_32.py --seeds 1 2 --arms mtl_fixed mtl_fixed_seg4              # chosen arms
    python experiments/why_mtl_32.py --report-only

The 32 px study (``experiment=digits_study``: 2,000 scenes, 5 epochs, fixed weighting) found multi-task seg mIoU
0.09 against 0.23 single-task. Each job here is that study's dense multi-task run (``lambda=0``) with
``TaskGradientProbe`` on (per-task gradient norms and cosines on the shared encoder, every 10 steps) under
``weighting`` fixed (the study's), uncertainty and dwa, and two checks on fixed: seg weighted 4× and 10 epochs.
Report (``experiments/results/digits_study/why_mtl/``):
``task_gradients.md`` (loss scales, task weights, gradient norms and conflict, first and last epoch) and
``metrics.md`` (test metrics per weighting, mean ± std over seeds, against the study's single-task dense runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from digits_study import record_job, run_job  # noqa: E402

OUT = ROOT / "experiments" / "results" / "digits_study" / "why_mtl"
STL_RUNS = ROOT / "experiments" / "results" / "digits_study" / "runs"
WEIGHTINGS = ("fixed", "uncertainty", "dwa")
# the two suspects the probe points at, on the fixed weighting: depth's gradient dominating the shared encoder
# (seg weighted 4x) and too few steps for seg to leave its plateau (10 epochs instead of 5)
ARMS = {**{w: (f"mtl_{w}", [f"weighting={w}"]) for w in WEIGHTINGS},
        "fixed, seg weight 4": ("mtl_fixed_seg4", ["weighting=fixed", "task_weights={seg:4}"]),
        "fixed, 10 epochs": ("mtl_fixed_10ep", ["weighting=fixed", "trainer.max_epochs=10"])}  # fmt: skip
PROBE = ["+callbacks.task_gradients._target_=lightning_sparse_mtl.training.task_gradients.TaskGradientProbe",
         "+callbacks.task_gradients.every_n_steps=10"]  # fmt: skip
METRICS = {"seg mIoU ↑": ("seg", "test/seg/miou"), "depth abs ↓": ("depth", "test/depth/abs_err"),
           "normal mean (°) ↓": ("normal", "test/normal/mean")}  # fmt: skip


def jobs(seeds: list[int], arms: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """``[(job name, overrides)]``: seed-major, each arm (job-name prefix; default: all of them) in turn."""
    return [(f"{prefix}_dense_s{s}", ["tasks=[seg,depth,normal]", *arm, "lambda=0", f"seed={s}", *PROBE])
            for s in seeds for prefix, arm in ARMS.values() if arms is None or prefix in arms]  # fmt: skip


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f} (n = {len(values)})"


def metrics_table(runs_dir: Path, stl_runs: Path) -> str:
    """Test metrics per weighting (mean ± std over the finished seeds) and the single-task dense runs'."""
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for label, (prefix, _) in ARMS.items():
        results = [json.loads(p.read_text()) for p in sorted(runs_dir.glob(f"{prefix}_dense_s*/results.json"))]
        cells = [_mean_std([r[key] for r in results if key in r]) for _, key in METRICS.values()]
        lines.append(f"| MTL, {label} | " + " | ".join(cells) + " |")
    stl = []
    for task, key in METRICS.values():
        found = [json.loads(p.read_text()) for p in sorted(stl_runs.glob(f"{task}_dense_s*/results.json"))]
        stl.append(_mean_std([r[key] for r in found if key in r]))
    lines.append("| single-task dense (the study's) | " + " | ".join(stl) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lock", default=None, help="flock this file around each job")
    parser.add_argument("--arms", nargs="+", default=None, choices=[p for p, _ in ARMS.values()])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs_dir, log_path = out / "runs", out / "study.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {"jobs": {}}
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        for name, overrides in jobs(args.seeds, args.arms):
            wall = run_job(runs_dir / name, overrides, [], args.lock, experiment="digits_study")
            print(f"{name}: {'done already' if wall is None else f'{wall:.0f} s'}", flush=True)
            if wall is not None:
                record_job(log_path, log, name, overrides, wall)
    from task_gradient_table import write_task_gradient_table

    written = write_task_gradient_table(runs_dir, out / "task_gradients.md")
    text = "# The 32 px study's dense multi-task model under each weighting\n\n" + metrics_table(runs_dir, STL_RUNS)
    (out / "metrics.md").write_text(text + "\n")
    print(text, f"\ntask gradients -> {written}", sep="\n")


if __name__ == "__main__":
    main()
