"""Why a channel-pruned model runs below its MACs ratio: ONNX Runtime's convolution throughput against channel width.

    python experiments/bench_conv_widths.py [--size 36 48] [--threads 2] [--rounds 5]

One 3 × 3 convolution (stride 1, padding 1, in = out = width channels) on a (1, width, H, W) input — the shape of
the pruned digits net's dilated ``layer3``/``layer4`` convolutions at 288 × 384 — exported to ONNX and timed in
ONNX Runtime for each width, interleaved over rounds (median). Prints a table: width, MACs, ms, GMAC/s, and the
throughput relative to the widest layer. A pruned model whose layers shrink from 256–512 to 24–120 channels runs
at that relative throughput: its speedup is its MACs ratio times it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

WIDTHS = (16, 24, 32, 48, 64, 96, 128, 256, 512)


def session(width: int, size: tuple[int, int], threads: int) -> tuple[ort.InferenceSession, np.ndarray]:
    conv = torch.nn.Conv2d(width, width, 3, padding=1, bias=True).eval()
    x = torch.randn(1, width, *size)
    buf = io.BytesIO()
    torch.onnx.export(conv, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"]), x.numpy()


def time_once(sess: ort.InferenceSession, x: np.ndarray, min_time: float = 0.2) -> float:
    """Mean seconds per run over at least ``min_time`` seconds."""
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time or runs < 3:
        sess.run(None, {"x": x})
        runs += 1
    return elapsed / runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[36, 48])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    size = tuple(args.size)
    sessions = {w: session(w, size, args.threads) for w in WIDTHS}
    for sess, x in sessions.values():
        time_once(sess, x, 0.05)  # warm-up
    times: dict[int, list[float]] = {w: [] for w in WIDTHS}
    for _ in range(args.rounds):  # interleaved: every width once per round
        for w, (sess, x) in sessions.items():
            times[w].append(time_once(sess, x))
    widest = max(WIDTHS)
    rate = {w: size[0] * size[1] * w * w * 9 / statistics.median(times[w]) for w in WIDTHS}
    print(f"3x3 conv, input (1, C, {size[0]}, {size[1]}), ONNX Runtime {ort.__version__}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    print("| width | MACs (M) | ms | GMAC/s | throughput vs width 512 |")
    print("|---:|---:|---:|---:|---:|")
    for w in WIDTHS:
        macs = size[0] * size[1] * w * w * 9
        print(f"| {w} | {macs / 1e6:.1f} | {statistics.median(times[w]) * 1e3:.3f} | {rate[w] / 1e9:.1f} | "
              f"{rate[w] / rate[widest]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
