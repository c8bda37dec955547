"""Speed of the grouping study's trained models from their dynamic-size exports, and where the pruned time goes.

    python experiments/grouping_speed.py [--runs coupled_m0.12_s1 ...] [--sizes 288x384:1 128x256:8]

For every run of ``experiments/results/grouping/runs`` whose ``dense.onnx``/``pruned.onnx`` take any image size
(a static export is listed as skipped; ``--folder NAME=PATH`` reads a run re-pruned elsewhere): dense and pruned
timed side by side in ONNX Runtime at each size, in interleaved rounds (``bench_sizes.measure``), speedup / exact
MACs ratio. Then, per MACs budget, one run's ONNX Runtime profile at the first size
(``deploy.profile.profile_report``): time and MACs per unit, and the speedup split three ways (:func:`bounds`):
what the ops without MACs (resizes, pooling, the normal head's normalisation) cap, what the layer mix costs (the
units pruning leaves alone run below the dense model's mean MACs/s) and what the narrowed convolutions cost. The
host's load average is printed before and after: read ratios measured on a quiet host; the machine is shared.
Writes ``<out>/<name>.{md,json}``; ``--render-only`` rewrites the table from the JSON.
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
    """ONNX Runtime profile of ``folder``'s exports at one size: totals (ms, profiler sum) and per-unit ms and MACs
    (``deploy.profile.profile_report``); :func:`bounds` reads it."""
    pruned_file = load_pruned(folder / "pruned.pt")
    pruned, dense = pruned_file["model"], build_net(pruned_file["config"]).eval()
    paths = {k: str(folder / f"{k}.onnx") for k in ("dense", "pruned")}
    prof = profile_report(dense, pruned, size, threads, paths, batch=batch)["onnxruntime"]
    return {"size": list(size), "batch": batch, "dense_ms": prof["dense_total_ms"],
            "pruned_ms": prof["pruned_total_ms"], "units": prof["units"]}  # fmt: skip


def bounds(b: dict) -> dict[str, float]:
    """Speedups of a profile ``b`` (:func:`where_time_goes`): ``macs_ratio``; ``pooled``: every pruned MAC at the
    dense model's mean MACs/s plus the pruned time in ops without MACs (what those ops cap); ``per_unit``: each
    unit's pruned MACs at that unit's own dense MACs/s plus the same ops (adds the layer mix: the units pruning
    leaves alone run below the mean); ``measured``. ``measured / per_unit``: what the narrowed convolutions cost."""
    units = b["units"].values()
    dense_macs = sum(u["dense_macs"] for u in units)
    pruned_macs = sum(u["pruned_macs"] for u in units)
    free_ms = sum(u["pruned_ms"] for u in units if not u["pruned_macs"])
    rate_ms = sum(u["dense_ms"] for u in units if u["dense_macs"]) / dense_macs  # ms per MAC, dense mean
    per_unit_ms = sum(u["pruned_macs"] * u["dense_ms"] / u["dense_macs"] for u in units if u["dense_macs"])
    return {"macs_ratio": dense_macs / pruned_macs, "pooled": b["dense_ms"] / (pruned_macs * rate_ms + free_ms),
            "per_unit": b["dense_ms"] / (per_unit_ms + free_ms), "measured": b["dense_ms"] / b["pruned_ms"],
            "ms_without_macs": free_ms}  # fmt: skip


def breakdown_table(name: str, b: dict) -> str:
    """Markdown: the profile's bounds and per-unit rows (ms, MACs, pruned MACs/s relative to dense)."""
    f = bounds(b)
    r = f["macs_ratio"]
    lines = [f"**{name}** at {b['size'][0]}x{b['size'][1]}, batch {b['batch']}: dense {b['dense_ms']:.1f} ms, pruned "
             f"{b['pruned_ms']:.1f} ms (profiler sums); ops without MACs {f['ms_without_macs']:.1f} ms. Speedup / "
             f"MACs ratio {r:.2f}: every MAC at the dense mean MACs/s {f['pooled'] / r:.2f}; each unit at its own "
             f"dense MACs/s {f['per_unit'] / r:.2f}; measured {f['measured'] / r:.2f} (narrowed convolutions: "
             f"{f['measured'] / f['per_unit']:.2f} of their dense units' MACs/s, overall)",
             "", "| unit | dense ms | pruned ms | dense MMAC | pruned MMAC | pruned MACs/s vs dense |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for unit, u in sorted(b["units"].items(), key=lambda kv: -kv[1]["pruned_ms"]):
        rel = ""
        if u["dense_macs"] and u["pruned_macs"] and u["pruned_ms"] and u["dense_ms"]:
            rel = f"{(u['pruned_macs'] / u['pruned_ms']) / (u['dense_macs'] / u['dense_ms']):.2f}"
        lines.append(f"| {unit} | {u['dense_ms']:.2f} | {u['pruned_ms']:.2f} | {u['dense_macs'] / 1e6:.1f} "
                     f"| {u['pruned_macs'] / 1e6:.1f} | {rel} |")  # fmt: skip
    return "\n".join(lines)


def render(data: dict) -> str:
    """``speed.md`` from ``speed.json``'s content (``--render-only`` rewrites it without measuring)."""
    md = [f"# Speed of the grouping study's models (`{data['command']}`)", "", data["header"], "",
          table(data["rows"], first="run"), ""]  # fmt: skip
    if data["skipped"]:
        md += ["Skipped: " + "; ".join(data["skipped"]), ""]
    md += ["## Where the pruned time goes (ONNX Runtime profile, one run per budget)", ""]
    md += [breakdown_table(b["run"], b) + "\n" for b in data["breakdowns"].values()]
    return "\n".join(md)


def run_folders(runs_dir: Path, names: list[str] | None, overrides: list[str]) -> dict[str, Path]:
    """Run name -> folder holding its exports (``NAME=PATH`` in ``overrides``: a run re-pruned elsewhere)."""
    folders = {n: runs_dir / n for n in (names or sorted(p.parent.name for p in runs_dir.glob("*/pruned.onnx")))}
    for item in overrides:
        name, _, path = item.partition("=")
        folders[name] = Path(path)
    return dict(sorted(folders.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", default=str(RESULTS / "runs"))
    parser.add_argument("--runs", nargs="*", default=None, help="run names (default: every run with exports)")
    parser.add_argument(
        "--folder",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="read a run's exports from PATH (e.g. one re-pruned for a dynamic-size export)",
    )
    parser.add_argument("--sizes", nargs="+", default=["288x384:1", "128x256:8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="speed", help="file stem: <out>/<name>.md and .json")
    parser.add_argument("--note", default="", help="how the host was kept quiet (added to the header)")
    parser.add_argument("--render-only", action="store_true", help="rewrite <name>.md from <name>.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        (out / f"{args.name}.md").write_text(render(json.loads((out / f"{args.name}.json").read_text())))
        return
    torch.set_num_threads(args.threads)
    load_before, rows, skipped, breakdowns = os.getloadavg(), [], [], {}
    for name, folder in run_folders(Path(args.runs_dir), args.runs, args.folder).items():
        if not all((folder / f).is_file() for f in ("pruned.pt", "pruned.onnx", "dense.onnx")):
            skipped.append(f"{name}: no exports")
            continue
        if not dynamic_size(folder / "pruned.onnx"):
            skipped.append(f"{name}: a fixed-size export (re-prune it with output=<dir>/pruned.pt, pass --folder)")
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
    command = " ".join(["python", str(Path(__file__).relative_to(ROOT)), *(argv if argv is not None else sys.argv[1:])])
    data = {"command": command, "header": header, "rows": rows, "skipped": skipped, "breakdowns": breakdowns}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(data, indent=1))
    (out / f"{args.name}.md").write_text(render(data))
    print(render(data))


if __name__ == "__main__":
    main()
