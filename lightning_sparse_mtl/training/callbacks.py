"""Callbacks of the method: ChannelZeroing (prox + freeze after every real optimizer step) and SparsityLogger."""

from __future__ import annotations

import copy

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels
from lightning_sparse_mtl.sparsity.stats import flat_metrics, sparsity_stats


class ChannelZeroing(L.Callback):
    """Runs the proximal step of ``pl_module.sparsity`` after each *real* optimizer step.

    It is a ``step`` post-hook on the torch optimizer, so it fires once per optimizer step under gradient
    accumulation and not at all when AMP's GradScaler skips a step with non-finite gradients.
    """

    def __init__(self) -> None:
        self._handles: list = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def hook(optimizer, args, kwargs) -> None:
            pl_module.sparsity.prox_(optimizer, pl_module.sparsity.weight_at(trainer.current_epoch))

        self._handles = [opt.register_step_post_hook(hook) for opt in trainer.optimizers]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)


class SparsityLogger(L.Callback):
    """Logs ``sparsity/...`` (overall and per layer) every epoch and prints a per-layer table after fit.

    When zero groups exist it also prunes a copy of the net (a 1x3x64x64 probe input) to log
    ``sparsity/removable_channels`` (consumer rule) and ``sparsity/encoder_params_left``.
    """

    def __init__(self, probe_size: int = 64) -> None:
        self.probe_size = probe_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stats = sparsity_stats(pl_module.sparsity.groups)
        metrics = flat_metrics(stats)
        metrics["sparsity/lambda"] = pl_module.sparsity.weight_at(trainer.current_epoch)
        metrics.update(self.pruning_figures(pl_module.net, stats))
        pl_module.log_dict(metrics)

    @torch.no_grad()
    def pruning_figures(self, net: torch.nn.Module, stats: dict) -> dict[str, float]:
        encoder_params = sum(p.numel() for p in net.encoder.parameters())
        if stats["zero_groups"] == 0:
            return {"sparsity/removable_channels": 0.0, "sparsity/encoder_params_left": float(encoder_params)}
        probe = copy.deepcopy(net).cpu().float()
        example = torch.rand(1, 3, self.probe_size, self.probe_size)
        report = prune_zero_channels(probe, example, ignored_layers=probe.head_output_layers())
        return {
            "sparsity/removable_channels": float(sum(report.channels_removed.values())),
            "sparsity/encoder_params_left": float(sum(p.numel() for p in probe.encoder.parameters())),
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and pl_module.sparsity.active:
            print_layer_table(sparsity_stats(pl_module.sparsity.groups))


def print_layer_table(stats: dict) -> None:
    """Per-layer group sparsity as a rich table."""
    table = Table(
        title=f"group sparsity {stats['group_sparsity']:.1f}% ({stats['zero_groups']}/{stats['total_groups']})"
    )
    for col in ("layer", "groups", "zero", "sparsity %"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, layer in stats["layers"].items():
        table.add_row(name, str(layer["groups"]), str(layer["zero_groups"]), f"{layer['group_sparsity']:.1f}")
    Console(width=200).print(table)
