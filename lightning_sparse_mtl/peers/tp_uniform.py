"""The even-width arm's pieces (``method=tp_uniform``): nearest rounding and the one local ratio for a MACs goal.

Torch-Pruning's local pruning gives every dependency group (channel space) the same pruning ratio, but its
``round_to`` rounds the kept channels *down*: just above ratio 0.5 a 64-channel stem keeps 31 -> 16 channels while
a 512-channel stream keeps 255 -> 240, which is no longer even. :class:`NearestRoundPruner` rounds to the *nearest*
multiple (at least one block; a tie goes to the even number of blocks, Python's ``round``), so a group can end
slightly below ``1 - max_pruning_ratio`` of its channels. The MACs of a locally pruned net are a step function of
the ratio (widths move in blocks of ``round_to``), so :func:`uniform_ratio` finds the ratio whose MACs come nearest
the goal by bisection on throw-away copies of the net, and the real net is then pruned once, to that ratio.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from lightning_sparse_mtl.deploy.measure import count_macs


class NearestRoundPruner(tp.pruner.BasePruner):
    """``BasePruner`` whose ``round_to`` keeps the nearest multiple of ``round_to`` channels (at least one block),
    not the multiple below."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = max(round_to, round((current_channels - n_pruned) / round_to) * round_to)
        return max(current_channels - min(kept, current_channels), 0)


def prune_to_ratio_(pruner: tp.pruner.BasePruner, ratio: float, record: Callable | None = None) -> None:
    """One ``pruner.step()`` to the cumulative ratio ``ratio`` (every step of the schedule set to it); ``record``
    sees each group before it is pruned."""
    pruner.current_step = 0  # step() moves to index 1 of the per-step ratios: all set to `ratio`
    pruner.per_step_pruning_ratio = [ratio] * (pruner.iterative_steps + 1)
    with torch.enable_grad():
        for group in pruner.step(interactive=True):
            if record is not None:
                record(group, pruner.DG.is_out_channel_pruning_fn)
            group.prune()


@torch.no_grad()
def uniform_ratio(
    net: nn.Module, build: Callable[[nn.Module], tp.pruner.BasePruner], example: torch.Tensor, goal: float,
    dense_macs: int, high: float, iters: int = 14,
) -> tuple[float, float]:  # fmt: skip
    """(ratio, MACs fraction): the local pruning ratio in [0, ``high``] whose pruned copy of ``net`` comes nearest
    ``goal`` (MACs / ``dense_macs`` on ``example``, (1, 3, H, W)); ``build`` makes a pruner for a net. ``net`` is
    left untouched."""
    cache: dict[float, float] = {}

    def fraction(r: float) -> float:
        if r not in cache:
            trial = copy.deepcopy(net).eval()
            prune_to_ratio_(build(trial), r)
            cache[r] = count_macs(trial, example) / dense_macs
        return cache[r]

    low, up = 0.0, high  # invariant: fraction(low) > goal (or low = 0), fraction(up) <= goal (or up = high)
    for _ in range(iters):
        mid = (low + up) / 2
        low, up = (mid, up) if fraction(mid) > goal else (low, mid)
    # MACs do not rise with r: low is the nearest ratio above the goal, up the nearest at or below it
    best = min((low, up), key=lambda r: abs(fraction(r) - goal))
    return best, fraction(best)
