"""Input vs coupled groups on the ``digits_sparse`` recipe (10 epochs, 3 tasks, 48 px): MACs targets, then seeds.

    python experiments/grouping_study.py                     # the queue below, resumable (finished jobs skipped)
    python experiments/grouping_study.py --max-jobs 1        # one more job, then the report
    python experiments/grouping_study.py --report-only       # tables from the finished jobs
    python experiments/grouping_study.py --tiny --out /tmp/g # the pipeline end to end in ~2 min
    python experiments/grouping_study.py --group-weights macs --only coupled_macs_m0.25_s1   # one MACs-weighted job
    python experiments/grouping_study.py --max-layer-sparsity 0.55 --only coupled_cap0.55_m0.25_s1   # widths evened

Every job is ``python -m lightning_sparse_mtl.train experiment=digits_sparse <overrides>`` in ``<out>/runs/<job>``
(the runner of ``digits_study.py``: a dir with ``results.json`` is done; a dir without it is cleared and rerun).
Jobs: the λ = 0 run of equal length, then ``sparsity.groups`` ∈ {input, coupled} × ``sparsity.target_macs`` ∈
{0.12, 0.25, 0.08} (seed 0), then seeds 1 and 2 at 0.25 and 0.12. The order puts the goal point (≤ 0.12 of the
dense MACs) first. Outputs: ``summary.csv``/``summary.md`` (``report``), ``study.json`` (commands, wall times).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from digits_study import TINY, add_queue_arguments, run_queue, select_jobs  # noqa: E402

from lightning_sparse_mtl.reporting.aggregate import write_report  # noqa: E402
from lightning_sparse_mtl.reporting.arms import arm_markdown, arm_table, dense_mean, run_delta, welch_p  # noqa: E402
from lightning_sparse_mtl.sparsity.costs import GROUP_WEIGHTS  # noqa: E402

GROUPINGS = ("coupled", "input")


def _sparse(
    grouping: str, target: float, seed: int, weight: str = "sqrt_size", cap: float | None = None
) -> tuple[str, list[str]]:
    """A sparse job: ``<grouping>[_<weight>][_cap<cap>]_m<target>_s<seed>`` (``sparsity.group_weight`` named when
    not the default ``sqrt_size``; ``sparsity.max_layer_sparsity`` when a cap is given)."""
    tag = "" if weight == "sqrt_size" else f"_{weight}"
    overrides = [f"sparsity.groups={grouping}", f"sparsity.target_macs={target}", f"seed={seed}"]
    overrides += [f"sparsity.group_weight={weight}"] if tag else []
    if cap is not None:
        tag += f"_cap{cap:g}"
        overrides.append(f"sparsity.max_layer_sparsity={cap}")
    return f"{grouping}{tag}_m{target:g}_s{seed}", overrides


def jobs(
    targets: list[float],
    seeds: list[int],
    seed_targets: list[float],
    weights: tuple[str, ...] = ("sqrt_size",),
    caps: tuple[float | None, ...] = (None,),
) -> list[tuple[str, list[str]]]:
    """``[(job name, overrides)]`` in the order they run: the goal point's coupled run first, then the dense
    reference, then both groupings at every target (seed 0), then per further seed its dense run and both
    groupings at ``seed_targets``; every sparse job once per group weight in ``weights`` and per-layer cap in
    ``caps`` (None: the preset's ``sparsity.max_layer_sparsity``)."""
    variants = [(w, c) for w in weights for c in caps]
    out = [_sparse("coupled", targets[0], 0, *v) for v in variants] + [("dense_s0", ["lambda=0", "seed=0"])]
    for target in targets:
        out += [_sparse(g, target, 0, *v) for g in GROUPINGS for v in variants]
    for seed in (s for s in seeds if s != 0):
        out.append((f"dense_s{seed}", ["lambda=0", f"seed={seed}"]))
        out += [_sparse(g, t, seed, *v) for t in seed_targets for g in GROUPINGS for v in variants]
    unique: dict[str, list[str]] = {}
    for name, overrides in out:
        unique.setdefault(name, overrides)
    return list(unique.items())


def seeds_table(
    runs_dir: Path,
    out: Path,
    targets: list[float],
    seeds: list[int],
    weights: tuple[str, ...] = ("sqrt_size",),
    caps: tuple[float | None, ...] = (None,),
) -> Path | None:
    """``seeds.md``: every (grouping, group weight, cap, target) with its seeds, mean ± std (``arm_table``) against
    the mean of the dense runs, and per target and variant coupled vs input (Welch p of the per-seed mean Δ)."""

    def read(names: list[str]) -> list[dict]:
        files = [runs_dir / n / "results.json" for n in names]
        return [json.loads(f.read_text()) for f in files if f.is_file()]

    def arm(g: str, v: tuple[str, float | None], t: float) -> str:
        return _sparse(g, t, 0, *v)[0].rsplit("_m", 1)[0] + f" {t:g}"

    variants = [(w, c) for w in weights for c in caps]
    dense = read([f"dense_s{s}" for s in seeds])
    arms = {}
    for t in sorted(targets, reverse=True):
        for g in GROUPINGS:
            for v in variants:
                runs = read([_sparse(g, t, s, *v)[0] for s in seeds])
                if runs or v == ("sqrt_size", None):  # another variant's arms only where it ran
                    arms[arm(g, v, t)] = runs
    if not dense or not any(arms.values()):
        return None
    table = arm_table(arms, dense)
    deltas = {r["arm"]: r for r in table.to_dict("records")}
    lines = []
    for t in sorted(targets, reverse=True):
        for v in variants:
            names = {g: arm(g, v, t) for g in GROUPINGS}
            runs = {g: arms.get(names[g], []) for g in GROUPINGS}
            if all(len(v) >= 2 for v in runs.values()):
                ref = dense_mean(dense)
                p = welch_p([run_delta(r, ref) for r in runs["coupled"]], [run_delta(r, ref) for r in runs["input"]])
                mean = {g: deltas[names[g]]["mean_delta_%_mean"] for g in GROUPINGS}
                lines.append(f"- {names['coupled']} vs {names['input']}: {mean['coupled']:+.2f}% vs "
                             f"{mean['input']:+.2f}% mean Δ, Welch p = {p:.3f}")  # fmt: skip
    head = ("# Input vs coupled groups over seeds (`digits_sparse` recipe)\n\nmean ± std over seeds; mean Δ against "
            "the mean of the dense λ = 0 runs over the nine test metrics (positive = better than dense); latencies: "
            "ONNX Runtime at 48 × 48, each run's pruned model timed beside the dense one.\n\n")  # fmt: skip
    path = out / "seeds.md"
    path.write_text(head + arm_markdown(table) + ("\n" + "\n".join(lines) + "\n" if lines else ""))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "grouping"))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.12, 0.25, 0.08])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-targets", type=float, nargs="+", default=[0.25, 0.12])
    parser.add_argument("--group-weights", nargs="+", default=["sqrt_size"], choices=list(GROUP_WEIGHTS),
                        help="run each sparse job once per sparsity.group_weight; a job with a weight other than "
                             "sqrt_size is named <grouping>_<weight>_m<target>_s<seed>")  # fmt: skip
    parser.add_argument("--max-layer-sparsity", dest="caps", type=float, nargs="+", default=None, metavar="CAP",
                        help="run each sparse job once per sparsity.max_layer_sparsity (a width-evening cap); such a "
                             "job is named <grouping>[_<weight>]_cap<cap>_m<target>_s<seed>")  # fmt: skip
    add_queue_arguments(parser)
    args = parser.parse_args(argv)
    caps = tuple(args.caps) if args.caps else (None,)
    out = Path(args.out).resolve()
    runs_dir = out / "runs"
    extra = [*(TINY if args.tiny else []), *args.overrides]
    todo = select_jobs(jobs(args.targets, args.seeds, args.seed_targets, tuple(args.group_weights), caps), args.only)
    if args.dry_run:
        for name, overrides in todo:
            print(name, " ".join(["experiment=digits_sparse", *extra, *overrides]))
        return
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "study.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {"jobs": {}}
    log["extra_overrides"] = extra
    for name, overrides, wall in run_queue(todo, lambda n: runs_dir / n, extra, args, experiment="digits_sparse"):
        log["jobs"][name] = {"overrides": overrides, "wall_s": wall}
        log_path.write_text(json.dumps(log, indent=2))
    if runs_dir.is_dir():
        report = write_report(runs_dir, out)
        print(f"report: {len(report['rows'])} run(s) -> {out}/summary.md")
        weights = tuple(dict.fromkeys(["sqrt_size", *args.group_weights]))
        table = seeds_table(runs_dir, out, args.targets, args.seeds, weights, tuple(dict.fromkeys([None, *caps])))
        if table:
            print(table.read_text())


if __name__ == "__main__":
    main()
