"""Zero groups -> MACs per backbone family: how much a given group sparsity frees under the consumer rule.

For each encoder: the 3-task MultiTaskNet (conv heads, hidden 64, output stride 8), random init; a random
``--frac`` of the input groups of every grouped layer is set to exactly zero (the same fraction per layer),
then ``prune_zero_channels`` removes what nothing reads (outputs verified). Prints one Markdown row per
encoder: groups, zero groups, removed channels, MACs ratio dense/pruned (whole net and encoder only), the
fraction of encoder parameters left. Deterministic (seeded); MACs by ``FlopCounterMode``.

    PYTHONPATH=. python experiments/backbone_pruning_table.py --size 64 --frac 0.5 \\
        > experiments/results/backbone_pruning.md
"""

from __future__ import annotations

import argparse
import copy

import torch

from lightning_sparse_mtl.deploy.measure import count_macs, count_params
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity.groups import find_conv_groups
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels

ENCODERS = [  # (label, encoder, group Linear layers too)
    ("resnet18", "resnet18", False),
    ("resnet50", "resnet50", False),
    ("resnext50_32x4d", "resnext50_32x4d", False),
    ("mobilenet_v2", "mobilenet_v2", False),
    ("efficientnet-b0", "efficientnet-b0", False),
    ("timm-efficientnet-b0", "timm-efficientnet-b0", False),
    ("tu-mobilenetv3_small_050", "tu-mobilenetv3_small_050", False),
    ("tu-regnety_002", "tu-regnety_002", False),
    ("tu-convnext_atto", "tu-convnext_atto", False),
    ("mit_b0 (convs only)", "mit_b0", False),
    ("mit_b0 (+ Linear groups)", "mit_b0", True),
]


@torch.no_grad()
def row(label: str, encoder: str, linear: bool, size: int, frac: float, seed: int) -> str:
    torch.manual_seed(seed)
    net = MultiTaskNet(build_tasks(["seg", "depth", "normal"], 11), encoder=encoder, output_stride=8).eval()
    groups = find_conv_groups(net.encoder, prefix="encoder.", linear=linear)
    gen = torch.Generator().manual_seed(seed)
    zero = total = 0
    for g in groups:
        mask = torch.rand(g.num_groups, generator=gen) < frac
        g.weight[:, mask] = 0
        zero, total = zero + int(mask.sum()), total + g.num_groups
    x = torch.rand(1, 3, size, size)
    dense_enc_macs, dense_enc_params = count_macs(net.encoder, x), count_params(net.encoder)
    pruned = copy.deepcopy(net)
    report = prune_zero_channels(pruned, x, ignored_layers=pruned.head_output_layers())
    enc_macs, enc_params = count_macs(pruned.encoder, x), count_params(pruned.encoder)
    removed = sum(report.channels_removed.values())
    return (
        f"| {label} | {total} | {100 * zero / max(total, 1):.0f}% | {removed} | "
        f"{report.macs_before / report.macs_after:.2f} | {dense_enc_macs / enc_macs:.2f} | "
        f"{enc_params / dense_enc_params:.2f} | {report.max_abs_diff:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="square input size")
    parser.add_argument("--frac", type=float, default=0.5, help="fraction of zero input groups per grouped layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"input 1x3x{args.size}x{args.size}, {100 * args.frac:.0f}% random zero input groups per grouped layer, "
          f"output stride 8, seed {args.seed}\n")  # fmt: skip
    print("| encoder | groups | zero groups | channels removed | MACs ratio dense/pruned (net) | MACs ratio (encoder) "
          "| encoder params left | max abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, encoder, linear in ENCODERS:
        if args.only is None or label in args.only or encoder in args.only:
            print(row(label, encoder, linear, args.size, args.frac, args.seed), flush=True)


if __name__ == "__main__":
    main()
