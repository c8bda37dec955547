"""Model size and speed: parameter count, MACs (FlopCounterMode) and CPU/GPU latency.

Two MAC counts: the convention (``count_padding=True``, what fvcore/ptflops/``FlopCounterMode`` report: every
kernel tap of every output position, including taps that fall on a conv's zero padding) and the *effective*
count (``count_padding=False``: only taps that read the input). Runtimes with direct convolutions (ONNX
Runtime's NCHWc kernels, oneDNN) skip padding taps, so on small feature maps with dilated convs (an OS 8 encoder
on a 48x48 image: a 6x6 map, dilation 4, 69% of the taps on padding) the effective count is what they compute.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop

_CONV_OPS = (torch.ops.aten.convolution, torch.ops.aten._convolution)


def _call(model: nn.Module, example_inputs: Any) -> Any:
    return model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def count_params(model: nn.Module) -> int:
    """Number of (unique) parameter elements."""
    return int(sum(p.numel() for p in model.parameters()))


def valid_taps(size: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """(output position, kernel tap) pairs of one spatial dim of a conv that read the input, not its padding."""
    pos = torch.arange(out).unsqueeze(1) * stride - padding + torch.arange(kernel) * dilation
    return int(((pos >= 0) & (pos < size)).sum())


def _effective_conv_flop(x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape=None,
                         **kwargs) -> int:  # fmt: skip
    """FLOPs of a conv counting only the taps that read the input (shapes as ``flop_counter.conv_flop`` gets)."""
    if transposed or not all(isinstance(p, int) for p in padding):
        return conv_flop(x_shape, w_shape, bias, stride, padding, dilation, transposed, *args, out_shape=out_shape)
    dims = zip(x_shape[2:], out_shape[2:], w_shape[2:], stride, padding, dilation)
    taps = math.prod(valid_taps(*d) for d in dims)
    return 2 * x_shape[0] * w_shape[0] * w_shape[1] * taps


def _counter(model: nn.Module, example_inputs: Any, count_padding: bool) -> FlopCounterMode:
    mapping = {} if count_padding else dict.fromkeys(_CONV_OPS, _effective_conv_flop)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=None, custom_mapping=mapping) as counter:
            _call(model, example_inputs)
    finally:
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, example_inputs: Any, count_padding: bool = True) -> int:
    """Multiply-accumulates of one forward on ``example_inputs`` (e.g. (N, 3, H, W)): FLOPs / 2.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (convs, matmuls; not BN/activations),
    in eval mode under ``torch.no_grad``; the train/eval mode is restored. ``count_padding=False``: the
    effective count (conv taps on zero padding left out, see the module docstring).
    """
    return int(_counter(model, example_inputs, count_padding).get_total_flops()) // 2


def macs_by_module(model: nn.Module, example_inputs: Any, count_padding: bool = True) -> dict[str, int]:
    """``{module path: MACs}`` of one forward (paths as ``named_modules``; ``""`` is the whole model)."""
    counts = _counter(model, example_inputs, count_padding).get_flop_counts()
    root = type(model).__name__
    out = {}
    for name, per_op in counts.items():
        if name == root or name.startswith(root + "."):
            out[name[len(root) + 1 :]] = int(sum(per_op.values())) // 2
    return out


def measure_latency(
    model: nn.Module, example_inputs: Any, warmup: int = 3, repeats: int = 10, threads: int | None = None
) -> dict:
    """Forward latency in seconds on ``example_inputs``: ``{"median", "mean", "min", "repeats", "threads"}``.

    Runs in ``eval()`` under ``torch.inference_mode``, with ``torch.set_num_threads(threads)`` when
    given (restored after, as is the train/eval mode); synchronises CUDA when inputs are on a GPU.
    """
    if repeats < 1:
        raise ValueError("measure_latency: repeats must be >= 1")
    t = _first_tensor(example_inputs)
    cuda = t is not None and t.is_cuda
    old_threads = torch.get_num_threads()
    was_training = model.training
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                _call(model, example_inputs)
                if cuda:
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return {
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "min": min(times),
        "repeats": repeats,
        "threads": torch.get_num_threads() if threads is None else threads,
    }
