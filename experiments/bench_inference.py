"""Dense vs physically pruned inference: MACs ratio, latency speedup and their quotient, side by side.

    python experiments/bench_inference.py [--size 128 256] [--threads 2] [--repeats 10] [--ckpt <run>/last.ckpt]

Models: resnet18/34/50 3-task models (seg 13, depth, normal; conv heads) at output stride 32, and resnet50 at
output stride 8 (dilated, the seed's setting), with 30/50/70% of the encoder's input groups set to exact zero
at random; with --ckpt also the sparsity of a real training run (its own model and input size).
Goal: latency speedup >= 0.85 x MACs ratio at batch 1 and 8 on CPU.
"""

from __future__ import annotations

import argparse
import copy

import torch
from rich.console import Console
from rich.table import Table

from lightning_sparse_mtl.deploy.compact import input_size_of, latency_table
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity.groups import find_conv_groups
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels

MODELS = [("resnet18", 32), ("resnet34", 32), ("resnet50", 32), ("resnet50", 8)]


@torch.no_grad()
def zero_random_groups(net: torch.nn.Module, fraction: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for group in find_conv_groups(net.encoder):
        n = group.num_groups
        group.weight[:, torch.randperm(n, generator=g)[: int(fraction * n)]] = 0


def measure(name: str, dense: torch.nn.Module, size: tuple[int, int], args) -> list[str]:
    dense = dense.eval()
    pruned = copy.deepcopy(dense)
    prune_zero_channels(pruned, torch.rand(1, 3, *size), ignored_layers=pruned.head_output_layers())
    one = torch.rand(1, 3, *size)
    macs_ratio = count_macs(dense, one) / count_macs(pruned, one)
    lat = latency_table(dense, pruned, size, (1, 8), args.repeats, args.threads)
    row = [name, f"{macs_ratio:.2f}"]
    for b in (1, 8):
        speedup = lat[f"pruned/speedup_b{b}"]
        row += [f"{lat[f'dense/latency_b{b}_ms']:.1f} / {lat[f'pruned/latency_b{b}_ms']:.1f}", f"{speedup:.2f}",
                f"{speedup / macs_ratio:.2f}"]  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.3, 0.5, 0.7])
    parser.add_argument("--models", nargs="*", default=[f"{e}:{o}" for e, o in MODELS])
    parser.add_argument("--ckpt", default=None, help="a training checkpoint whose real sparsity is measured too")
    args = parser.parse_args()
    size = tuple(args.size)
    table = Table(title=f"dense vs pruned, CPU, {args.threads} threads, input {size[0]}x{size[1]} "
                        f"(latency median of 3 alternating rounds x {args.repeats})")  # fmt: skip
    for col in ("model / zero groups", "MACs ratio", "b1 ms dense / pruned", "b1 speedup", "b1 speedup/MACs",
                "b8 ms dense / pruned", "b8 speedup", "b8 speedup/MACs"):  # fmt: skip
        table.add_column(col, justify="left" if col.startswith("model") else "right")
    tasks = build_tasks(["seg", "depth", "normal"], num_classes=13)
    for spec in args.models:
        encoder, os_ = spec.split(":")
        for fraction in args.fractions:
            torch.manual_seed(0)
            net = MultiTaskNet(tasks, encoder=encoder, output_stride=int(os_), head="conv")
            zero_random_groups(net, fraction)
            table.add_row(*measure(f"{encoder} OS{os_} / {fraction:.0%} random", net, size, args))
    if args.ckpt:
        from lightning_sparse_mtl.runs.checkpoints import load_module
        from lightning_sparse_mtl.sparsity.stats import sparsity_stats

        module = load_module(args.ckpt)
        pct = sparsity_stats(module.sparsity.groups)["group_sparsity"]
        label = f"{module.cfg['model']['encoder']} OS{module.cfg['model']['output_stride']} / {pct:.0f}% trained"
        table.add_row(*measure(label, module.net, input_size_of(module.cfg), args))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
