"""Cost of the sparsity method per training step, side by side in one run (interleaved).

    python experiments/bench_sparsity_overhead.py [--encoder resnet34] [--batch 8] [--size 128 256] [--steps 10]

One model (resnet34 3-task, output stride 8, AdamW) and one optimizer; the method is attached and detached
between steps, so every variant trains the same weights on the same batch, in rounds. Whole steps:
dense, Adam prox eager, Adam prox compiled (on CPU float32: the hand-written kernel of ``prox_cpu``; elsewhere
``torch.compile``), plain prox, the paper's recipe (penalty gradient + compiled Adam prox), and the Adam prox on
coupled groups (``groups="coupled"``, the heads joining the last stream's groups), compiled and eager. Because a
1-2% difference is below the noise of whole-step timings on a shared machine, each component (mask + prox,
penalty gradient, statistics) is also timed alone over many repeats, interleaved, and reported as a share of the
dense step.
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
from lightning_sparse_mtl.sparsity import GroupSparsity, sparsity_stats


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 256])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lam", type=float, default=2e-5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(args.batch, 3, h, w, generator=g),
        "seg": torch.randint(0, 13, (args.batch, h, w), generator=g),
        "depth": torch.rand(args.batch, 1, h, w, generator=g) + 0.5,
        "normal": torch.nn.functional.normalize(torch.randn(args.batch, 3, h, w, generator=g), dim=1),
    }
    tasks = build_tasks(["seg", "depth", "normal"], num_classes=13)
    net = MultiTaskNet(tasks, encoder=args.encoder, output_stride=8, head="conv")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    variants = {
        "Adam prox, eager": GroupSparsity.from_module(net.encoder, args.lam, "adam", compile=False),
        "Adam prox, compiled": GroupSparsity.from_module(net.encoder, args.lam, "adam", compile=True),
        "plain prox": GroupSparsity.from_module(net.encoder, args.lam, "plain"),
        "Adam prox + penalty grad (paper)": GroupSparsity.from_module(
            net.encoder, args.lam, "adam", penalty_grad=True, compile=True
        ),
        "coupled groups, Adam prox, compiled": GroupSparsity.from_module(
            net, args.lam, "adam", groups="coupled", example_inputs=batch["image"][:1], shared="encoder", compile=True
        ),
        "coupled groups, Adam prox, eager": GroupSparsity.from_module(
            net, args.lam, "adam", groups="coupled", example_inputs=batch["image"][:1], shared="encoder", compile=False
        ),
    }

    def step(gs: GroupSparsity | None) -> None:
        if gs is not None:
            gs.attach(opt)
        out = net(batch["image"])
        loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if gs is not None:
            gs.detach()

    for gs in [None, *variants.values(), *variants.values()]:  # warm-up: Adam state, warm starts, compilation
        step(gs)
    whole: dict[str, list[float]] = {"dense": [], **{k: [] for k in variants}}
    for _ in range(args.steps):  # interleaved rounds of whole steps
        whole["dense"].append(timed(lambda: step(None)))
        for name, gs in variants.items():
            whole[name].append(timed(lambda gs=gs: step(gs)))
    dense = statistics.median(whole["dense"])

    def method_alone(gs: GroupSparsity) -> None:  # what the hooks do in one step, without the step itself
        lam = gs.current_lambda()
        gs.mask_frozen_grads_()
        if gs.penalty_grad:
            gs.add_penalty_grad_(lam)
        gs.prox_(opt, lam)

    parts: dict[str, list[float]] = {k: [] for k in variants}
    parts["statistics (once per epoch)"] = []
    for _ in range(args.repeats):  # interleaved component timings
        for name, gs in variants.items():
            parts[name].append(timed(lambda gs=gs: method_alone(gs)))
        parts["statistics (once per epoch)"].append(timed(lambda: sparsity_stats(variants["plain prox"].groups)))
    groups = variants["plain prox"].groups
    params = sum(gr.numel for gr in groups)
    table = Table(
        title=f"{args.encoder} 3-task OS8, batch {args.batch}, {h}x{w}, {args.threads} threads, "
        f"{len(groups)} grouped layers, {params / 1e6:.1f}M grouped weights; dense step {1e3 * dense:.0f} ms"
    )
    for col in ("variant", "whole step ms (median)", "method alone ms", "method % of dense step"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    table.add_row("dense", f"{1e3 * dense:.0f}", "—", "—")
    for name in variants:
        alone = statistics.median(parts[name])
        table.add_row(
            name, f"{1e3 * statistics.median(whole[name]):.0f}", f"{1e3 * alone:.1f}", f"{100 * alone / dense:.2f}"
        )
    stats_s = statistics.median(parts["statistics (once per epoch)"])
    table.add_row("statistics (once per epoch)", "—", f"{1e3 * stats_s:.1f}", f"{100 * stats_s / dense:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
