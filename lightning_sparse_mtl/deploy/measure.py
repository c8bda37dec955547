"""Model size and speed: parameter count, MACs (FlopCounterMode) and CPU/GPU latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward on ``example_inputs`` (e.g. (N, 3, H, W)): FLOPs / 2.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (convs, matmuls; not BN/activations),
    in eval mode under ``torch.no_grad``; the train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _call(model, example_inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


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
