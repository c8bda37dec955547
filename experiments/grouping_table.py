"""The input-vs-coupled table: MACs reached, params, ONNX Runtime speedups and mean Δ over the test metrics
against the dense λ = 0 run of equal length.

    python experiments/grouping_table.py --dense <dense results.json | report.csv:ROW> \
        --run "coupled, target 0.12"=experiments/results/grouping/runs/coupled_m0.12_s0/results.json ...

``--dense`` is a ``results.json`` or ``<report.csv>:<job>`` (a row of an earlier report, e.g. the λ = 0 job of
``experiments/results/digits_sweep/report.csv``). Prints a markdown table and writes it to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.mtl.delta_m import delta_m  # noqa: E402
from lightning_sparse_mtl.reporting.metric_info import higher_is_better, is_test_metric  # noqa: E402

SHOWN = ("test/seg/miou", "test/depth/abs_err", "test/normal/mean")


def read(spec: str) -> dict:
    """A ``results.json`` path, or ``<report.csv>:<job>`` for one row of a report."""
    if spec.endswith(".json"):
        return json.loads(Path(spec).read_text())
    path, job = spec.rsplit(":", 1)
    with open(path) as fh:
        row = next(r for r in csv.DictReader(fh) if r["job"] == job)
    return {k: float(v) for k, v in row.items() if is_test_metric(k) and v}


def row(label: str, res: dict, dense: dict) -> str:
    directions = {k: bool(higher_is_better(k)) for k in res if is_test_metric(k)}
    frac = res["pruned/macs"] / res["dense/macs"]
    n = sum(1 for k in res if is_test_metric(k) and k in dense)
    cells = [label, f"{res.get('sparsity/group_sparsity', 0):.0f}%", f"{frac:.3f} ({1 / frac:.1f}x)",
             f"{res.get('pruned/params', 0) / 1e6:.2f}M",
             *(f"{res.get(f'pruned/onnxruntime/speedup_b{b}', float('nan')):.2f}x" for b in (1, 8)),
             *(f"{res[k]:.3f}" for k in SHOWN), f"{delta_m(res, dense, directions):+.2f}% (n={n})"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense", required=True)
    parser.add_argument("--run", action="append", default=[], help="LABEL=path/to/results.json")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    dense = read(args.dense)
    head = ["run", "zero groups", "MACs fraction", "params", "ORT speedup b1", "ORT speedup b8", *SHOWN,
            "mean Δ vs dense"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| dense λ = 0 | 0% | 1.000 | — | — | — | " + " | ".join(f"{dense[k]:.3f}" for k in SHOWN) + " | 0 |")
    for spec in args.run:
        label, path = spec.rsplit("=", 1)
        lines.append(row(label, read(path), dense))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
