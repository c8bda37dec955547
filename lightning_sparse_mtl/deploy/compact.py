"""The compact model: prune a trained net (a copy), verify it, save it, and measure dense vs pruned."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate

from lightning_sparse_mtl.deploy.measure import count_macs, count_params, measure_latency
from lightning_sparse_mtl.runs.checkpoints import save_pruned
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels


def input_size_of(cfg: dict) -> tuple[int, int]:
    """(H, W) of the model input: ``data.input_size`` if set, else the first test image's size."""
    size = cfg["data"].get("input_size")
    if size:
        return (int(size[0]), int(size[1]))
    datamodule = instantiate(cfg["data"])
    return tuple(datamodule.build("test")[0]["image"].shape[-2:])  # type: ignore[return-value]


def latency_table(
    dense: torch.nn.Module, pruned: torch.nn.Module, size: tuple[int, int], batch_sizes: Sequence[int],
    repeats: int, threads: int, device: str = "cpu",
) -> dict[str, float]:  # fmt: skip
    """Median latency (ms) of dense and pruned, measured alternately (3 rounds) on random input of each batch size."""
    out: dict[str, float] = {}
    tag = "" if device == "cpu" else f"{device}_"
    for b in batch_sizes:
        x = torch.rand(b, 3, *size, device=device)
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        for _ in range(3):
            for name, net in (("dense", dense), ("pruned", pruned)):
                times[name].append(
                    measure_latency(net.to(device), x, warmup=2, repeats=repeats, threads=threads)["median"]
                )
        d, p = statistics.median(times["dense"]), statistics.median(times["pruned"])
        out[f"dense/{tag}latency_b{b}_ms"] = 1e3 * d
        out[f"pruned/{tag}latency_b{b}_ms"] = 1e3 * p
        out[f"pruned/{tag}speedup_b{b}"] = d / p
    return out


def prune_and_measure(
    module, output: Path, batch_sizes: Sequence[int] = (1, 8), repeats: int = 10, threads: int = 2
) -> dict | None:
    """Prune ``module.net`` (a copy), verify, save to ``output``, and return the ``pruned/...`` figures.

    Returns None (and changes nothing) when no channel is removable.
    """
    dense = module.net.eval()
    size = input_size_of(module.cfg)
    example = torch.rand(2, 3, *size)
    pruned = copy.deepcopy(dense)
    report = prune_zero_channels(pruned, example, ignored_layers=pruned.head_output_layers())
    removed = sum(report.channels_removed.values())
    if removed == 0:
        print("nothing to prune: no channel has all-zero weights in every layer that reads it (train with lambda > 0)")
        return None
    one = torch.rand(1, 3, *size)
    figures = {
        "dense/params": count_params(dense),
        "pruned/params": count_params(pruned),
        "dense/macs": count_macs(dense, one),
        "pruned/macs": count_macs(pruned, one),
        "pruned/channels_removed": removed,
        "pruned/max_abs_diff": report.max_abs_diff,
    }
    figures["pruned/macs_ratio"] = figures["dense/macs"] / max(figures["pruned/macs"], 1)
    figures.update(latency_table(dense, pruned, size, batch_sizes, repeats, threads))
    if torch.cuda.is_available():
        figures.update(latency_table(dense, pruned, size, batch_sizes, repeats, threads, device="cuda"))
        dense.cpu(), pruned.cpu()
    for b in batch_sizes:
        figures[f"pruned/speedup_over_macs_ratio_b{b}"] = figures[f"pruned/speedup_b{b}"] / figures["pruned/macs_ratio"]
    save_pruned(output, pruned, module.cfg, {**report.to_dict(), **figures})
    figures["pruned/path"] = str(output.resolve())
    return figures
