"""Target runs (``sparsity.target`` / ``target_macs`` / ``group_weight``) against a dense run of equal length.

    python experiments/target_table.py --dense experiments/results/digits_sweep/report.csv:lambda=0 \
        RUN_DIR=LABEL [RUN_DIR=LABEL ...] [--out table.md]

``--dense``: a results.json, or ``<report.csv>:<column>=<value>`` (the row of a report whose column has that
value). Per run: exact-zero group fraction, pruned/dense MACs (exact consumer-rule pruning, the prune report's
count), final λ, the pruned model's best-runtime speedup at batch 8 (its own prune step), every test metric,
and the sign-corrected mean / worst relative change against the dense run (positive = better; Δm with the
dense run as the baseline).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.mtl.delta_m import delta_m, is_metric_key  # noqa: E402
from lightning_sparse_mtl.reporting.metric_info import higher_is_better  # noqa: E402


def dense_reference(spec: str) -> dict[str, float]:
    """The dense run's test metrics from a results.json or ``<report.csv>:<column>=<value>``."""
    path, _, select = spec.partition(":")
    if not select:
        return {k: v for k, v in json.loads(Path(path).read_text()).items() if is_metric_key(k)}
    column, _, value = select.partition("=")
    for row in csv.DictReader(open(path)):
        if row.get(column) not in (None, "") and float(row[column]) == float(value):
            return {k: float(v) for k, v in row.items() if is_metric_key(k) and v not in (None, "")}
    raise SystemExit(f"no row of {path} has {column}={value}")


def relative_changes(run: dict, dense: dict[str, float]) -> dict[str, float]:
    """``{metric: sign-corrected relative change in %}`` (positive = better than dense)."""
    out = {}
    for key, base in dense.items():
        if key in run and base:
            sign = 1.0 if higher_is_better(key) else -1.0
            out[key] = sign * (run[key] - base) / abs(base) * 100.0
    return out


def row(run_dir: Path, label: str, dense: dict[str, float]) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    changes = relative_changes(res, dense)
    return {
        "run": label,
        "target": res.get("sparsity/target") or {},
        "group_sparsity_%": res["sparsity/group_sparsity"],
        "macs_fraction": res["pruned/macs"] / res["dense/macs"],
        "final_lambda": res.get("sparsity/final_lambda", res.get("lambda")),
        "speedup_b8": res.get("pruned/best_runtime_speedup"),
        "runtime": res.get("pruned/best_runtime"),
        "eager_b8_ms": (res.get("dense/eager/latency_b8_ms"), res.get("pruned/eager/latency_b8_ms")),
        "onnx_b8_ms": (res.get("dense/onnxruntime/latency_b8_ms"), res.get("pruned/onnxruntime/latency_b8_ms")),
        "metrics": {k: res[k] for k in dense if k in res},
        "mean_change_%": delta_m(res, dense, {k: bool(higher_is_better(k)) for k in dense}),
        "worst_change_%": min(changes.values()),
        "worst_metric": min(changes, key=changes.get),
    }


def markdown(rows: list[dict], dense: dict[str, float]) -> str:
    keys = list(dense)
    short = [k.split("/", 1)[1] for k in keys]
    head = ["run", "zero groups", "pruned/dense MACs", "final λ", "ONNX Runtime b8 dense → pruned ms (speedup)",
            *short, "mean Δ", "worst Δ"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| dense (λ = 0) | 0% | 1 | 0 | — | " + " | ".join(f"{dense[k]:.4g}" for k in keys) + " | — | — |")
    for r in rows:
        d, p = r["onnx_b8_ms"]
        speed = f"{d:.1f} → {p:.1f} ({d / p:.2f}×)" if d and p else "—"
        cells = [r["run"], f"{r['group_sparsity_%']:.1f}%", f"{r['macs_fraction']:.3f}", f"{r['final_lambda']:.3g}",
                 speed, *(f"{r['metrics'][k]:.4g}" for k in keys), f"{r['mean_change_%']:+.2f}%",
                 f"{r['worst_change_%']:+.2f}% ({r['worst_metric'].split('/', 1)[1]})"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense", required=True)
    parser.add_argument("--out", default=None)
    parser.add_argument("runs", nargs="+", help="RUN_DIR=LABEL")
    args = parser.parse_args(argv)
    dense = dense_reference(args.dense)
    rows = [row(Path(p), label or Path(p).name, dense) for p, _, label in (s.partition("=") for s in args.runs)]
    text = markdown(rows, dense)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
