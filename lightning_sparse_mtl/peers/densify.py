"""Which channels of the dense architecture a physically pruned net kept, and the net mapped back onto it.

Torch-Pruning removes channels in place, so after training the pruned net has no zero channel left for the
project's prune -> export -> speed path to find. :class:`KeptChannels` records, for every layer dimension
Torch-Pruning touched, which original channels survive; :func:`dense_form` writes the pruned weights into a net of
the dense architecture with exact zeros where channels went (every weight of a removed channel: producer rows, BN
gamma/beta, consumer slices). That net computes the same outputs as the pruned one, and the consumer-rule prune of
``deploy.compact.prune_and_measure`` removes exactly those channels again, measured against the dense architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_sparse_mtl.deploy.inference import compare

ATOL = 1e-4


class KeptChannels:
    """``{(module name, "out"|"in"): [original channel index, ...]}`` for the dimensions pruning touched."""

    def __init__(self, net: nn.Module) -> None:
        self.names = {m: n for n, m in net.named_modules()}
        self.kept: dict[tuple[str, str], list[int]] = {}

    @staticmethod
    def _size(module: nn.Module, side: str) -> int:
        if isinstance(module, nn.modules.batchnorm._NormBase):
            return module.num_features
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.out_channels if side == "out" else module.in_channels
        if isinstance(module, nn.Linear):
            return module.out_features if side == "out" else module.in_features
        raise TypeError(f"cannot track the channels of {type(module).__name__}")

    def record(self, group: Any, is_out: Any) -> None:
        """Before ``group.prune()``: drop the group's channel indices (current numbering) from the kept lists.

        ``group``: a Torch-Pruning ``Group`` (iterates ``(dep, idxs)``); ``is_out(handler)``: whether a handler
        removes out-channels (``DependencyGraph.is_out_channel_pruning_fn``).
        """
        done: set[tuple[str, str]] = set()
        for dep, idxs in group:
            module = dep.target.module
            name = self.names.get(module) if isinstance(module, nn.Module) else None
            if name is None or not any(True for _ in module.parameters(recurse=False)):
                continue  # graph ops (add, concat, ...) and parameter-free layers carry no weights
            side = "out" if is_out(dep.handler) else "in"
            key = (name, side)
            if key in done:
                continue
            done.add(key)
            current = self.kept.get(key) or list(range(self._size(module, side)))
            gone = {int(i) for i in idxs}
            self.kept[key] = [c for i, c in enumerate(current) if i not in gone]

    def to_dict(self) -> dict[str, dict[str, int]]:
        """``{module name: {"out": kept, "in": kept}}`` counts (for results.json)."""
        out: dict[str, dict[str, int]] = {}
        for (name, side), kept in sorted(self.kept.items()):
            out.setdefault(name, {})[side] = len(kept)
        return out


def _scatter(dense: torch.Tensor, pruned: torch.Tensor, out_idx: list[int] | None, in_idx: list[int] | None) -> None:
    """Write ``pruned`` into ``dense`` at rows ``out_idx`` (dim 0) and columns ``in_idx`` (dim 1), in place."""
    if dense.shape == pruned.shape:
        dense.copy_(pruned)
        return
    rows = None
    if out_idx is not None and dense.shape[0] != pruned.shape[0]:
        rows = torch.as_tensor(out_idx, device=dense.device)
    cols = None
    if in_idx is not None and dense.dim() > 1 and dense.shape[1] != pruned.shape[1]:
        cols = torch.as_tensor(in_idx, device=dense.device)
    if rows is not None and cols is not None:
        dense[rows[:, None], cols] = pruned
    elif rows is not None:
        dense[rows] = pruned
    elif cols is not None:
        dense[:, cols] = pruned
    else:
        raise RuntimeError("no kept-channel record for a dimension that changed")


@torch.no_grad()
def dense_form(pruned: nn.Module, fresh: nn.Module, kept: KeptChannels, example: torch.Tensor) -> nn.Module:
    """``fresh`` (a net of the dense architecture) holding ``pruned``'s weights, exact zeros where channels went.

    Verified on ``example`` (N, 3, H, W) in eval mode: the outputs equal ``pruned``'s within 1e-4, else RuntimeError.
    """
    fresh_modules = dict(fresh.named_modules())
    for name, module in pruned.named_modules():
        target = fresh_modules[name]
        out_idx, in_idx = kept.kept.get((name, "out")), kept.kept.get((name, "in"))
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for key, value in tensors:
            dense = getattr(target, key)
            if dense.shape != value.shape:
                dense.fill_(1.0 if key == "running_var" else 0.0)  # removed channels: zero weights, unit variance
            try:
                _scatter(dense, value.to(dense.dtype), out_idx, in_idx)
            except (RuntimeError, IndexError) as err:
                raise RuntimeError(f"{name}.{key}: pruned {tuple(value.shape)} does not map onto dense "
                                   f"{tuple(dense.shape)}: {err}") from None  # fmt: skip
    diff = compare(pruned, fresh, example)
    if not diff <= ATOL:
        raise RuntimeError(f"the dense form of the pruned net differs from it by {diff:.3g} (> {ATOL})")
    return fresh
