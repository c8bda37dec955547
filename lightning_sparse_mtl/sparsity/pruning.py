"""Physical removal of channels that nothing reads, on Torch-Pruning's ``DependencyGraph``.

Rule (exact): channel ``c`` of a feature map is removable iff every *consumer* of it in its
dependency group (conv / linear input-channel slices, across residual adds and concatenations)
has an all-zero weight slice for ``c`` (``== 0``, no tolerance). Producers (conv out-channels,
BN, biases) may be non-zero: nothing reads their value. Channels that reach a model output, or are
produced by an ignored layer, are kept. Ops that carry channel c to channel c pass the question on:
BN, activations, residual adds, SE gating products, pooling, padding, resizing, re-indexing
(reshape/permute/concat/split) and **depthwise convs** (channel c before a depthwise conv is read
only if channel c after it is read, so inverted-residual blocks prune). Everything else blocks its
whole group (conservative): grouped convs (ResNeXt, RegNet), LayerNorm/GroupNorm, attention
(matmul/softmax of activations), reductions over channels, and any op not known to be channel-local
(Torch-Pruning files unknown autograd ops as "element-wise"; we do not trust that). A group whose
indices do not fit its layers (Torch-Pruning merging channels of different widths, e.g. through
attention) is kept whole too. Under this rule the pruned model computes exactly what the zero-masked
model computes; ``prune_zero_channels`` verifies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch_pruning import ops

from lightning_sparse_mtl.deploy.measure import _call, count_params
from lightning_sparse_mtl.sparsity.channel_ops import fixes_channel_layout, is_depthwise, passes, read_mask, width
from lightning_sparse_mtl.sparsity.prune_checks import PruneError, check_real_values, run_pruned

OPTYPE = ops.OPTYPE


@dataclass
class PruneReport:
    """Outcome of :func:`prune_zero_channels`; ``channels_removed`` is keyed by group root (producer) name."""

    channels_removed: dict[str, int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs_diff: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_channels_removed"] = int(sum(self.channels_removed.values()))
        return d


def _flatten(out: Any) -> list[torch.Tensor]:
    """All tensors of a (nested) tensor / tuple / list / dict output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return []


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Trace ``model`` once (eval mode, grad enabled) into a ``DependencyGraph``.

    The graph also remembers which nodes produce model outputs (``lsm_output_nodes``) so that
    their out-channels are never removed. The model's train/eval mode and ``requires_grad`` flags
    are restored. Note: the graph holds the traced autograd graph (and the model) alive.
    """
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # tracing needs grad_fn on every layer output
        p.requires_grad_(True)
    captured: list[Any] = []

    def forward_fn(m: nn.Module, x: Any) -> Any:
        captured.append(_call(m, x))
        return captured[-1]

    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=forward_fn, verbose=False
            )
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    out_fns = {t.grad_fn for t in _flatten(captured[-1]) if t.grad_fn is not None}
    graph.lsm_output_nodes = {n for n in graph.module2node.values() if n.grad_fn in out_fns}
    return graph


def _group_keep_mask(graph: tp.DependencyGraph, group: Any, output_nodes: set, cache: dict) -> torch.Tensor:
    """Bool (C_root,): True for root channels that must be kept."""
    n = len(group[0].idxs)
    keep = torch.zeros(n, dtype=torch.bool)
    for item in group.items:
        dep, idxs, roots = item.dep, list(item.idxs), item.root_idxs
        if not idxs:
            continue
        if roots is None or any(r is None for r in roots):
            return torch.ones(n, dtype=torch.bool)
        roots_t = torch.as_tensor(roots, dtype=torch.long)
        node, handler = dep.target, dep.handler
        is_out = graph.is_out_channel_pruning_fn(handler)
        is_in = graph.is_in_channel_pruning_fn(handler)
        if fixes_channel_layout(node):  # x[:, :3], split, chunk: constant channel positions in the forward
            return torch.ones(n, dtype=torch.bool)
        if node.type == OPTYPE.OUTPUT or (is_out and node in output_nodes):
            keep[roots_t] = True  # the value reaches a model output
        elif node.type in (OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV, OPTYPE.LINEAR):
            m = node.module
            if max(idxs) >= width(m, is_in):  # Torch-Pruning coupled channels of different widths
                return torch.ones(n, dtype=torch.bool)
            if is_depthwise(m):
                continue  # channel c in -> channel c out: read iff channel c after it is read
            grouped = isinstance(m, ops.TORCH_CONV) and m.groups > 1
            if is_out and not is_in and not grouped:
                continue  # plain producer: nothing reads its value
            key = (m, is_in)
            if key not in cache:
                cache[key] = read_mask(m, is_in)
            mask = cache[key]
            if mask is None:
                keep[roots_t] = True
            else:
                keep[roots_t[mask[torch.as_tensor(idxs, dtype=torch.long)]]] = True
        elif not passes(node):  # mixes channels or of unknown layout: keep what it reads
            keep[roots_t] = True
    return keep


def _plan(graph: tp.DependencyGraph, ignored_layers: Sequence[nn.Module] | None, round_to: int = 1) -> list[tuple]:
    """List of (root module, root name, root handler, channel indices to remove) over all groups.

    ``round_to=N`` keeps a few removable (unread) channels so that every pruned group keeps a multiple of N
    channels (or all of them): still exact, since nothing reads the extra channels.
    """
    output_nodes = getattr(graph, "lsm_output_nodes", None)
    if output_nodes is None:
        output_nodes = {n for n in graph.module2node.values() if n.type == OPTYPE.OUTPUT}
    names = {m: n for n, m in graph.model.named_modules()}
    cache: dict = {}
    plans = []
    roots = (ops.TORCH_CONV, ops.TORCH_LINEAR)
    for group in graph.get_all_groups(ignored_layers=list(ignored_layers or []), root_module_types=roots):
        keep = _group_keep_mask(graph, group, output_nodes, cache)
        if not keep.any():  # a layer cannot have 0 channels: keep one (its readers ignore it anyway)
            keep[0] = True
        if round_to > 1:
            n_keep = int(keep.sum())
            extra = min(len(keep), -(-n_keep // round_to) * round_to) - n_keep
            keep[(~keep).nonzero().flatten()[:extra]] = True
        drop = (~keep).nonzero().flatten().tolist()
        if drop:
            dep = group[0].dep
            plans.append((dep.target.module, names.get(dep.target.module, str(dep.target)), dep.handler, drop))
    return plans


def removable_channels(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Sequence[nn.Module] | None = None,
    graph: tp.DependencyGraph | None = None,
) -> dict[str, int]:
    """Channels that :func:`prune_zero_channels` would remove, per group root module name (no change).

    Pass ``graph`` (from :func:`build_graph` on the same model) to skip tracing on repeated calls.
    """
    graph = graph if graph is not None else build_graph(model, example_inputs)
    return {name: len(idxs) for _, name, _, idxs in _plan(graph, ignored_layers)}


@torch.no_grad()
def _outputs_and_macs(model: nn.Module, example_inputs: Any) -> tuple[list[torch.Tensor], int]:
    """Flattened outputs of one forward and its MACs per image (FLOPs / 2 / batch: :func:`count_macs` on 1 image)."""
    with FlopCounterMode(display=False) as counter:
        out = [t.detach().clone() for t in _flatten(_call(model, example_inputs))]
    first = _flatten(example_inputs if isinstance(example_inputs, (tuple, list)) else [example_inputs])
    batch = first[0].shape[0] if first and first[0].dim() > 0 else 1
    return out, int(counter.get_total_flops()) // 2 // max(batch, 1)


def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Largest |a - b| over paired tensors; inf when the structure or shapes differ."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf
    return max((float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b)), default=0.0)


def prune_zero_channels(
    model: nn.Module,
    example_inputs: Any,
    ignored_layers: Sequence[nn.Module] | None = None,
    atol: float = 1e-4,
    round_to: int = 1,
) -> PruneReport:
    """Remove, IN PLACE, every channel whose consumers all have all-zero weight slices.

    ``example_inputs``: a tensor (e.g. (N, 3, H, W)) or a tuple of forward arguments; the forward
    may return a tensor, a tuple/list or a dict of tensors. Runs in ``eval()``, verifies that the
    outputs on ``example_inputs`` are unchanged (max abs diff <= ``atol``) and raises
    :class:`PruneError` (a ``UserError`` and ``RuntimeError``, one line) otherwise or when the pruned forward fails
    (the model is then left as pruned: keep a copy if you need it); a model on the meta device is refused before
    anything changes. Channels that a slice/split/chunk/unbind selects by position are kept (their whole group).
    ``round_to=N`` keeps kept-channel counts at multiples of N (see :func:`_plan`). MACs in the report are
    per image (batch 1), as :func:`count_macs` on one image. Train/eval mode and ``requires_grad`` flags are
    restored. Attributes that merely record sizes
    (e.g. an smp encoder's ``out_channels``) are not updated.
    """
    check_real_values(model, example_inputs)
    was_training = model.training
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    try:
        before, macs_before = _outputs_and_macs(model, example_inputs)
        params_before = count_params(model)
        graph = build_graph(model, example_inputs)
        model.eval()
        plans = _plan(graph, ignored_layers, round_to)
        removed: dict[str, int] = {}
        for module, name, handler, idxs in plans:
            graph.get_pruning_group(module, handler, idxs).prune()
            removed[name] = removed.get(name, 0) + len(idxs)
        for n, p in model.named_parameters():  # Torch-Pruning re-creates pruned params with requires_grad=True
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        after, macs_after = run_pruned(lambda: _outputs_and_macs(model, example_inputs))
        diff = max_abs_diff(before, after)
        if not diff <= atol:
            raise PruneError(f"prune_zero_channels: pruned model differs from the original (max abs diff {diff:.3g} > "
                             f"atol {atol:g}); the model is left pruned: prune a copy and pass the layers whose "
                             "channels must stay as ignored_layers")  # fmt: skip
        return PruneReport(
            channels_removed=removed,
            params_before=params_before,
            params_after=count_params(model),
            macs_before=macs_before,
            macs_after=macs_after,
            max_abs_diff=diff,
        )
    finally:
        model.train(was_training)
