"""The inference form of a model: BatchNorm folded into the preceding convs, optional ``channels_last``.

Folding is exact up to float rounding: ``BN(conv(x)) = conv'(x)`` with ``W' = W·γ/σ``, ``b' = (b-μ)·γ/σ + β``
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). Which conv feeds which BN is found by running the model once
(a BN folds only when it is the only reader of a conv's output); :func:`inference_form` then checks
that the folded model computes what the original computes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from lightning_sparse_mtl.deploy.measure import _call
from lightning_sparse_mtl.sparsity.pruning import _flatten, max_abs_diff

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


_METADATA = {"dim", "size", "__get__", "numel", "is_contiguous", "stride", "get_device", "__len__"}


class _ReadTracker(TorchFunctionMode):
    """Records who reads each tracked tensor: the innermost running leaf module, or the torch function itself."""

    def __init__(self, produced: dict[int, Any], readers: dict[int, set[str]], stack: list[str]) -> None:
        super().__init__()
        self.produced, self.readers, self.stack = produced, readers, stack

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA:
            for a in tree_leaves((args, kwargs)):
                if isinstance(a, torch.Tensor) and id(a) in self.produced:
                    reader = self.stack[-1] if self.stack else f"function {getattr(func, '__name__', func)}"
                    self.readers.setdefault(id(a), set()).add(reader)
        return func(*args, **kwargs)


def conv_bn_pairs(model: nn.Module, example_inputs: Any) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BN whose input is the output of a conv read by nothing else.

    Found by one forward on ``example_inputs`` (e.g. (N, 3, H, W)): forward hooks mark conv outputs and which
    leaf module is running, a ``TorchFunctionMode`` records every op that reads a conv output (residual adds
    and other functional reads included). A conv output read by anything besides one BN, or a conv or BN
    called more than once, is not folded.
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (conv name, output kept alive)
    readers: dict[int, set[str]] = {}
    calls: dict[str, int] = {}
    stack: list[str] = []
    hooks = []

    def pre(module: nn.Module, args: tuple) -> None:
        stack.append(names[module])

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        stack.pop()
        calls[names[module]] = calls.get(names[module], 0) + 1
        if isinstance(module, _CONV) and not module.transposed and isinstance(out, torch.Tensor):
            produced[id(out)] = (names[module], out)

    for m in model.modules():
        if not list(m.children()):  # leaves only
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _ReadTracker(produced, readers, stack):
            _call(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    pairs = []
    for key, (conv, _) in produced.items():
        read = sorted(readers.get(key, ()))
        if len(read) == 1 and read[0] in calls and isinstance(model.get_submodule(read[0]), _BN):
            if calls[conv] == calls[read[0]] == 1:
                pairs.append((conv, read[0]))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_inputs: Any) -> int:
    """Fold, IN PLACE, every BN that directly follows a conv into that conv (the BN becomes ``Identity``).

    Returns the number of BNs folded. The model must be in (or is put into) ``eval()`` semantics: the BN
    running statistics are used.
    """
    pairs = conv_bn_pairs(model, example_inputs)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
        fused.weight.requires_grad_(False)
        fused.bias.requires_grad_(False)
        _set(model, conv_name, fused)
        _set(model, bn_name, nn.Identity())
    return len(pairs)


class ChannelsLast(nn.Module):
    """Wrap a model so that its input is converted to ``torch.channels_last`` (4-D convs then run NHWC)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def inference_form(
    model: nn.Module, example_inputs: Any, fold_bn: bool = True, channels_last: bool = False, atol: float = 1e-4
) -> tuple[nn.Module, float]:
    """A copy of ``model`` (eval) with BN folded and/or channels_last, and its max abs diff to ``model``.

    ``example_inputs``: a tensor (N, 3, H, W) or a tuple of forward arguments. Raises ``RuntimeError`` when
    the inference form differs from the model by more than ``atol``.
    """
    model = model.eval()
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(out, example_inputs)
    if channels_last:
        out = ChannelsLast(out).eval()
    diff = compare(model, out, example_inputs)
    if not diff <= atol:
        raise RuntimeError(f"inference form differs from the model: max abs diff {diff:.3g} > {atol:g}")
    return out, diff


@torch.no_grad()
def compare(a: nn.Module, b: nn.Module, example_inputs: Any) -> float:
    """Max abs difference between the (flattened) outputs of two models on the same input."""
    return max_abs_diff(_flatten(_call(a.eval(), example_inputs)), _flatten(_call(b.eval(), example_inputs)))
