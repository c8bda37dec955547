"""The seed's study on the embedded dataset: single-task (seg, depth, normal) and multi-task, dense and sparse
(the ``digits_sparse`` recipe), 3 seeds each; then the report (STL dense runs = the Δm baselines) and the
per-task channel usage (Jaccard overlap of kept encoder channels, STL sparse vs STL sparse and vs MTL sparse).

    python experiments/digits_study.py                          # the whole study (24 jobs), resumable
    nohup python experiments/digits_study.py --lock /tmp/lsmtl-heavy.lock > study.log 2>&1 &   # in the background
    python experiments/digits_study.py --report-only            # tables and figures from the finished jobs
    python experiments/digits_study.py --tiny --out /tmp/study  # the pipeline end to end in ~2 min

Jobs run one after another as ``python -m lightning_sparse_mtl.train experiment=digits_study <overrides>`` with
``hydra.run.dir=<out>/runs/<job>``. A job dir holding ``results.json`` is finished and skipped, so an interrupted
study resumes where it stopped; a job dir without it (a job killed mid-run) is cleared and that job rerun.
``--lock`` takes an exclusive ``flock`` on a file around each job (others can run between jobs). Several instances
may run at once (e.g. ``--tasks mtl`` beside the full list): a job whose run dir is locked by a live training
process is left to it.
Outputs in ``<out>``: ``runs/`` (the jobs), ``report.csv``/``summary.csv``/``summary.md`` and figures (the
report), ``channel_overlap.csv``/``.md``/``.png``/``.pdf``, ``study.json`` (commands, times).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.reporting.aggregate import write_report  # noqa: E402
from lightning_sparse_mtl.reporting.channel_usage import (  # noqa: E402
    kept_channels,
    overlap_markdown,
    overlap_table,
    plot_overlap,
)

TASKS = {"seg": "[seg]", "depth": "[depth]", "normal": "[normal]", "mtl": "[seg,depth,normal]"}
# --tiny: the same pipeline in seconds per job (tiny images, few steps); for checking, not for conclusions
TINY = ["data.dataset.image_size=32", "data.splits.train.num_scenes=64", "data.splits.val.num_scenes=32",
        "data.splits.test.num_scenes=32", "data.batch_size=16", "data.eval_batch_size=32", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "model.head_channels=16", "prune.latency_repeats=2"]  # fmt: skip
TINY_LAMBDA = "1e-2"  # strong enough to zero channels in 4 steps


def preset_lambda() -> str:
    """The sparse λ of the ``digits_study`` preset (the ``digits_sparse`` recipe's)."""
    from hydra import compose, initialize_config_dir

    from lightning_sparse_mtl.core.configs import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return f"{compose('train', overrides=['experiment=digits_study'])['lambda']:g}"


def jobs(tasks: list[str], seeds: list[int], sparse_lambda: str) -> list[tuple[str, list[str]]]:
    """``[(job name, overrides)]``: every task set × {dense (λ = 0), sparse (``sparse_lambda``)} × seed."""
    out = []
    for task in tasks:
        for mode, lam in (("dense", "0"), ("sparse", sparse_lambda)):
            for seed in seeds:
                out.append((f"{task}_{mode}_s{seed}", [f"tasks={TASKS[task]}", f"lambda={lam}", f"seed={seed}"]))
    return out


@contextmanager
def maybe_lock(path: str | None):
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def held_elsewhere(run_dir: Path) -> bool:
    """True while a live training process holds the job's run-dir lock (a second study instance runs it)."""
    from lightning_sparse_mtl.runs.run_dir import LOCK_NAME

    lock = run_dir / LOCK_NAME
    if not lock.is_file():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def finished(run_dir: Path, wanted: list[str]) -> bool:
    """True when ``run_dir`` holds ``results.json`` of a run with the ``wanted`` overrides; a finished run with
    other overrides (a changed queue, another coupled budget) is an error, never silently reused."""
    if not (run_dir / "results.json").is_file():
        return False
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if recorded.is_file():
        import yaml

        had = {o for o in yaml.safe_load(recorded.read_text()) or [] if not o.startswith(("ckpt_path=", "hydra."))}
        if had != set(wanted):
            raise RuntimeError(
                f"job {run_dir.name} finished with other overrides ({sorted(had - set(wanted))} instead of "
                f"{sorted(set(wanted) - had)}): move {run_dir} away to rerun it, or run the queue it belongs to"
            )
    return True


def run_job(
    run_dir: Path, overrides: list[str], extra: list[str], lock: str | None, experiment: str = "digits_study"
) -> float | None:
    """Run one job (``experiment=<experiment>``) unless finished; returns its wall time (None when skipped).
    Raises on a failed job. Checked again once ``lock`` is held: another instance may have run it meanwhile."""
    wanted = [f"experiment={experiment}", *extra, *overrides]
    if finished(run_dir, wanted) or held_elsewhere(run_dir):
        return None
    cmd = [sys.executable, "-m", "lightning_sparse_mtl.train", *wanted, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    # the job's output goes to a file, not a pipe, in its own session: a driver killed mid-job leaves the job to
    # finish (a pipe would break its last prints and fail it after training)
    with maybe_lock(lock), tempfile.NamedTemporaryFile("w+", prefix=f"lsmtl-{run_dir.name}-", suffix=".log") as log:
        if finished(run_dir, wanted) or held_elsewhere(run_dir):
            return None
        if run_dir.exists():  # killed mid-run: start it again from scratch
            shutil.rmtree(run_dir)
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wall = time.perf_counter() - start
        log.seek(0)
        tail = log.read()[-3000:]
    if code.returncode != 0:
        raise RuntimeError(f"job {run_dir.name} failed ({code.returncode}):\n{tail}")
    return wall


def channel_usage(
    runs_dir: Path, out: Path, seeds: list[int], mode: str = "sparse", prefixes: dict[str, str] | None = None
) -> Path | None:
    """Jaccard overlaps of the ``<prefix>_<mode>_s<seed>`` runs' kept channels (STL pairs and each STL vs MTL;
    ``prefixes``: task set -> job-name prefix, default the task set), table + heatmap: ``channel_overlap.*``
    (mode ``sparse``) or ``channel_overlap_<mode>.*``."""
    masks: dict[str, list] = {}
    label = {"seg": "seg", "depth": "depth", "normal": "normal", "mtl": "MTL"}
    for task in TASKS:
        per_seed = []
        for seed in seeds:
            path = runs_dir / f"{(prefixes or {}).get(task, task)}_{mode}_s{seed}" / "results.json"
            if not path.is_file():
                break
            res = json.loads(path.read_text())
            per_seed.append(kept_channels(res["ckpt_path"], list(res["sparsity"]["layers"])))
        if len(per_seed) == len(seeds):
            masks[label[task]] = per_seed
    stl = [t for t in ("seg", "depth", "normal") if t in masks]
    pairs = [(a, b) for i, a in enumerate(stl) for b in stl[i + 1 :]] + [(t, "MTL") for t in stl if "MTL" in masks]
    if not pairs:
        return None
    table = overlap_table(masks, pairs)
    stem = "channel_overlap" if mode == "sparse" else f"channel_overlap_{mode}"
    table.to_csv(out / f"{stem}.csv", index=False)
    head = (
        "# Kept encoder channels: Jaccard overlap between the sparse runs\n\nPer layer, |A ∩ B| / |A ∪ B| of the "
        f"input channels left non-zero ({mode} runs); mean ± std over seeds (runs of the same seed are paired).\n\n"
    )
    (out / f"{stem}.md").write_text(head + overlap_markdown(table) + "\n")
    plot_overlap(table, out / f"{stem}.png")
    return out / f"{stem}.md"


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every resumable study queue takes (this one and ``grouping_study.py``)."""
    parser.add_argument("--tiny", action="store_true", help="tiny images and few steps: check the pipeline")
    parser.add_argument("--lock", default=None, help="flock this file around each job")
    parser.add_argument("--max-jobs", type=int, default=None, help="run at most this many new jobs, then stop")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    parser.add_argument("--only", nargs="+", default=None, metavar="JOB", help="run just these jobs, in this order")
    parser.add_argument("overrides", nargs="*", help="extra train overrides for every job (e.g. trainer.max_epochs=3)")


def add_study_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    """``--out`` (default ``out``), ``--seeds`` and ``--tasks``: the options of a task-set study queue."""
    parser.add_argument("--out", default=str(out))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))


def record_job(log_path: Path, log: dict, name: str, overrides: list[str], wall: float) -> None:
    """Add a finished job to ``study.json`` (merged with what another instance may have written meanwhile)."""
    if log_path.is_file():
        log["jobs"] = {**json.loads(log_path.read_text())["jobs"], **log["jobs"]}
    log["jobs"][name] = {"overrides": overrides, "wall_s": wall}
    log_path.write_text(json.dumps(log, indent=2))


def run_queue(
    todo: list[tuple[str, list[str]]], run_dir: Callable[[str], Path], extra: list[str], args: argparse.Namespace,
    experiment: str = "digits_study",
) -> Iterator[tuple[str, list[str], float]]:  # fmt: skip
    """Run the queue's unfinished jobs in order (none with ``--report-only``, at most ``--max-jobs``), each in
    ``run_dir(name)``, printing one line per job; yields ``(name, overrides, wall seconds)`` for every job that ran."""
    ran = 0
    for i, (name, overrides) in enumerate(todo):
        if args.report_only or (args.max_jobs is not None and ran >= args.max_jobs):
            return
        wall = run_job(run_dir(name), overrides, extra, args.lock, experiment=experiment)
        status = "skipped (finished or running elsewhere)" if wall is None else f"{wall:.0f} s"
        print(f"[{i + 1}/{len(todo)}] {name}: {status}", flush=True)
        if wall is not None:
            ran += 1
            yield name, overrides, wall


def select_jobs(todo: list[tuple[str, list[str]]], only: list[str] | None) -> list[tuple[str, list[str]]]:
    """The queue, or just the jobs named in ``only`` in that order (an unknown name is an error)."""
    if not only:
        return todo
    by_name = dict(todo)
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise SystemExit(f"error: unknown job(s) {unknown}; --dry-run lists the queue")
    return [(name, by_name[name]) for name in only]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_arguments(parser, ROOT / "experiments" / "results" / "digits_study")
    parser.add_argument("--lambda", dest="lam", default=None, help="sparse λ (default: the preset's)")
    add_queue_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    runs_dir = out / "runs"
    extra = [*(TINY if args.tiny else []), *args.overrides]
    todo = select_jobs(
        jobs(args.tasks, args.seeds, args.lam or (TINY_LAMBDA if args.tiny else preset_lambda())), args.only
    )
    log_path = out / "study.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {"jobs": {}}
    log["extra_overrides"] = extra
    if args.dry_run:
        for name, overrides in todo:
            print(name, " ".join(["experiment=digits_study", *extra, *overrides]))
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, overrides, wall in run_queue(todo, lambda n: runs_dir / n, extra, args):
        record_job(log_path, log, name, overrides, wall)
    if not runs_dir.is_dir():
        print("no finished job yet")
        return
    report = write_report(runs_dir, out, baselines=[runs_dir])
    print(f"report: {len(report['rows'])} run(s), {len(report['summary'])} configuration(s) -> {out}/summary.md")
    usage = channel_usage(runs_dir, out, args.seeds)
    if usage:
        print(f"channel usage -> {usage}")


if __name__ == "__main__":
    main()
