"""Uniform-width copies of a trained net at given MACs budgets: the speed reference for learned sparsity.

    python experiments/uniform_width_copies.py experiments/results/grouping/runs/coupled_m0.12_s1/pruned.pt \
        --budgets 0.25 0.12 0.08 --out /tmp/uniform
    python experiments/grouping_speed.py --runs coupled_m0.25_s1 coupled_m0.12_s1 coupled_m0.08_s0 \
        --folder uniform_m0.25=/tmp/uniform/uniform_m0.25 ... --name speed_uniform

The architecture comes from a pruned file's config (its dense net, fresh weights: speed does not depend on the
values). Every coupled channel space of the shared encoder (the groups ``sparsity.groups=coupled`` trains, with the
config's ``coupled_heads`` and ``exclude``) keeps the same fraction of its channels, the first ones, rounded to a
multiple of ``round_to``; the rest are zeroed (their whole groups) and pruned. The fraction
is chosen per budget so that the MACs the pruned model keeps (``MacsMeter``, the training resolution, the count
``sparsity.target_macs`` steers) come nearest the budget. Each copy is then pruned, exported and saved exactly as a
trained run (``deploy.compact.prune_and_measure``: ``<out>/uniform_m<budget>/{pruned.pt,pruned.onnx,dense.onnx}``,
dynamic image size), so ``grouping_speed.py --folder`` times it beside the trained models: a uniformly narrowed net
is the even-width shape runtime-friendly pruning aims at: a reference for the trained models' speedup / MACs ratio
(one width per budget; ``<folder>/uniform.json`` records the width fraction, the MACs reached and ``round_to``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.data.datamodule import input_size_of  # noqa: E402
from lightning_sparse_mtl.deploy.compact import prune_and_measure  # noqa: E402
from lightning_sparse_mtl.models.build import build_net  # noqa: E402
from lightning_sparse_mtl.runs.checkpoints import load_pruned  # noqa: E402
from lightning_sparse_mtl.sparsity.costs import MacsMeter  # noqa: E402
from lightning_sparse_mtl.sparsity.coupled import CoupledGroup, find_coupled_groups  # noqa: E402


def kept_width(channels: int, fraction: float, round_to: int) -> int:
    """Channels a space of ``channels`` keeps at ``fraction``: a multiple of ``round_to`` (at least one block), at
    most ``channels`` (all of them at ``fraction >= 1``)."""
    if fraction >= 1:
        return channels
    blocks = max(1, round(channels * fraction / round_to))
    return min(channels, blocks * round_to)


@torch.no_grad()
def zero_uniform(groups: list[CoupledGroup], fraction: float, round_to: int = 8) -> list[int]:
    """Zero, in place, every group of each space beyond its first :func:`kept_width` of the space's grouped
    channels (all of the group's slices: readers' input slices, producer rows, BN scale and shift; a channel the
    grouping leaves out is never zeroed). Returns the kept grouped channels per space, in ``groups`` order."""
    kept = []
    for g in groups:
        k = kept_width(g.num_groups, fraction, round_to)
        for p in g.pieces:
            drop = p.index[p.channel >= k]
            if len(drop):
                p.param.data.index_fill_(p.dim, drop.to(p.param.device), 0.0)
        kept.append(k)
    return kept


def uniform_copy(cfg: dict, budget: float, round_to: int = 8, seed: int = 0) -> tuple[nn.Module, float, float]:
    """(net, fraction, MACs fraction): a fresh net of ``cfg`` with the uniform fraction of channels zeroed whose
    pruned MACs (at the training size, per ``MacsMeter``) come nearest ``budget``."""
    torch.manual_seed(seed)
    net = build_net(cfg).eval()
    example = torch.rand(1, 3, *input_size_of(cfg))
    sp = cfg.get("sparsity") or {}
    heads = bool(sp.get("coupled_heads", True))
    groups = find_coupled_groups(net, example, shared="encoder", coupled_heads=heads, exclude=sp.get("exclude") or ())
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    meter = MacsMeter(net, example, net.head_output_layers())
    cache: dict[int, float] = {}

    def reached(step: int) -> float:  # MACs fraction at width fraction step / 100 (non-decreasing in step)
        if step not in cache:
            net.load_state_dict(reference)
            zero_uniform(groups, step / 100, round_to)
            cache[step] = meter.macs_fraction()
        return cache[step]

    low, high = 4, 100  # bisection: the first step whose MACs fraction reaches the budget, or the step below it
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if reached(mid) < budget else (low, mid)
    step = min((s for s in (low - 1, low) if s >= 4), key=lambda s: abs(reached(s) - budget))
    best = (step / 100, reached(step))
    net.load_state_dict(reference)
    zero_uniform(groups, best[0], round_to)
    return net, best[0], best[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pruned_file", help="a pruned.pt whose config gives the architecture (e.g. a grouping run)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.12, 0.08])
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = load_pruned(args.pruned_file)["config"]
    for budget in args.budgets:
        net, fraction, reached = uniform_copy(cfg, budget, args.round_to)
        folder = Path(args.out) / f"uniform_m{budget:g}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"budget {budget:g}: every coupled space at {fraction:.2f} of its channels -> MACs {reached:.3f}")
        module = SimpleNamespace(net=net, cfg=cfg)
        prune_and_measure(module, folder / "pruned.pt", batch_sizes=(1,), repeats=1, round_to=args.round_to,
                          profile=False)  # fmt: skip
        made = {"source": str(args.pruned_file), "budget": budget, "width_fraction": fraction,
                "macs_fraction": reached, "round_to": args.round_to}  # fmt: skip
        (folder / "uniform.json").write_text(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
