"""The seed's claim at the default job's size: single-task (seg, depth, normal) and multi-task, dense and ~70%
sparse (input groups, the seed's) and coupled groups at the same MACs, 3 seeds each, plus the weighting measurement.

    python experiments/digits_study_48.py --dry-run                 # the queue (42 jobs)
    nohup python experiments/digits_study_48.py --lock /tmp/lsmtl-heavy.lock > study48.log 2>&1 &   # resumable
    python experiments/digits_study_48.py --max-jobs 3              # the next three jobs, then the report
    python experiments/digits_study_48.py --report-only             # tables and figures from the finished jobs
    python experiments/digits_study_48.py --tiny --out /tmp/s48     # the pipeline end to end in a few minutes

Every job is ``python -m lightning_sparse_mtl.train experiment=digits_study_48 <overrides>`` in ``<out>/runs/<job>``
(the runner of ``digits_study.py``: a dir with ``results.json`` is done; one without it is cleared and rerun).
Jobs: the weighting measurement on the dense multi-task model (``--weighting``, the study's, and the other two; 3
seeds: 9 jobs, the study's three are its MTL dense runs); per task set dense, input (``sparsity.target=0.7``) and
coupled (``sparsity.target_macs`` = the mean MACs fraction the input runs of that task set reached: their jobs wait
until those runs are finished). Queue order, most decisive first: the weighting measurement's seed 0, the multi-task
arms, the single-task dense runs, the rest of the weighting measurement, the single-task sparse arms. Outputs:
``report``'s files (``summary.md``, ``report.csv``, figures), ``study_table.md`` (the table and Welch tests),
``channel_overlap_<mode>.*``, ``task_gradients.md`` (gradient conflict and loss scales of the dense multi-task runs),
``study.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from digits_study import (  # noqa: E402
    TASKS,
    TINY,
    add_queue_arguments,
    add_study_arguments,
    channel_usage,
    record_job,
    run_job,
    select_jobs,
)

EXPERIMENT = "digits_study_48"
WEIGHTINGS = ("uncertainty", "fixed", "dwa")
INPUT_TARGET = "0.7"  # the seed's ~70% of its (input) groups
TINY_48 = [*TINY, "sparsity.target_epoch=1", "sparsity.target_every=1", "sparsity.target_lambda_init=1e-2"]


def _tasks(task: str, weighting: str) -> list[str]:
    return [f"tasks={TASKS[task]}", f"weighting={weighting if task == 'mtl' else 'fixed'}"]


def label(task: str, weighting: str) -> str:
    """Job-name prefix: the task set, and for multi-task its weighting (a finished ``mtl_fixed_dense_s0`` is never
    mistaken for the same job under another weighting)."""
    return f"mtl_{weighting}" if task == "mtl" else task


def input_macs_fraction(runs_dir: Path, task: str, seeds: list[int]) -> float | None:
    """Mean pruned/dense MACs of ``<task>_input_s<seed>`` (``task``: a job-name prefix) over ``seeds``, rounded to
    3 decimals; None until all of them are finished (the coupled arm of that task set is then set to that budget)."""
    fractions = []
    for seed in seeds:
        path = runs_dir / f"{task}_input_s{seed}" / "results.json"
        if not path.is_file():
            return None
        res = json.loads(path.read_text())
        removed = "pruned/macs" in res and "dense/macs" in res  # absent: no channel was removable
        fractions.append(res["pruned/macs"] / res["dense/macs"] if removed else 1.0)
    mean = round(sum(fractions) / len(fractions), 3)
    if not 0 < mean < 1:  # that task set's coupled arm has no budget; the rest of the queue goes on
        print(f"warning: the {task}_input runs removed no MACs (mean fraction {mean}): its coupled jobs are left out; "
              "check those runs' sparsity (sparsity.target, epochs)", file=sys.stderr)  # fmt: skip
        return None
    return mean


def jobs(runs_dir: Path, seeds: list[int], tasks: list[str], weighting: str) -> list[tuple[str, list[str] | None]]:
    """``[(job name, overrides or None)]`` in queue order; None: a coupled job whose input runs are not finished.

    The most decisive jobs first (a session may end after any of them): the weighting measurement's first seed, the
    multi-task arms (under ``weighting``: if the first seed measures it clearly worse than another, stop the queue and
    rerun with ``--weighting``; the other weighting's runs are kept), the single-task dense runs (the Δm
    reference), the rest of the weighting measurement, then the single-task sparse arms."""
    arms: dict[str, list[tuple[str, list[str] | None]]] = {}
    for task in tasks:
        base = _tasks(task, weighting)
        macs = input_macs_fraction(runs_dir, label(task, weighting), seeds)
        for mode, arm in (
            ("dense", ["lambda=0"]),
            ("input", ["sparsity.groups=input", f"sparsity.target={INPUT_TARGET}"]),
            ("coupled", None if macs is None else ["sparsity.groups=coupled", f"sparsity.target_macs={macs}"]),
        ):
            arms[f"{task}/{mode}"] = [
                (f"{label(task, weighting)}_{mode}_s{seed}", None if arm is None else [*base, *arm, f"seed={seed}"])
                for seed in seeds
            ]
    weigh = []  # the weighting measurement on the dense multi-task model; the study's weighting is its MTL dense arm
    if "mtl" in tasks:
        for seed in seeds:
            for w in (weighting, *(w for w in WEIGHTINGS if w != weighting)):
                weigh.append((f"{label('mtl', w)}_dense_s{seed}", [*_tasks("mtl", w), "lambda=0", f"seed={seed}"]))
    stl = [t for t in tasks if t != "mtl"]
    first = len(WEIGHTINGS) if seeds else 0
    out = [
        *weigh[:first],
        *(job for mode in ("dense", "input", "coupled") for job in arms.get(f"mtl/{mode}", [])),
        *(job for t in stl for job in arms[f"{t}/dense"]),
        *weigh[first:],
        *(job for mode in ("input", "coupled") for t in stl for job in arms[f"{t}/{mode}"]),
    ]
    unique: dict[str, list[str] | None] = {}
    for name, overrides in out:
        unique.setdefault(name, overrides)
    return list(unique.items())


def report(out: Path, seeds: list[int], weighting: str) -> None:
    """``report``'s files, the study table with its Welch tests, channel overlaps, the task-gradient table."""
    from study_table import GAIN_HEAD, load, sparsity_gain, table, tests

    from lightning_sparse_mtl.reporting.aggregate import write_report

    runs_dir = out / "runs"
    stl_dense = [runs_dir / f"{t}_dense_s{s}" / "results.json" for t in ("seg", "depth", "normal") for s in seeds]
    baselines = [runs_dir] if any(p.is_file() for p in stl_dense) else None  # Δm vs STL once an STL dense run is in
    result = write_report(runs_dir, out, baselines=baselines)
    print(f"report: {len(result['rows'])} run(s), {len(result['summary'])} configuration(s) -> {out}/summary.md")
    df = load(out)
    gain = sparsity_gain(df, weighting)
    gain = f"\n{GAIN_HEAD}\n\n{gain}\n" if gain else ""
    (out / "study_table.md").write_text(table(df) + "\n\n" + tests(df, weighting) + "\n" + gain)
    for mode in ("input", "coupled"):
        usage = channel_usage(runs_dir, out, seeds, mode=mode, prefixes={"mtl": label("mtl", weighting)})
        if usage:
            print(f"channel usage ({mode}) -> {usage}")
    from task_gradient_table import write_task_gradient_table

    written = write_task_gradient_table(runs_dir, out / "task_gradients.md")
    if written:
        print(f"task gradients -> {written}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_arguments(parser, ROOT / "experiments" / "results" / "digits_study_48")
    parser.add_argument("--weighting", default="uncertainty", choices=WEIGHTINGS, help="the study's MTL weighting")
    add_queue_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    runs_dir = out / "runs"
    extra = [*(TINY_48 if args.tiny else []), *args.overrides]
    log_path = out / "study.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {"jobs": {}}
    log["extra_overrides"], log["weighting"] = extra, args.weighting
    if args.dry_run:
        for name, overrides in select_jobs(jobs(runs_dir, args.seeds, args.tasks, args.weighting), args.only):
            shown = "(waits for the input runs of its task set)" if overrides is None else " ".join(overrides)
            print(name, f"experiment={EXPERIMENT}", *extra, shown)
        return
    out.mkdir(parents=True, exist_ok=True)
    ran, position = 0, 0
    while not args.report_only and (args.max_jobs is None or ran < args.max_jobs):
        # re-read the queue after every job: a finished input arm sets its coupled arm's MACs budget
        todo = select_jobs(jobs(runs_dir, args.seeds, args.tasks, args.weighting), args.only)
        pending = [(n, o) for n, o in todo if not (runs_dir / n / "results.json").is_file()]
        runnable = [(n, o) for n, o in pending if o is not None]
        if not runnable:
            if pending:
                print(f"{len(pending)} job(s) wait for input runs that are not finished: {[n for n, _ in pending]}")
            break
        name, overrides = runnable[0]
        wall = run_job(runs_dir / name, overrides, extra, args.lock, experiment=EXPERIMENT)
        position += 1
        print(f"[{position}] {name}: {'skipped (running elsewhere)' if wall is None else f'{wall:.0f} s'}", flush=True)
        if wall is None:
            break  # another instance runs it; leave the rest of the queue to that instance
        ran += 1
        record_job(log_path, log, name, overrides, wall)
    if runs_dir.is_dir():
        report(out, args.seeds, args.weighting)
    else:
        print("no finished job yet")


if __name__ == "__main__":
    main()
