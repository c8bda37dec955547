"""A speed report you can trust: dense and pruned timed in one process, interleaved, median and IQR.

Each (runtime, batch) cell runs ``rounds`` alternating rounds (dense, pruned, dense, pruned, ...), each a
``torch.utils.benchmark.Timer.blocked_autorange`` of at least ``min_run_time`` seconds after a warm-up; the
rounds of one model are merged into one ``Measurement`` (median and interquartile range over all blocks). The
speedup is paired: the median over rounds of (dense ÷ pruned), each round's two timings taken back to back, so
that load on a shared machine which drifts between rounds cancels; its IQR over rounds is reported with it.
Runtimes: ``eager`` (PyTorch, CPU), ``onnxruntime`` (CPU; needs the ``.onnx`` files), ``cuda_eager`` and
``cuda_compile`` (``torch.compile``) when a GPU is present.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.utils import benchmark

Runner = Callable[[torch.Tensor], Callable[[], Any]]  # batch -> zero-argument call that runs one forward


def time_rounds(
    calls: Mapping[str, Callable[[], Any]], threads: int, rounds: int = 5, min_run_time: float = 0.2, warmup: int = 2
) -> dict[str, list[benchmark.Measurement]]:
    """``{name: [Measurement per round]}`` for zero-argument ``calls``, timed alternately in ``rounds`` rounds."""
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
    return parts


def paired_speedup(dense_s: Sequence[float], pruned_s: Sequence[float]) -> tuple[float, float]:
    """(median, IQR) over rounds of ``dense_s[i] / pruned_s[i]``: per-round times of the two models, taken back
    to back in each round. IQR: 75th - 25th percentile (linear interpolation, as ``Measurement.iqr``); 0 for one
    round."""
    if not dense_s or len(dense_s) != len(pruned_s):
        raise ValueError(f"paired_speedup: need equally many rounds, got {len(dense_s)} and {len(pruned_s)}")
    ratios = [d / p for d, p in zip(dense_s, pruned_s)]
    if len(ratios) == 1:
        return ratios[0], 0.0
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q3 - q1


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
    macs_ratio: float, rounds: int = 5, min_run_time: float = 0.2, effective_macs_ratio: float | None = None,
) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """Time ``runners[runtime]["dense" | "pruned"]`` at each batch size on random (B, 3, H, W) input.

    Returns flat figures (``{dense,pruned}/{runtime}/latency_b{B}_ms`` and ``..._iqr_ms``,
    ``pruned/{runtime}/speedup_b{B}`` (paired, :func:`paired_speedup`), ``pruned/{runtime}/speedup_iqr_b{B}`` and
    ``pruned/{runtime}/speedup_over_macs_ratio_b{B}``) and one record
    per figure with its runtime, device, threads, batch and input size. With ``effective_macs_ratio`` (the ratio
    of MACs with padding taps left out, ``count_macs(count_padding=False)``) also
    ``pruned/{runtime}/speedup_over_effective_macs_ratio_b{B}`` and the record's ``speedup_over_effective_macs_ratio``.
    """
    from torch.utils import benchmark

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    figures: dict[str, float] = {}
    records: list[dict] = []
    try:
        for runtime, pair in runners.items():
            device = "cuda" if runtime.startswith("cuda") else "cpu"
            for b in batch_sizes:
                x = torch.rand(b, 3, *size)
                parts = time_rounds({k: pair[k](x) for k in ("dense", "pruned")}, threads, rounds, min_run_time)
                m = {k: benchmark.Measurement.merge(ms)[0] for k, ms in parts.items()}
                for k in ("dense", "pruned"):
                    figures[f"{k}/{runtime}/latency_b{b}_ms"] = 1e3 * m[k].median
                    figures[f"{k}/{runtime}/latency_b{b}_iqr_ms"] = 1e3 * m[k].iqr
                per_round = {k: [1e3 * r.median for r in parts[k]] for k in ("dense", "pruned")}
                speedup, spread = paired_speedup(per_round["dense"], per_round["pruned"])
                figures[f"pruned/{runtime}/speedup_b{b}"] = speedup
                figures[f"pruned/{runtime}/speedup_iqr_b{b}"] = spread
                figures[f"pruned/{runtime}/speedup_over_macs_ratio_b{b}"] = speedup / macs_ratio
                records.append({
                    "runtime": runtime, "device": device, "threads": threads, "batch": b, "input_size": list(size),
                    "dense_ms": 1e3 * m["dense"].median, "dense_iqr_ms": 1e3 * m["dense"].iqr,
                    "pruned_ms": 1e3 * m["pruned"].median, "pruned_iqr_ms": 1e3 * m["pruned"].iqr,
                    "blocks": len(m["pruned"].times), "rounds": len(parts["pruned"]), "speedup": speedup,
                    "speedup_iqr": spread, "dense_round_ms": per_round["dense"], "pruned_round_ms": per_round["pruned"],
                    "speedup_over_macs_ratio": speedup / macs_ratio,
                })  # fmt: skip
                if effective_macs_ratio:
                    figures[f"pruned/{runtime}/speedup_over_effective_macs_ratio_b{b}"] = speedup / effective_macs_ratio
                    records[-1]["speedup_over_effective_macs_ratio"] = speedup / effective_macs_ratio
    finally:
        torch.set_num_threads(old)
    return figures, records
