"""Which Torch-Pruning graph nodes carry channel c to channel c, and which input channels a layer reads.

Used by :mod:`lightning_sparse_mtl.sparsity.pruning` (the consumer rule). Torch-Pruning files every autograd op
it does not know as "element-wise"; only ops listed here as channel-local are trusted to pass a channel on,
everything else blocks it (conservative).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch_pruning import ops

OPTYPE = ops.OPTYPE
# Ops that carry channel c to channel c (or re-index it exactly): they never block a channel.
_PASS_THROUGH = {OPTYPE.BN, OPTYPE.IN, OPTYPE.PRELU, OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.SLICE, OPTYPE.RESHAPE}
# Autograd ops (name without "Backward<N>") that Torch-Pruning files as element-wise and that are channel-local.
_CHANNEL_LOCAL_FNS = frozenset(
    """Add Sub Mul Div Neg Clone Alias ToCopy Relu Hardtanh Hardswish Hardsigmoid Sigmoid Silu Gelu Tanh
    LeakyRelu Elu Mish Softplus Threshold Clamp ClampMin ClampMax Abs Pow Exp Sqrt Rsqrt MaxPool2DWithIndices
    MaxPool2D AvgPool2D AdaptiveAvgPool2D AdaptiveMaxPool2D UpsampleBilinear2D UpsampleNearest2D
    UpsampleNearestExact2D UpsampleBicubic2D ConstantPadNd ReflectionPad2D ReplicationPad2D NativeBatchNorm
    CudnnBatchNorm NativeDropout Transpose Permute""".split()
)
_REDUCTIONS = frozenset({"Mean", "Sum", "Amax", "Amin"})
# Ops whose forward names channel positions or counts as constants (``x[:, :3]``, ``torch.split(x, [3, 5], 1)``,
# ``x.chunk(2, 1)``, ``x.unbind(1)``): removing any channel of their input would shift what those constants select.
_LAYOUT_OPS = (OPTYPE.SLICE, OPTYPE.SPLIT, OPTYPE.UNBIND)
_MATMULS = frozenset({"Mm", "Addmm"})


def read_mask(module: nn.Module, is_in: bool) -> torch.Tensor | None:
    """Bool (C_in,): True where the module reads input channel c with a non-zero weight slice.

    None means "cannot judge" (grouped conv; depthwise convs never get here): block the channels.
    """
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w.ne(0).any(dim=0) if is_in else None  # W: (out, in)
    if isinstance(module, ops.TORCH_CONV):
        g = module.groups
        if g == 1 and module.transposed:  # W: (in, out, *k)
            return w.ne(0).flatten(1).any(dim=1)
        if g == 1:  # W: (out, in, *k)
            return w.ne(0).any(dim=0).flatten(1).any(dim=1)
    return None


def _fn_name(node: Any) -> str:
    """Autograd op of a Torch-Pruning node without its "Backward<N>" suffix ("" when unknown)."""
    name = node.grad_fn.name() if node.grad_fn is not None else ""
    return re.sub(r"Backward\d*$", "", name)


def _is_linear_matmul(node: Any) -> bool:
    """True for the ``mm``/``addmm`` inside an ``nn.Linear`` applied to a >2-D input: one operand is the transpose
    of a weight and its result reaches only Linear nodes (directly or through reshapes)."""
    if not any(i.type == OPTYPE.ELEMENTWISE and _fn_name(i) == "T" for i in node.inputs):
        return False
    frontier, hops = list(node.outputs), 0
    while frontier and hops < 3:
        if all(o.type == OPTYPE.LINEAR for o in frontier):
            return True
        if any(o.type not in (OPTYPE.LINEAR, OPTYPE.RESHAPE) for o in frontier):
            return False
        frontier = [n for o in frontier for n in (o.outputs if o.type == OPTYPE.RESHAPE else [o])]
        hops += 1
    return False


def passes(node: Any) -> bool:
    """Whether a non-conv/linear node carries channel c to channel c (so it never blocks a channel)."""
    if node.type in _PASS_THROUGH:
        return True
    if node.type != OPTYPE.ELEMENTWISE:
        return False  # LN, GN, MHA, LSTM, embeddings, raw parameters, expand/unbind, customized ops
    fn = _fn_name(node)
    if fn in _CHANNEL_LOCAL_FNS:
        return True
    if fn == "T":  # the transpose of a weight (no activation flows through it)
        return all(type(f).__name__ == "AccumulateGrad" for f, _ in node.grad_fn.next_functions if f is not None)
    if fn in _REDUCTIONS:  # pooling-like reductions of an NCHW map over spatial dims only
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        dims = getattr(node.grad_fn, "_saved_dim", None)
        if sizes is None or dims is None or len(sizes) != 4:
            return False
        return 1 not in {d % 4 for d in dims}
    if fn in _MATMULS:
        return _is_linear_matmul(node)
    return False  # bmm/matmul of activations (attention), softmax, norms, unknown ops


def fixes_channel_layout(node: Any) -> bool:
    """Whether a slice/split/chunk/unbind node selects channels by constant positions: then every channel of its
    input must stay where it is (its dependency group is kept whole). A slice along the batch or a spatial dim of
    an NCHW map, or one that keeps every channel in order (``x[:, :]``), does not; an unknown dim does."""
    if node.type not in _LAYOUT_OPS:
        return False
    fn = node.grad_fn
    dim, sizes = getattr(fn, "_saved_dim", None), getattr(fn, "_saved_self_sym_sizes", None)
    if dim is None or sizes is None or not sizes or not -len(sizes) <= dim < len(sizes):
        return True
    dim %= len(sizes)
    if dim == 0 or (len(sizes) == 4 and dim in (2, 3)):
        return False
    whole = (getattr(fn, "_saved_start", None), getattr(fn, "_saved_step", None)) == (0, 1)
    return not (node.type == OPTYPE.SLICE and whole and getattr(fn, "_saved_end", 0) >= sizes[dim])


def is_depthwise(module: nn.Module) -> bool:
    """A conv that maps channel c to channel c only (``groups == in_channels == out_channels``)."""
    return (
        isinstance(module, ops.TORCH_CONV)
        and not module.transposed
        and module.groups == module.in_channels == module.out_channels
    )


def width(module: nn.Module, is_in: bool) -> int:
    """Number of in- (``is_in``) or out-channels a conv/linear's pruning indices refer to."""
    if isinstance(module, nn.Linear):
        return module.in_features if is_in else module.out_features
    return module.in_channels if is_in else module.out_channels
