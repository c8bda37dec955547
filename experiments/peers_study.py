"""This project's method against its peers on one budget: the ``digits_sparse`` recipe (10 epochs, 3 tasks, 48 px)
at ``sparsity.target_macs`` 0.25, 3 seeds per arm, against the dense λ = 0 runs of equal length.

    python experiments/peers_study.py                      # the queue below, resumable (finished jobs skipped)
    python experiments/peers_study.py --max-jobs 1         # one more job, then the table
    python experiments/peers_study.py --report-only        # table + figure from the finished jobs
    python experiments/peers_study.py --tiny --out /tmp/p --grouping-out /tmp/p/grouping   # end to end, minutes

Arms (``method=``): ``group_lasso`` (input groups) and ``group_lasso_coupled`` — the runs of
``grouping_study.py`` (same recipe, same seeds, in ``--grouping-out``; trained there when missing, never twice) —,
``tp_magnitude`` and ``tp_group_norm`` (Torch-Pruning, ``<out>/runs``), and ``oto_hesso``, tried once: with the
installed torch it is refused in one line, recorded in ``study.json`` and the table. The dense reference is the
grouping study's ``dense_s<seed>``. Queue order: seed by seed, the peers first.
Outputs in ``<out>``: ``runs/`` (peer jobs), ``summary.csv``, ``table.md``, ``pareto.png``, ``study.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from digits_study import TINY, add_queue_arguments, run_queue, select_jobs  # noqa: E402

from lightning_sparse_mtl.reporting.arms import arm_markdown, arm_table, plot_arms  # noqa: E402

EXPERIMENT = "digits_sparse"
PEERS = ("tp_magnitude", "tp_group_norm")
OURS = {"group_lasso": "input", "group_lasso_coupled": "coupled"}  # arm -> sparsity.groups (grouping study's jobs)


def jobs(target: float, seeds: list[int]) -> list[tuple[str, str, list[str]]]:
    """``[(where, job name, overrides)]``, where = ``peers`` or ``grouping`` (the grouping study's run dir)."""
    out = []
    for seed in seeds:
        for peer in PEERS:
            out.append(("peers", f"{peer}_m{target:g}_s{seed}", [f"method={peer}", f"sparsity.target_macs={target}",
                                                                  f"seed={seed}"]))  # fmt: skip
        for grouping in OURS.values():
            out.append(("grouping", f"{grouping}_m{target:g}_s{seed}", [f"sparsity.groups={grouping}",
                        f"sparsity.target_macs={target}", f"seed={seed}"]))  # fmt: skip
        out.append(("grouping", f"dense_s{seed}", ["lambda=0", f"seed={seed}"]))
    return out


def try_oto(extra: list[str]) -> str:
    """Start ``method=oto_hesso`` (in a scratch run dir): its one-line refusal, or how it ended when not refused."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "lightning_sparse_mtl.train", f"experiment={EXPERIMENT}", "method=oto_hesso",
               "sparsity.target_macs=0.25", *extra, f"hydra.run.dir={tmp}/oto"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]}"


def read_runs(dirs: list[Path]) -> list[dict]:
    return [json.loads((d / "results.json").read_text()) for d in dirs if (d / "results.json").is_file()]


def report(out: Path, grouping_runs: Path, target: float, seeds: list[int], oto: str | None) -> None:
    arms = {peer: read_runs([out / "runs" / f"{peer}_m{target:g}_s{s}" for s in seeds]) for peer in PEERS}
    for arm, grouping in OURS.items():
        arms[arm] = read_runs([grouping_runs / f"{grouping}_m{target:g}_s{s}" for s in seeds])
    dense = read_runs([grouping_runs / f"dense_s{s}" for s in seeds])
    if not dense:
        print("no dense run yet: no table")
        return
    table = arm_table({k: arms[k] for k in (*OURS, *PEERS)}, dense)
    table.to_csv(out / "summary.csv", index=False)
    note = f"\noto_hesso: not run — {oto}\n" if oto else ""
    head = (f"# Peers at sparsity.target_macs={target:g} (`{EXPERIMENT}` recipe)\n\nmean ± std over seeds; mean Δ "
            "against the mean of the dense λ = 0 runs over every test metric (positive = better than dense); Welch p "
            "of the per-seed mean Δ against the other family's best arm; latencies: ONNX Runtime, each run's pruned "
            "model timed beside the dense one (dense row: the mean of those dense timings).\n\n")  # fmt: skip
    (out / "table.md").write_text(head + arm_markdown(table) + note)
    plot_arms(table, out / "pareto.png")
    print((out / "table.md").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "peers"))
    parser.add_argument("--grouping-out", default=str(ROOT / "experiments" / "results" / "grouping"))
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_queue_arguments(parser)
    args = parser.parse_args(argv)
    out, grouping_runs = Path(args.out).resolve(), Path(args.grouping_out).resolve() / "runs"
    extra = [*(TINY if args.tiny else []), *args.overrides]
    queue = jobs(args.target, args.seeds)
    where = {name: w for w, name, _ in queue}
    todo = select_jobs([(name, ov) for _, name, ov in queue], args.only)
    if args.dry_run:
        for name, overrides in todo:
            print(f"{where[name]}/{name}", " ".join([f"experiment={EXPERIMENT}", *extra, *overrides]))
        return
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "study.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {"jobs": {}}
    log["extra_overrides"] = extra
    if "oto_hesso" not in log and not args.report_only:
        log["oto_hesso"] = try_oto(extra)
        log_path.write_text(json.dumps(log, indent=2))

    def run_dir(name: str) -> Path:
        return (out / "runs" if where[name] == "peers" else grouping_runs) / name

    for name, overrides, wall in run_queue(todo, run_dir, extra, args, experiment=EXPERIMENT):
        log["jobs"][name] = {"where": where[name], "overrides": overrides, "wall_s": wall}
        log_path.write_text(json.dumps(log, indent=2))
    report(out, grouping_runs, args.target, args.seeds, log.get("oto_hesso"))


if __name__ == "__main__":
    main()
