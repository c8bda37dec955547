"""What a group costs: cost-aware group weights and the exact MACs fraction the pruned model would save.

Group weights (``sparsity.group_weight``):
  - ``sqrt_size``: the seed's ``sqrt(p_g)``, ``p_g = O*k*k`` (the group's number of weights).
  - ``macs``: proportional to the multiply-accumulates that removing input channel ``c`` saves in the layer
    that reads it (coupled groups: in every layer that reads or writes the channel, :func:`coupled_group_macs`),
    ``O * k*k * H_out*W_out / groups`` at the training resolution (shapes from one traced
    forward). They are rescaled so that their sum over all groups equals the sum of ``sqrt(p_g)``: lambda keeps
    its order of magnitude, only the split across layers changes (towards high-resolution layers).

:class:`MacsMeter` reads the MACs of the model that :func:`~lightning_sparse_mtl.sparsity.pruning.prune_zero_channels`
would produce (exact consumer rule, the same count as the prune report, without pruning anything). The
dependency graph and its groups are built once; each reading only inspects the current weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch_pruning import ops

from lightning_sparse_mtl.core.errors import unknown_name
from lightning_sparse_mtl.deploy.measure import _call
from lightning_sparse_mtl.sparsity.channel_ops import is_depthwise, read_mask
from lightning_sparse_mtl.sparsity.coupled import CoupledGroup
from lightning_sparse_mtl.sparsity.groups import ConvGroup
from lightning_sparse_mtl.sparsity.pruning import _group_keep_mask, build_graph

GROUP_WEIGHTS = ("sqrt_size", "macs")


@torch.no_grad()
def _output_positions(model: nn.Module, example_inputs: Any, layers: Sequence[nn.Module]) -> dict[nn.Module, int]:
    """Output positions per sample-batch (numel / out_channels) of each layer in one eval forward."""
    positions: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        channels = out.shape[1] if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d) else out.shape[-1]
        positions[module] = positions.get(module, 0) + out.numel() // channels

    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        _call(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions


def group_macs(model: nn.Module, groups: Sequence[ConvGroup], example_inputs: Any) -> list[float]:
    """Per grouped layer: MACs saved by removing one of its input channels, ``O*kh*kw*H_out*W_out / groups``.

    ``example_inputs`` is one batch at the training resolution, e.g. (1, 3, H, W); the count is per sample.
    """
    by_weight = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    layers = [by_weight.get(id(g.weight)) for g in groups]
    missing = [g.name for g, m in zip(groups, layers) if m is None]
    if missing:
        raise ValueError(f"group_macs: grouped weights not found in the model: {missing}")
    positions = _output_positions(model, example_inputs, layers)
    batch = _batch_size(example_inputs)
    out = []
    for layer in layers:
        per_position = layer.weight[:, 0].numel() if isinstance(layer, nn.Conv2d) else layer.weight.shape[0]
        out.append(float(per_position * positions.get(layer, 0)) / batch)
    return out


def coupled_group_macs(model: nn.Module, groups: Sequence[CoupledGroup], example_inputs: Any) -> list[float]:
    """Per channel space: MACs per sample that removing one of its channels saves, at ``example_inputs``' size:
    every reader's input slice (``O*kh*kw*H_out*W_out / groups``), every writer's output row
    (``I/groups*kh*kw*H_out*W_out``) and depthwise convs' ``kh*kw*H_out*W_out``."""
    layers = list(dict.fromkeys(m for g in groups for m, _ in g.layers))
    positions = _output_positions(model, example_inputs, layers)
    batch = _batch_size(example_inputs)
    out = []
    for g in groups:
        total = 0
        for m, reads in g.layers:
            if isinstance(m, nn.Linear):
                per = m.out_features if reads else m.in_features
            else:
                k = m.weight[0, 0].numel()
                per = k if is_depthwise(m) else (m.out_channels * k if reads else m.in_channels // m.groups * k)
            total += per * positions.get(m, 0)
        out.append(float(total) / batch)
    return out


def group_weights(
    kind: str,
    groups: Sequence[ConvGroup | CoupledGroup],
    model: nn.Module | None = None,
    example_inputs: Any = None,
) -> list[float]:
    """Per-layer (per channel space) penalty/threshold weight of each group: one value per layer / space.

    ``kind``: ``sqrt_size`` (sqrt(p_g); a space's mean for coupled groups) or ``macs`` (needs ``model`` and
    ``example_inputs`` at the training resolution); ``macs`` weights sum (over groups) to the same total as
    ``sqrt_size``.
    """
    if kind not in GROUP_WEIGHTS:
        raise unknown_name("sparsity.group_weight", kind, GROUP_WEIGHTS)
    sqrt = [float(g.sqrt_sizes().mean()) for g in groups]
    if kind == "sqrt_size":
        return sqrt
    coupled = any(isinstance(g, CoupledGroup) for g in groups)
    macs = (coupled_group_macs if coupled else group_macs)(model, groups, example_inputs)
    total_sqrt = sum(w * g.num_groups for w, g in zip(sqrt, groups))
    total_macs = sum(m * g.num_groups for m, g in zip(macs, groups))
    if total_macs <= 0:
        return sqrt
    return [m * total_sqrt / total_macs for m in macs]


def _batch_size(example_inputs: Any) -> int:
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    return int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else 1


def _is_in(graph: Any, handler: Any) -> bool:
    return graph.is_in_channel_pruning_fn(handler)


class MacsMeter:
    """MACs of ``model`` after consumer-rule pruning, read from the live weights without changing anything.

    Traces ``model`` once on ``example_inputs`` (its dependency graph and groups are cached); every call of
    :meth:`pruned_macs` then applies the rule of ``prune_zero_channels`` to the current weights and counts
    conv/linear MACs analytically (``H_out*W_out * C_out_kept * C_in_kept/groups * kh*kw``), which is what
    ``FlopCounterMode`` counts on the pruned model. The structure (layers, shapes) must not change after.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ignored_layers: Sequence[nn.Module] | None = None):
        self.model = model
        self.graph = build_graph(model, example_inputs)
        output_nodes = getattr(self.graph, "lsm_output_nodes", set())
        self._output_nodes = output_nodes
        roots = (ops.TORCH_CONV, ops.TORCH_LINEAR)
        self._groups = list(
            self.graph.get_all_groups(ignored_layers=list(ignored_layers or []), root_module_types=roots)
        )
        self.layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        self._positions = _output_positions(model, example_inputs, self.layers)
        self._batch = _batch_size(example_inputs)
        # per group: the (module, is_in, local idxs, root idxs) of each conv/linear item, precomputed once
        self._items: list[list[tuple[nn.Module, bool, torch.Tensor, torch.Tensor]]] = []
        layer_set = set(self.layers)
        for group in self._groups:
            items = []
            for item in group.items:
                module = item.dep.target.module
                if module not in layer_set or not item.idxs or item.root_idxs is None:
                    continue
                if any(r is None for r in item.root_idxs):
                    continue
                items.append(
                    (
                        module,
                        _is_in(self.graph, item.dep.handler),
                        torch.as_tensor(list(item.idxs), dtype=torch.long),
                        torch.as_tensor(item.root_idxs, dtype=torch.long),
                    )
                )
            self._items.append(items)
        self.dense_macs = self._count({}, {})

    def _count(self, removed_in: dict, removed_out: dict) -> int:
        total = 0
        for m in self.layers:
            pos = self._positions.get(m, 0)
            if pos == 0:
                continue
            if isinstance(m, nn.Linear):
                cin = m.in_features - len(removed_in.get(m, ()))
                cout = m.out_features - len(removed_out.get(m, ()))
                total += pos * cin * cout
                continue
            k = m.weight[0, 0].numel()
            cout = m.out_channels - len(removed_out.get(m, ()))
            if m.groups == 1:
                cin = m.in_channels - len(removed_in.get(m, ()))
                total += pos * cout * cin * k
            else:  # depthwise (in = out, coupled) or blocked grouped conv: in/groups per output channel
                gone = removed_out.get(m, set()) | removed_in.get(m, set())
                total += pos * (m.out_channels - len(gone)) * (m.in_channels // m.groups) * k
        return total // self._batch

    @torch.no_grad()
    def pruned_macs(self) -> int:
        """MACs per sample of the model ``prune_zero_channels`` would leave, at the traced resolution."""
        removed_in: dict[nn.Module, set[int]] = {}
        removed_out: dict[nn.Module, set[int]] = {}
        cache: dict = {}  # the read masks of every layer, on the CPU (the plan indexes them with CPU tensors)
        for m in self.layers:
            for is_in in (True, False):
                mask = read_mask(m, is_in)
                cache[(m, is_in)] = None if mask is None else mask.cpu()
        for group, items in zip(self._groups, self._items):
            keep = _group_keep_mask(self.graph, group, self._output_nodes, cache)
            if not keep.any():
                keep[0] = True  # as prune_zero_channels: a layer keeps at least one channel
            if keep.all():
                continue
            for module, is_in, idxs, roots in items:
                drop = idxs[~keep[roots]].tolist()
                (removed_in if is_in else removed_out).setdefault(module, set()).update(drop)
        return self._count(removed_in, removed_out)

    def macs_fraction(self) -> float:
        """Pruned / dense MACs (1.0 = nothing removable)."""
        return self.pruned_macs() / max(self.dense_macs, 1)
