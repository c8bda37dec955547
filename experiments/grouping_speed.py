"""Speed of the grouping study's trained models from their dynamic-size exports, and where the pruned time goes.

    python experiments/grouping_speed.py [--runs coupled_m0.12_s1 ...] [--sizes 288x384:1 128x256:8]

For every run of ``experiments/results/grouping/runs`` whose ``dense.onnx``/``pruned.onnx`` take any image size
(a static export is listed as skipped): dense and pruned timed side by side in ONNX Runtime at each size, in
interleaved rounds (``bench_sizes.measure``), speedup / exact MACs ratio. Then, per MACs budget, one run's ONNX
Runtime profile at the first size (``deploy.profile.profile_report``): time per unit, and the speedup the pruned
model would reach if every convolution ran at the dense model's MACs/s (``conv_bound``) — what narrow layers cost
(``speedup`` vs ``conv_bound``) and what the ops without MACs (resizes, pooling, the output heads' arithmetic) cap
(``conv_bound`` vs the MACs ratio). The host's load average is printed before and after: read ratios measured on
a quiet host (load < 0.5); the machine is shared. Writes ``speed.md`` and ``speed.json`` next to the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from bench_sizes import measure, table  # noqa: E402

from lightning_sparse_mtl.deploy.profile import profile_report  # noqa: E402
from lightning_sparse_mtl.runs.checkpoints import load_pruned  # noqa: E402
from lightning_sparse_mtl.training.module import build_net  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "grouping"


def dynamic_size(onnx_path: Path) -> bool:
    """Whether the export's image input takes any height and width (named, not fixed, dims 2 and 3)."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return all(d.dim_param for d in list(dims)[2:])


def where_time_goes(folder: Path, size: tuple[int, int], batch: int, threads: int) -> dict:
    """ONNX Runtime profile of ``folder``'s exports: totals, per-unit ms and MACs, and ``conv_bound``: dense total
    / (pruned MACs at the dense model's MACs/s + the pruned model's time in units without MACs)."""
    pruned_file = load_pruned(folder / "pruned.pt")
    pruned, dense = pruned_file["model"], build_net(pruned_file["config"]).eval()
    paths = {k: str(folder / f"{k}.onnx") for k in ("dense", "pruned")}
    prof = profile_report(dense, pruned, size, threads, paths, batch=batch)["onnxruntime"]
    units = prof["units"]
    dense_macs = sum(u["dense_macs"] for u in units.values())
    pruned_macs = sum(u["pruned_macs"] for u in units.values())
    dense_mac_ms = sum(u["dense_ms"] for u in units.values() if u["dense_macs"])
    free_ms = sum(u["pruned_ms"] for u in units.values() if not u["pruned_macs"])
    at_dense_rate = pruned_macs * dense_mac_ms / dense_macs
    dense_ms, pruned_ms = prof["dense_total_ms"], prof["pruned_total_ms"]
    return {"size": list(size), "batch": batch, "dense_ms": dense_ms, "pruned_ms": pruned_ms,
            "macs_ratio": dense_macs / pruned_macs, "speedup": dense_ms / pruned_ms,
            "conv_bound": dense_ms / (at_dense_rate + free_ms), "pruned_ms_without_macs": free_ms,
            "units": units}  # fmt: skip


def breakdown_table(name: str, b: dict) -> str:
    """Markdown: the profile's totals and per-unit rows (ms, MACs, pruned MACs/s relative to dense)."""
    lines = [f"**{name}** at {b['size'][0]}x{b['size'][1]}, batch {b['batch']}: dense {b['dense_ms']:.1f} ms, pruned "
             f"{b['pruned_ms']:.1f} ms (profiler sum), speedup {b['speedup']:.2f} of MACs ratio {b['macs_ratio']:.2f} "
             f"({b['speedup'] / b['macs_ratio']:.2f}); at the dense MACs/s in every conv: {b['conv_bound']:.2f} "
             f"({b['conv_bound'] / b['macs_ratio']:.2f}); ops without MACs: {b['pruned_ms_without_macs']:.1f} ms",
             "", "| unit | dense ms | pruned ms | dense MMAC | pruned MMAC | pruned MACs/s vs dense |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for unit, u in sorted(b["units"].items(), key=lambda kv: -kv[1]["pruned_ms"]):
        rel = ""
        if u["dense_macs"] and u["pruned_macs"] and u["pruned_ms"] and u["dense_ms"]:
            rel = f"{(u['pruned_macs'] / u['pruned_ms']) / (u['dense_macs'] / u['dense_ms']):.2f}"
        lines.append(f"| {unit} | {u['dense_ms']:.2f} | {u['pruned_ms']:.2f} | {u['dense_macs'] / 1e6:.1f} "
                     f"| {u['pruned_macs'] / 1e6:.1f} | {rel} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", default=str(RESULTS / "runs"))
    parser.add_argument("--runs", nargs="*", default=None, help="run names (default: every run with exports)")
    parser.add_argument("--sizes", nargs="+", default=["288x384:1", "128x256:8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--note", default="", help="how the host was kept quiet (added to the header)")
    args = parser.parse_args(argv)
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    names = args.runs or sorted(p.parent.name for p in runs_dir.glob("*/pruned.onnx"))
    torch.set_num_threads(args.threads)
    load_before, rows, skipped, breakdowns = os.getloadavg(), [], [], {}
    for name in names:
        folder = runs_dir / name
        if not all((folder / f).is_file() for f in ("pruned.pt", "pruned.onnx", "dense.onnx")):
            skipped.append(f"{name}: no exports")
            continue
        if not dynamic_size(folder / "pruned.onnx"):
            skipped.append(f"{name}: a fixed-size export (re-prune it to get a dynamic one)")
            continue
        rows += [{"run": name, **r} for r in measure(folder, args.sizes, args.threads, args.rounds, args.min_run_time)]
        budget = name.rsplit("_s", 1)[0]
        if budget not in breakdowns:
            hw, batch = args.sizes[0].split(":")
            size = tuple(int(v) for v in hw.split("x"))
            breakdowns[budget] = {"run": name, **where_time_goes(folder, size, int(batch), args.threads)}
        print(table(rows[-len(args.sizes) :], first="run").split("\n", 2)[-1], flush=True)
    load_after = os.getloadavg()
    import onnxruntime

    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.processor() or platform.machine()}, ONNX "
              f"Runtime {onnxruntime.__version__}, {args.threads} threads, {args.rounds} interleaved rounds; load "
              f"average (1 min, it lags) {load_before[0]:.2f} before, {load_after[0]:.2f} after. {args.note}".strip()
    )  # fmt: skip
    md = [f"# Speed of the grouping study's models (`python {Path(__file__).relative_to(ROOT)}`)", "", header, "",
          table(rows, first="run"), ""]  # fmt: skip
    if skipped:
        md += ["Skipped: " + "; ".join(skipped), ""]
    md += ["## Where the pruned time goes (ONNX Runtime profile, one run per budget)", ""]
    for b in breakdowns.values():
        md += [breakdown_table(b["run"], b), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text("\n".join(md))
    (out / "speed.json").write_text(json.dumps({"header": header, "rows": rows, "skipped": skipped,
                                                "breakdowns": breakdowns}, indent=1))  # fmt: skip
    print("\n".join(md))


if __name__ == "__main__":
    main()
