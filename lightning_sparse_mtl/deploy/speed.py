"""A speed report you can trust: dense and pruned timed in one process, interleaved, median and IQR.

Each (runtime, batch) cell runs ``rounds`` alternating rounds (dense, pruned, dense, pruned, ...), each a
``torch.utils.benchmark.Timer.blocked_autorange`` of at least ``min_run_time`` seconds after a warm-up; the
rounds of one model are merged into one ``Measurement`` (median and interquartile range over all blocks).
Runtimes: ``eager`` (PyTorch, CPU), ``onnxruntime`` (CPU; needs the ``.onnx`` files), ``cuda_eager`` and
``cuda_compile`` (``torch.compile``) when a GPU is present.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.utils import benchmark

Runner = Callable[[torch.Tensor], Callable[[], Any]]  # batch -> zero-argument call that runs one forward


def time_interleaved(
    calls: Mapping[str, Callable[[], Any]], threads: int, rounds: int = 5, min_run_time: float = 0.2, warmup: int = 2
) -> dict[str, benchmark.Measurement]:
    """``{name: Measurement}`` for zero-argument ``calls``, timed alternately in ``rounds`` rounds."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found" noise
    from torch.utils import benchmark  # imported here, not at module level: it pulls in cpp_extension

    for fn in calls.values():
        for _ in range(warmup):
            fn()
    parts: dict[str, list[benchmark.Measurement]] = {name: [] for name in calls}
    for _ in range(max(rounds, 1)):
        for name, fn in calls.items():
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=name)
            parts[name].append(timer.blocked_autorange(min_run_time=min_run_time))
    return {name: benchmark.Measurement.merge(ms)[0] for name, ms in parts.items()}


def eager_runner(model: nn.Module, device: str = "cpu") -> Runner:
    def make(x: torch.Tensor) -> Callable[[], Any]:
        x = x.to(device)

        def call() -> Any:
            with torch.inference_mode():
                out = model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

        return call

    return make


def onnx_runner(session: Any) -> Runner:
    def make(x: torch.Tensor) -> Callable[[], Any]:
        feed = {"image": x.numpy()}
        return lambda: session.run(None, feed)

    return make


def speed_table(
    runners: Mapping[str, Mapping[str, Runner]], size: tuple[int, int], batch_sizes: Sequence[int], threads: int,
    macs_ratio: float, rounds: int = 5, min_run_time: float = 0.2,
) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """Time ``runners[runtime]["dense" | "pruned"]`` at each batch size on random (B, 3, H, W) input.

    Returns flat figures (``{dense,pruned}/{runtime}/latency_b{B}_ms`` and ``..._iqr_ms``,
    ``pruned/{runtime}/speedup_b{B}`` and ``pruned/{runtime}/speedup_over_macs_ratio_b{B}``) and one record
    per figure with its runtime, device, threads, batch and input size.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    figures: dict[str, float] = {}
    records: list[dict] = []
    try:
        for runtime, pair in runners.items():
            device = "cuda" if runtime.startswith("cuda") else "cpu"
            for b in batch_sizes:
                x = torch.rand(b, 3, *size)
                m = time_interleaved({k: pair[k](x) for k in ("dense", "pruned")}, threads, rounds, min_run_time)
                for k in ("dense", "pruned"):
                    figures[f"{k}/{runtime}/latency_b{b}_ms"] = 1e3 * m[k].median
                    figures[f"{k}/{runtime}/latency_b{b}_iqr_ms"] = 1e3 * m[k].iqr
                speedup = m["dense"].median / m["pruned"].median
                figures[f"pruned/{runtime}/speedup_b{b}"] = speedup
                figures[f"pruned/{runtime}/speedup_over_macs_ratio_b{b}"] = speedup / macs_ratio
                records.append({
                    "runtime": runtime, "device": device, "threads": threads, "batch": b, "input_size": list(size),
                    "dense_ms": 1e3 * m["dense"].median, "dense_iqr_ms": 1e3 * m["dense"].iqr,
                    "pruned_ms": 1e3 * m["pruned"].median, "pruned_iqr_ms": 1e3 * m["pruned"].iqr,
                    "blocks": len(m["pruned"].times), "speedup": speedup,
                    "speedup_over_macs_ratio": speedup / macs_ratio,
                })  # fmt: skip
    finally:
        torch.set_num_threads(old)
    return figures, records


def profile_units(model: nn.Module) -> dict[str, nn.Module]:
    """The units a profile reports: encoder children (Sequential stages expanded into blocks) and each head."""
    units: dict[str, nn.Module] = {}
    root = getattr(model, "model", model)  # ChannelsLast wrapper
    encoder = getattr(root, "encoder", None)
    if encoder is not None:
        for name, child in encoder.named_children():
            if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 0:
                units.update({f"encoder.{name}.{n}": c for n, c in child.named_children()})
            else:
                units[f"encoder.{name}"] = child
    for name, head in getattr(root, "heads", {}).items():
        units[f"heads.{name}"] = head
    return units


@torch.inference_mode()
def layer_profile(model: nn.Module, x: torch.Tensor, threads: int, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds per unit of :func:`profile_units` on input ``x`` (B, 3, H, W), plus ``total`` and
    ``other`` (what runs outside the units: upsampling, output activations); forward hooks time each unit."""
    units = profile_units(model)
    spent: dict[str, list[float]] = {n: [] for n in [*units, "total"]}
    start: dict[str, float] = {}
    current: dict[str, float] = {}
    hooks = []

    def begin(name: str) -> Callable:
        return lambda m, a: start.__setitem__(name, time.perf_counter())

    def end(name: str) -> Callable:
        return lambda m, a, o: current.__setitem__(name, current.get(name, 0.0) + time.perf_counter() - start[name])

    for name, m in units.items():
        hooks += [m.register_forward_pre_hook(begin(name)), m.register_forward_hook(end(name))]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model(x)  # warm-up
        for _ in range(repeats):
            current.clear()
            t0 = time.perf_counter()
            model(x)
            spent["total"].append(time.perf_counter() - t0)
            for name in units:
                spent[name].append(current.get(name, 0.0))
    finally:
        torch.set_num_threads(old)
        for h in hooks:
            h.remove()
    ms = {name: 1e3 * statistics.median(v) for name, v in spent.items()}
    ms["other"] = max(ms["total"] - sum(v for k, v in ms.items() if k != "total"), 0.0)
    return ms
