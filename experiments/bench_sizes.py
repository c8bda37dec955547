"""Dense vs pruned at other image sizes from one pair of dynamic-size ONNX exports (no re-export), interleaved.

    python experiments/bench_sizes.py <dir with pruned.pt, pruned.onnx, dense.onnx> [--sizes 288x384:1 128x256:8]

``<dir>`` is what ``python -m lightning_sparse_mtl.prune ckpt_path=... output=<dir>/pruned.pt`` writes; its
exports take any (B, 3, H, W). For each ``HxW:B`` the exact MACs ratio (dense / pruned, every kernel tap; and
without taps on zero padding) is counted at that size on the PyTorch models, and ONNX Runtime times both files on
the same random input, in interleaved rounds (``deploy.speed.speed_table``). Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.deploy import export as ex  # noqa: E402
from lightning_sparse_mtl.deploy.measure import count_macs  # noqa: E402
from lightning_sparse_mtl.deploy.speed import onnx_runner, speed_table  # noqa: E402
from lightning_sparse_mtl.runs.checkpoints import load_pruned  # noqa: E402
from lightning_sparse_mtl.training.module import build_net  # noqa: E402


def measure(folder: Path, sizes: list[str], threads: int = 2, rounds: int = 5, min_run_time: float = 0.2) -> list[dict]:
    """One row per ``HxW:B`` in ``sizes``: exact MACs ratios and ONNX Runtime latencies of ``folder``'s dense and
    pruned exports (interleaved rounds), speedup and speedup / MACs ratio."""
    pruned_file = load_pruned(folder / "pruned.pt")
    pruned = pruned_file["model"]
    dense = build_net(pruned_file["config"]).eval()  # same architecture, dense: MACs only (weights irrelevant)
    runners = {"onnxruntime": {k: onnx_runner(ex.onnx_session(folder / f"{k}.onnx", threads))
                               for k in ("dense", "pruned")}}  # fmt: skip
    rows = []
    for spec in sizes:
        hw, batch = spec.split(":")
        size = tuple(int(v) for v in hw.split("x"))
        one = torch.rand(1, 3, *size)
        ratio = count_macs(dense, one) / count_macs(pruned, one)
        effective = count_macs(dense, one, False) / count_macs(pruned, one, False)
        figures, _ = speed_table(runners, size, [int(batch)], threads, ratio, rounds, min_run_time, effective)
        speedup = figures[f"pruned/onnxruntime/speedup_b{batch}"]
        rows.append({"size": list(size), "batch": int(batch), "macs_ratio": ratio, "effective_macs_ratio": effective,
                     "dense_ms": figures[f"dense/onnxruntime/latency_b{batch}_ms"],
                     "pruned_ms": figures[f"pruned/onnxruntime/latency_b{batch}_ms"], "speedup": speedup,
                     "speedup_iqr": figures[f"pruned/onnxruntime/speedup_iqr_b{batch}"],
                     "speedup_over_macs_ratio": speedup / ratio})  # fmt: skip
    return rows


def table(rows: list[dict], first: str = "") -> str:
    """Markdown table of :func:`measure`'s rows (``first``: an optional leading column, taken from ``row["run"]``)."""
    head = f"| {first} " if first else ""
    lines = [head + "| size | batch | MACs ratio (effective) | dense ms | pruned ms | ORT speedup (IQR) "
                    "| speedup / MACs ratio |",
             ("|---" if first else "") + "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratios = f"{r['macs_ratio']:.2f} ({r['effective_macs_ratio']:.2f})"
        lead = f"| {r['run']} " if first else ""
        lines.append(f"{lead}| {r['size'][0]}x{r['size'][1]} | {r['batch']} | {ratios} "
                     f"| {r['dense_ms']:.1f} | {r['pruned_ms']:.1f} | {r['speedup']:.2f} ({r['speedup_iqr']:.2f}) "
                     f"| {r['speedup_over_macs_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--sizes", nargs="+", default=["288x384:1", "128x256:8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = measure(Path(args.folder), args.sizes, args.threads, args.rounds, args.min_run_time)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
