"""Coupled groups: one group per channel of each *channel space* of the network's dependency graph.

A channel space is what Torch-Pruning's ``DependencyGraph`` couples into one pruning group: a feature map and
every layer that writes or reads it, across residual adds, concatenations and depthwise convs. Channel ``c`` of
a space is one group made of slices of several tensors (:class:`Piece`):

- the input slices ``W[:, c]`` of every conv / linear that reads the channel (all the blocks on a residual
  stream, the downsample, and with ``coupled_heads`` the heads' first layers);
- the per-channel producer parameters: conv / linear bias ``b[c]``, BatchNorm ``gamma_c``/``beta_c``, depthwise
  rows ``W[c]`` (a depthwise conv carries channel c to channel c);
- the output rows ``W[c]`` of a plain conv / linear that writes the channel, *when its own input channels are
  not grouped* (the stem conv, which reads the image). A weight element belongs to at most one group: the
  groups do not overlap, so the prox of the sum of group norms is separable and exact (an element in both a
  row group and a column group would have no closed-form prox). A row left out is freed all the same when the
  channel goes: nothing reads the channel any more, so pruning removes its producers.

Only channels that the exact pruning rule can remove once all their readers are zero are grouped (the rule of
:mod:`~lightning_sparse_mtl.sparsity.pruning` evaluated with every reader zero): channels that reach a model
output, pass an op that mixes channels, or feed a grouped conv are left out. So a zero coupled group *is* a
removable channel. ``shared`` (a submodule name) limits the groups to spaces that the shared encoder writes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch_pruning import ops

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.sparsity.channel_ops import is_depthwise, read_mask
from lightning_sparse_mtl.sparsity.pruning import _group_keep_mask, build_graph


@dataclass(frozen=True)
class Piece:
    """One tensor's share of a space's groups: slices ``param.select(dim, index[j])`` belong to group
    ``channel[j]``. ``dim`` 1: input slices of a conv (O, I, k, k) / linear (O, I) weight; 0: rows (and 1-D
    per-channel parameters). ``full``: ``index`` and ``channel`` are both ``arange`` over the whole dim."""

    name: str
    param: nn.Parameter
    dim: int
    index: torch.Tensor
    channel: torch.Tensor
    full: bool

    @property
    def local_size(self) -> int:
        """Number of slices along ``dim`` (grouped or not)."""
        return self.param.shape[self.dim]

    @property
    def slice_size(self) -> int:
        """Elements in one slice along ``dim``."""
        return self.param.numel() // max(self.param.shape[self.dim], 1)


@dataclass(frozen=True)
class CoupledGroup:
    """The groups of one channel space: ``num_groups`` channels, each the union of its slices in ``pieces``.

    ``layers``: every conv / linear of the space as (module, reads the channel), for cost accounting (removing
    a channel frees its readers' input slices and its writers' output rows).
    """

    name: str
    pieces: tuple[Piece, ...]
    num_groups: int
    layers: tuple[tuple[nn.Module, bool], ...] = field(default=(), compare=False)

    def sizes(self) -> torch.Tensor:
        """(C,) number of weights in each group (p_g)."""
        out = torch.zeros(self.num_groups, dtype=torch.float64)
        for p in self.pieces:
            out.index_add_(0, p.channel.cpu(), torch.full((len(p.channel),), float(p.slice_size), dtype=torch.float64))
        return out

    def sqrt_sizes(self) -> torch.Tensor:
        """(C,) float32 sqrt(p_g): the seed's group weight."""
        return self.sizes().sqrt().float()

    @property
    def numel(self) -> int:
        """Weights in all groups of the space."""
        return int(self.sizes().sum())

    @cached_property
    def params(self) -> list[nn.Parameter]:
        """The distinct tensors of the space (computed once: read on every optimizer step)."""
        seen: dict[int, nn.Parameter] = {}
        for p in self.pieces:
            seen.setdefault(id(p.param), p.param)
        return list(seen.values())

    @property
    def device(self) -> torch.device:
        return self.pieces[0].param.device

    def version(self) -> tuple[int, ...]:
        """The parameters' version counters (a cache of the norms is valid while they are unchanged)."""
        return tuple(p._version for p in self.params)


def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def _groupable(graph: Any, group: Any, cache: dict) -> torch.Tensor:
    """Bool (C,): channels the pruning rule removes once every reader's slice is zero."""
    return ~_group_keep_mask(graph, group, graph.lsm_output_nodes, cache)


def _zero_read_masks(model: nn.Module) -> dict:
    """The pruning rule's read-mask cache with every conv / linear reading nothing (None: cannot judge)."""
    cache = {}
    for m in model.modules():
        if isinstance(m, (ops.TORCH_CONV, nn.Linear)):
            for is_in in (True, False):
                mask = read_mask(m, is_in)
                cache[(m, is_in)] = None if mask is None else torch.zeros_like(mask.cpu())
    return cache


def _inside(name: str, prefix: str | None) -> bool:
    return prefix is None or name == prefix or name.startswith(prefix + ".")


@torch.no_grad()
def find_coupled_groups(
    model: nn.Module,
    example_inputs: Any,
    shared: str | None = None,
    coupled_heads: bool = True,
    prefix: str = "",
    exclude: tuple[str, ...] | list[str] = (),
) -> list[CoupledGroup]:
    """The coupled groups of ``model`` (see the module docstring), traced once on ``example_inputs``.

    ``shared``: name of the submodule whose channel spaces are grouped (a space is taken when every layer that
    writes it lies inside; None: the whole model). ``coupled_heads``: readers outside ``shared`` (the task
    heads' first layers) join the groups of the channels they read; False leaves the spaces they read dense.
    ``exclude``: regexes; a space with any layer whose name matches is not grouped. Names are ``prefix`` +
    module path of the space's root layer.
    """
    patterns = [re.compile(p) for p in exclude]
    names = {m: n for n, m in model.named_modules()}
    if shared is not None:
        try:
            model.get_submodule(shared)
        except AttributeError:
            raise UserError(f"coupled groups: the model has no submodule {shared!r}") from None
    was_training = model.training
    model.eval()
    try:
        graph = build_graph(model, example_inputs)
    except Exception as err:
        raise UserError(
            f"coupled groups: cannot trace the model on the example input ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass example_inputs of the training size"
        ) from err
    finally:
        model.train(was_training)
    cache = _zero_read_masks(model)
    roots = (ops.TORCH_CONV, ops.TORCH_LINEAR)
    spaces = []
    for group in graph.get_all_groups(root_module_types=roots):
        space = _space(graph, group, cache, names, shared, coupled_heads, patterns)
        if space is not None:
            spaces.append(space)
    order = {m: i for i, m in enumerate(model.modules())}
    spaces.sort(key=lambda s: order.get(s[0], math.inf))
    return _assemble(spaces, names, prefix)


def _space(graph, group, cache, names, shared, coupled_heads, patterns):
    """(root module, groupable channels (C,), [(module, is_in, idxs, roots)]) of one TP group, or None."""
    mask = _groupable(graph, group, cache)
    if not mask.any():
        return None
    items = []
    for item in group.items:
        module, idxs = item.dep.target.module, list(item.idxs)
        if module is None or not idxs or item.root_idxs is None:
            continue
        is_in = graph.is_in_channel_pruning_fn(item.dep.handler)
        items.append((module, is_in, torch.as_tensor(idxs), torch.as_tensor(list(item.root_idxs))))
    layers = [(m, i) for m, i, _, _ in items if _is_layer(m)]
    writers = [m for m, is_in in layers if not is_in or is_depthwise(m)]
    if not writers or not all(_inside(names.get(m, ""), shared) for m in writers):
        return None  # a space of the heads (or one the shared part does not write)
    if not coupled_heads and not all(_inside(names.get(m, ""), shared) for m, _ in layers):
        return None
    if any(p.search(names.get(m, "")) for m, _ in layers for p in patterns):
        return None
    return group[0].dep.target.module, mask, items


def _member_params(module: nn.Module, is_in: bool) -> list[tuple[str, nn.Parameter, int, bool]]:
    """(suffix, param, dim, is row-of-a-plain-layer) slices a module contributes for one channel."""
    out = []
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
        out += [("weight", module.weight, 0, False), ("bias", module.bias, 0, False)]
    elif _is_layer(module) and is_depthwise(module):
        out.append(("weight", module.weight, 0, False))
        if module.bias is not None:
            out.append(("bias", module.bias, 0, False))
    elif _is_layer(module) and getattr(module, "groups", 1) == 1:
        if is_in:
            out.append(("weight", module.weight, 1, False))
        else:
            out.append(("weight", module.weight, 0, True))
            if module.bias is not None:
                out.append(("bias", module.bias, 0, False))
    return [o for o in out if isinstance(o[1], nn.Parameter)]


def _assemble(spaces: list, names: dict, prefix: str) -> list[CoupledGroup]:
    """Turn spaces into non-overlapping :class:`CoupledGroup`s (rows only where the columns are free)."""
    read_params = set()  # weights whose input slices are grouped somewhere: their rows stay out
    for _, mask, items in spaces:
        for module, is_in, _idxs, roots in items:
            for _, param, dim, _ in _member_params(module, is_in):
                if dim == 1 and mask[roots].any():
                    read_params.add(id(param))
    claimed: set[tuple[int, int, int]] = set()
    groups = []
    for root, mask, items in spaces:
        channel_ids = torch.full((len(mask),), -1, dtype=torch.long)
        channel_ids[mask] = torch.arange(int(mask.sum()))
        pairs: dict[tuple[int, int], tuple[str, nn.Parameter, dict[int, int]]] = {}
        layers = []
        for module, is_in, idxs, roots in items:
            if _is_layer(module):
                layers.append((module, bool(is_in and not is_depthwise(module))))
            for suffix, param, dim, is_row in _member_params(module, is_in):
                if is_row and id(param) in read_params:
                    continue
                entry = pairs.setdefault((id(param), dim), (f"{names.get(module, '?')}.{suffix}", param, {}))
                for j, r in zip(idxs.tolist(), roots.tolist()):
                    key = (id(param), dim, j)
                    if channel_ids[r] >= 0 and key not in claimed:
                        claimed.add(key)
                        entry[2][j] = int(channel_ids[r])
        pieces = []
        for (_, dim), (name, param, mapping) in pairs.items():
            if not mapping:
                continue
            index = torch.tensor(sorted(mapping), dtype=torch.long)
            channel = torch.tensor([mapping[j] for j in index.tolist()], dtype=torch.long)
            num = int(mask.sum())
            full = len(index) == param.shape[dim] == num and bool((index == channel).all())
            dev = param.device
            pieces.append(Piece(f"{prefix}{name}", param, dim, index.to(dev), channel.to(dev), full))
        if any(p.dim == 1 for p in pieces):  # a space nothing grouped reads would zero nothing removable
            seen_layers = tuple(dict.fromkeys(layers))
            groups.append(CoupledGroup(f"{prefix}{names.get(root, '?')}", tuple(pieces), int(mask.sum()), seen_layers))
    return groups
