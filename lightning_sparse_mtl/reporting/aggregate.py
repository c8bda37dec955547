"""Sweep report: ``python -m lightning_sparse_mtl.report <multirun dir> [--out DIR] [--baselines PATH ...]``.

Reads each job's ``results.json`` (a job dir = a folder with ``.hydra/`` or ``results.json``, found recursively)
and writes ``report.csv`` / ``report.md`` (one row per job), ``summary.csv`` / ``summary.md`` (one row per
configuration = every override except ``seed``: n, mean, std and 95 % t-interval of every column; see
:mod:`~lightning_sparse_mtl.reporting.configurations` and :mod:`~lightning_sparse_mtl.reporting.summary`) and the
figures as PNG + PDF (:mod:`lightning_sparse_mtl.reporting.plots`). Job dirs without ``results.json`` (or with an
unreadable one) are failed runs: listed in the Markdown and on stdout, never dropped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_sparse_mtl.core.atomic_io import atomic_write_text
from lightning_sparse_mtl.core.errors import UserError, exit_on_user_error
from lightning_sparse_mtl.core.validate import check_results_shape, check_writable_dir
from lightning_sparse_mtl.mtl.delta_m import is_metric_key
from lightning_sparse_mtl.reporting.configurations import assign_configurations, is_dense_run, read_overrides, setting
from lightning_sparse_mtl.reporting.plots import make_plots, short_labels
from lightning_sparse_mtl.reporting.summary import add_delta_m, load_stl_baselines, summarise
from lightning_sparse_mtl.reporting.summary_tables import summary_markdown

RESULTS = "results.json"
SKIP_DIRS = {"wandb", "checkpoints", "csv", "predictions", "__pycache__"}
# (column, results.json key(s), first present wins)
FIXED_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lambda", ("lambda",)),
    ("seed", ("seed",)),
    ("group_sparsity_%", ("sparsity/group_sparsity",)),
    ("weight_sparsity_%", ("sparsity/weight_sparsity",)),
    ("params", ("params", "dense/params")),
    ("pruned_params", ("pruned/params",)),
    ("macs", ("pruned/macs", "dense/macs")),  # of the deployed (pruned when pruned) model
    ("dense_macs", ("dense/macs",)),
    ("pruned_macs", ("pruned/macs",)),
    ("macs_ratio", ("pruned/macs_ratio",)),
    ("dense_latency_b1_ms", ("dense/latency_b1_ms",)),
    ("pruned_latency_b1_ms", ("pruned/latency_b1_ms",)),
    ("speedup_b1", ("pruned/speedup_b1",)),
    ("dense_latency_b8_ms", ("dense/latency_b8_ms",)),
    ("pruned_latency_b8_ms", ("pruned/latency_b8_ms",)),
    ("speedup_b8", ("pruned/speedup_b8",)),
)
MD_COLUMNS = ("lambda", "seed", "group_sparsity_%", "params", "pruned_params", "macs",
              "dense_latency_b1_ms", "pruned_latency_b1_ms")  # fmt: skip


@dataclass(frozen=True)
class FailedRun:
    job: str  # job dir relative to the report root
    reason: str


def number(value: Any) -> float | int | None:
    """A finite int/float, else None (bools, strings, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def find_job_dirs(root: str | os.PathLike) -> list[Path]:
    """Folders under ``root`` (itself included) holding ``.hydra/`` or ``results.json``; not searched below a job
    dir or inside hidden, W&B, checkpoint and log folders."""
    jobs = []
    for dirpath, dirnames, filenames in os.walk(root):
        if (Path(dirpath) / ".hydra").is_dir() or RESULTS in filenames:
            jobs.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
    return sorted(jobs)


def _log_tail(job_dir: Path) -> str:
    """The last non-empty line of the job's Hydra log (``<job name>.log``), if any."""
    for log in sorted(job_dir.glob("*.log")):
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return f"{log.name}: {lines[-1][:200]}"
    return ""


def flatten_results(results: Mapping[str, Any], job: str) -> dict[str, Any]:
    """One report row: job, the fixed columns, every ``test/<task>/<metric>`` and ``test/delta_m``; layer
    sparsity is kept under ``_layers`` (not a CSV column)."""
    row: dict[str, Any] = {"job": job}
    config = results.get("config") or {}
    for column, keys in FIXED_COLUMNS:
        row[column] = next((number(results[k]) for k in keys if number(results.get(k)) is not None), None)
    if row["lambda"] is None:
        row["lambda"] = number(config.get("lambda"))
    if row["seed"] is None:
        row["seed"] = number(config.get("seed"))
    for key, value in results.items():
        if is_metric_key(key) or key == "test/delta_m":
            row[key] = number(value)
    row["_layers"] = {
        name: number(stats.get("group_sparsity"))
        for name, stats in ((results.get("sparsity") or {}).get("layers") or {}).items()
    }
    row["_config"] = config
    row["_results"] = results
    row["_dense"] = is_dense_run(results)
    return row


def collect(root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[FailedRun]]:
    """(rows sorted by λ, configuration, seed; failed runs) for the jobs under ``root``; each row has its
    configuration label in ``config``. UserError when ``root`` does not exist or holds no job."""
    rows, failed, _ = collect_with_notes(root)
    return rows, failed


def collect_with_notes(root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[FailedRun], dict[str, list]]:
    """:func:`collect` plus ``{configuration: [non-swept keys that set it apart]}``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give a Hydra multirun dir (e.g. multirun/<date>/<time>)")
    job_dirs = find_job_dirs(root)
    if not job_dirs:
        raise UserError(f"no Hydra job under {root} (expected folders holding .hydra/ or {RESULTS})")
    rows, failed = [], []
    for job_dir in job_dirs:
        job = job_dir.relative_to(root).as_posix() if job_dir != root else "."
        path = job_dir / RESULTS
        if not path.is_file():
            tail = _log_tail(job_dir)
            failed.append(FailedRun(job, f"no {RESULTS}" + (f" (last log line: {tail})" if tail else "")))
            continue
        try:
            results = json.loads(path.read_text())
            wrong = check_results_shape(results)  # e.g. "config" a list, "sparsity.layers" a string
            if wrong:
                raise ValueError(wrong)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            failed.append(FailedRun(job, f"unreadable {RESULTS}: {err}"))
            continue
        row = flatten_results(results, job)
        row["_overrides"] = read_overrides(job_dir)
        run_dirs = [str(job_dir.resolve()), str(results.get("run_dir") or "")]
        row["_setting"] = setting(row["_config"], run_dirs)
        rows.append(row)
    notes = assign_configurations(rows)
    inf = float("inf")
    rows.sort(key=lambda r: (inf if r["lambda"] is None else r["lambda"], r["config"],
                             inf if r["seed"] is None else r["seed"]))  # fmt: skip
    return rows, failed, notes


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sorted ``test/<task>/<metric>`` columns present in any row, then ``test/delta_m`` when present."""
    keys = sorted({k for r in rows for k in r if is_metric_key(k)})
    return keys + (["test/delta_m"] if any(r.get("test/delta_m") is not None for r in rows) else [])


DELTA_COLUMNS = ("delta_m_vs_stl", "delta_m_vs_dense")


def value_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric report columns with a value in some row: fixed columns (not λ/seed), metrics, Δm columns."""
    cols = [c for c, _ in FIXED_COLUMNS if c not in ("lambda", "seed")] + ["lambda"]
    cols += metric_columns(rows) + [c for c in DELTA_COLUMNS if any(r.get(c) is not None for r in rows)]
    return [c for c in cols if any(number(r.get(c)) is not None for r in rows)]


def csv_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    deltas = [c for c in DELTA_COLUMNS if any(r.get(c) is not None for r in rows)]
    return ["job", "config", *(c for c, _ in FIXED_COLUMNS), *metric_columns(rows), *deltas]


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in csv_columns(rows)})
    return buf.getvalue()


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def si(value: Any) -> str:
    """Counts with a metric suffix: 11398047 -> 11.4M."""
    if number(value) is None:
        return fmt(value)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:g}"


COUNT_COLUMNS = {"params", "pruned_params", "macs"}


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: λ, seed, group sparsity, params, MACs, latency dense/pruned (b1), each metric, Δm, and
    the configuration (when the jobs are not all one)."""
    metrics = metric_columns(rows) + [c for c in DELTA_COLUMNS if any(r.get(c) is not None for r in rows)]
    configs = len({r.get("config") for r in rows}) > 1
    names = {"test/delta_m": "Δm %", "delta_m_vs_stl": "Δm vs STL %", "delta_m_vs_dense": "Δm vs dense λ=0 %"}
    header = ["λ", "seed", "group sparsity %", "params", "pruned params", "MACs", "dense ms (b1)",
              "pruned ms (b1)", *(names.get(m, m.removeprefix("test/")) for m in metrics)]  # fmt: skip
    header += ["configuration"] if configs else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [(si if c in COUNT_COLUMNS else fmt)(row.get(c)) for c in (*MD_COLUMNS, *metrics)]
        cells += [f"`{row.get('config')}`"] if configs else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(
    root: str, rows: Sequence[Mapping[str, Any]], failed: Sequence[FailedRun], plots: Mapping[str, str | None]
) -> str:
    """The whole ``report.md``: summary line, table, plots (or why one was skipped) and the failed runs."""
    parts = [f"# Sweep report: `{root}`", "", f"{len(rows)} finished run(s), {len(failed)} failed.", ""]
    parts += [markdown_table(rows) if rows else "_No finished run._", ""]
    parts += ["Metric directions: miou, pix_acc, within_*, acc, f1, Δm — higher is better; abs_err, rel_err, "
              "normal mean/median — lower is better.", ""]  # fmt: skip
    if plots:
        parts += ["## Plots", ""]
        for name, note in plots.items():
            parts += [f"![{name}]({name})" if note is None else f"- `{name}` skipped: {note}", ""]
    parts += ["## Failed runs", ""]
    parts += [f"- `{f.job}`: {f.reason}" for f in failed] or ["None."]
    return "\n".join(parts) + "\n"


def write_report(
    root: str | os.PathLike, out: str | os.PathLike | None = None, baselines: Sequence[str | os.PathLike] = ()
) -> dict[str, Any]:
    """Collect, write ``report.csv``/``report.md``, ``summary.csv``/``summary.md`` and the figures into ``out``
    (default ``root``); returns ``{"rows", "failed", "summary" (a DataFrame), "notes", "files", "skipped"}``."""
    stl = load_stl_baselines(baselines) if baselines else None
    rows, failed, notes = collect_with_notes(root)
    deltas = add_delta_m(rows, stl)
    out = check_writable_dir(out if out is not None else root, "--out")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, value_columns(rows))
    plots = make_plots(rows, summary, out, metric_columns(rows), deltas) if rows else {}
    files = [atomic_write_text(out / "report.csv", to_csv(rows))]
    files.append(atomic_write_text(out / "report.md", markdown_report(str(root), rows, failed, plots)))
    files.append(atomic_write_text(out / "summary.csv", summary.to_csv(index=False, lineterminator="\n")))
    config = next((r["_config"] for r in rows if r.get("_config")), None)
    overrides = [r.get("_kept_overrides") for r in rows]
    common = [o for o in overrides[0] if all(o in ov for ov in overrides)] if rows and all(overrides) else []
    names = short_labels(rows) if len(summary) > 1 else {}
    md = summary_markdown(str(root), summary, notes, stl, plots, len(failed), config, names, common if names else [])
    files.append(atomic_write_text(out / "summary.md", md))
    files += [out / name for name, note in plots.items() if note is None]
    files += [(out / name).with_suffix(".pdf") for name, note in plots.items() if note is None]
    skipped = {k: v for k, v in plots.items() if v}
    return {"rows": rows, "failed": failed, "summary": summary, "notes": notes, "files": files, "skipped": skipped}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_sparse_mtl.report", description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun dir (or any folder holding job dirs)")
    parser.add_argument("--out", default=None, help="output folder (default: the multirun dir)")
    parser.add_argument("--baselines", nargs="+", default=(), metavar="PATH",
                        help="single-task baselines for Δm: results.json files, or folders whose dense (λ=0) "
                        "single-task runs are averaged over seeds")  # fmt: skip
    args = parser.parse_args(argv)
    report = exit_on_user_error(lambda: write_report(args.multirun_dir, args.out, args.baselines))
    print(f"{len(report['rows'])} finished run(s), {len(report['failed'])} failed, "
          f"{len(report['summary'])} configuration(s)")  # fmt: skip
    for config, keys in report["notes"].items():
        print(f"kept apart: {config} (differs in non-swept keys: {', '.join(keys)})")
    for f in report["failed"]:
        print(f"FAILED {f.job}: {f.reason}")
    for name, note in report["skipped"].items():
        print(f"skipped {name}: {note}")
    for path in report["files"]:
        print(f"wrote {path}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
