"""Trained coupled models with every channel space's live width rounded *down* to a multiple of 16: a speed probe.

    python experiments/snap_widths.py experiments/results/grouping/runs/coupled_m0.25_s1/checkpoints/last.ckpt \
        --out /tmp/snap/coupled_m0.25_s1_d16
    python experiments/grouping_speed.py --runs coupled_m0.25_s1 --folder d16_m0.25_s1=/tmp/snap/coupled_m0.25_s1_d16 \
        --name speed_snap16

Each coupled channel space of the checkpoint's net (the groups ``sparsity.groups=coupled`` trained) keeps its
``k`` nonzero channels rounded down to a multiple of ``--multiple`` (spaces with fewer than one block are left as
they are): the weakest nonzero groups (smallest Euclidean norm, the quantity the prox thresholds) are zeroed,
whole. Then the net is pruned (``round_to`` = the multiple), exported and saved like a trained run
(``deploy.compact.prune_and_measure``), so ``grouping_speed.py --folder`` times it beside the unrounded model.
Zeroing live channels changes the outputs: this is a speed probe (are widths in whole AVX-512 blocks faster per
MAC?), not a model to deploy without fine-tuning. ``<out>/snap.json``: per space (dense, live, kept) and the MACs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.data.datamodule import input_size_of  # noqa: E402
from lightning_sparse_mtl.deploy.compact import prune_and_measure  # noqa: E402
from lightning_sparse_mtl.runs.checkpoints import load_module  # noqa: E402
from lightning_sparse_mtl.sparsity.costs import MacsMeter  # noqa: E402
from lightning_sparse_mtl.sparsity.coupled import CoupledGroup, find_coupled_groups  # noqa: E402
from lightning_sparse_mtl.sparsity.coupled_prox import coupled_norms  # noqa: E402


def snapped_width(live: int, multiple: int) -> int:
    """Live channels kept: ``live`` rounded down to a multiple of ``multiple`` (unchanged below one block)."""
    return live if live < multiple else live - live % multiple


@torch.no_grad()
def snap_down_(groups: list[CoupledGroup], multiple: int) -> list[tuple[str, int, int, int]]:
    """Zero, in place, each space's weakest nonzero groups beyond :func:`snapped_width`; (space, channels, live,
    kept) per space."""
    rows = []
    for g in groups:
        norms = coupled_norms(g).double()
        live = int((norms > 0).sum())
        kept = snapped_width(live, multiple)
        drop = torch.argsort(torch.where(norms > 0, norms, torch.inf))[: live - kept]
        for p in g.pieces:
            hit = torch.isin(p.channel, drop.to(p.channel.device))
            if hit.any():
                p.param.data.index_fill_(p.dim, p.index[hit].to(p.param.device), 0.0)
        rows.append((g.name, g.num_groups, live, kept))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a coupled run's checkpoints/last.ckpt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--multiple", type=int, default=16)
    args = parser.parse_args(argv)
    if args.multiple < 1:
        parser.error(f"--multiple must be an integer >= 1, got {args.multiple}")
    module = load_module(args.checkpoint)
    net, cfg = module.net.eval(), module.cfg
    example = torch.rand(1, 3, *input_size_of(cfg))
    sp = cfg.get("sparsity") or {}
    groups = find_coupled_groups(net, example, shared="encoder", coupled_heads=bool(sp.get("coupled_heads", True)),
                                 exclude=sp.get("exclude") or ())  # fmt: skip
    meter = MacsMeter(net, example, net.head_output_layers())
    before = meter.macs_fraction()
    rows = snap_down_(groups, args.multiple)
    after = meter.macs_fraction()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"MACs fraction {before:.4f} -> {after:.4f}; per space (channels, live, kept): {rows}")
    prune_and_measure(SimpleNamespace(net=net, cfg=cfg), out / "pruned.pt", batch_sizes=(1,), repeats=1,
                      round_to=args.multiple, profile=False)  # fmt: skip
    made = {"checkpoint": args.checkpoint, "multiple": args.multiple, "macs_before": before, "macs_after": after,
            "spaces": rows}  # fmt: skip
    (out / "snap.json").write_text(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
