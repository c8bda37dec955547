"""Cost of the sparsity machinery per training step (penalty gradient + prox + freeze + stats), side by side.

    python experiments/bench_sparsity_overhead.py [--encoder resnet34] [--batch 8] [--size 128 256] [--steps 10]

Times the same bare training step (resnet34 3-task model, AdamW) with and without the machinery, interleaved,
and each component alone over many repeats (a 1% difference is below the noise of whole-step timings on a
shared machine, the component timings are not). Prints a table and the overhead ratio (goal <= 1%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity.controller import GroupSparsity
from lightning_sparse_mtl.sparsity.groups import find_conv_groups
from lightning_sparse_mtl.sparsity.stats import sparsity_stats


def make(encoder: str, prox: str, lam: float):
    torch.manual_seed(0)
    tasks = build_tasks(["seg", "depth", "normal"], num_classes=13)
    net = MultiTaskNet(tasks, encoder=encoder, output_stride=8, head="conv")
    sparsity = GroupSparsity(find_conv_groups(net.encoder), lam, prox=prox)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    return tasks, net, sparsity, opt


def step(tasks, net, opt, batch, sparsity=None, lam=0.0) -> None:
    out = net(batch["image"])
    loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
    opt.zero_grad()
    loss.backward()
    if sparsity is not None:
        sparsity.add_penalty_grad_(lam)
    opt.step()
    if sparsity is not None:
        sparsity.prox_(opt, lam)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prox", default="adam", choices=["plain", "adam"])
    parser.add_argument("--lam", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(args.batch, 3, h, w, generator=g),
        "seg": torch.randint(0, 13, (args.batch, h, w), generator=g),
        "depth": torch.rand(args.batch, 1, h, w, generator=g) + 0.5,
        "normal": torch.nn.functional.normalize(torch.randn(args.batch, 3, h, w, generator=g), dim=1),
    }
    tasks, net, sparsity, opt = make(args.encoder, args.prox, args.lam)
    for _ in range(2):
        step(tasks, net, opt, batch, sparsity, args.lam)  # warm-up, creates Adam state
    dense, sparse = [], []
    for _ in range(args.steps):  # interleaved whole steps
        dense.append(timed(lambda: step(tasks, net, opt, batch), 1))
        sparse.append(timed(lambda: step(tasks, net, opt, batch, sparsity, args.lam), 1))
    step_s = statistics.median(dense)
    components = {
        "penalty gradient": timed(lambda: sparsity.add_penalty_grad_(args.lam), 20),
        f"prox ({args.prox}) + freeze": timed(lambda: sparsity.prox_(opt, args.lam), 20),
        "stats (once per epoch)": timed(lambda: sparsity_stats(sparsity.groups), 20),
    }
    params = sum(gr.weight.numel() for gr in sparsity.groups)
    table = Table(title=f"{args.encoder} 3-task, batch {args.batch}, {h}x{w}, {args.threads} threads, "
                        f"{len(sparsity.groups)} grouped layers, {params / 1e6:.1f}M grouped weights")  # fmt: skip
    table.add_column("what")
    table.add_column("ms", justify="right")
    table.add_column("% of dense step", justify="right")
    table.add_row("dense step (median)", f"{1e3 * step_s:.1f}", "100.0")
    table.add_row("sparse step (median)", f"{1e3 * statistics.median(sparse):.1f}",
                  f"{100 * statistics.median(sparse) / step_s:.1f}")  # fmt: skip
    for name, sec in components.items():
        table.add_row(name, f"{1e3 * sec:.2f}", f"{100 * sec / step_s:.2f}")
    Console(width=200).print(table)
    per_step = components["penalty gradient"] + components[f"prox ({args.prox}) + freeze"]
    print(f"per-step overhead (penalty + prox) = {100 * per_step / step_s:.2f}% of the step (goal <= 1%)")


if __name__ == "__main__":
    main()
