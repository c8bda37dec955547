"""SparsityLogger: the method's per-epoch figures and the per-layer table after fit.

The method itself (masks, penalty gradient, prox) runs inside ``optimizer.step()``: the module attaches its
``GroupSparsity`` to the optimizer (``configure_optimizers``); no callback re-implements any part of it.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from lightning_sparse_mtl.sparsity.pruning import build_graph, prune_zero_channels, removable_channels
from lightning_sparse_mtl.sparsity.stats import flat_metrics, sparsity_stats


class SparsityLogger(L.Callback):
    """Logs ``sparsity/...`` (overall and per layer) every epoch and prints a per-layer table after fit.

    Statistics are computed once per epoch. When zero groups exist, ``sparsity/removable_channels``
    (consumer rule) comes from a dependency graph of the live net traced once (a 1x3xSxS probe, eval mode)
    and reused: no copy of the network is pruned per epoch. ``sparsity/encoder_params_left`` needs the
    pruned model, so it is measured (on a copy) only in the last epoch.
    """

    def __init__(self, probe_size: int = 64) -> None:
        self.probe_size = probe_size
        self._graph = None
        self.last_stats: dict | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stats = self.last_stats = sparsity_stats(pl_module.sparsity.groups)
        metrics = flat_metrics(stats)
        metrics["sparsity/lambda"] = pl_module.sparsity.current_lambda()
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        metrics.update(self.pruning_figures(pl_module.net, stats, params_left=last))
        pl_module.log_dict(metrics)

    @torch.no_grad()
    def pruning_figures(self, net: torch.nn.Module, stats: dict, params_left: bool = True) -> dict[str, float]:
        encoder_params = sum(p.numel() for p in net.encoder.parameters())
        if stats["zero_groups"] == 0:
            return {"sparsity/removable_channels": 0.0, "sparsity/encoder_params_left": float(encoder_params)}
        device = next(net.parameters()).device
        example = torch.rand(1, 3, self.probe_size, self.probe_size, device=device)
        if self._graph is None:
            was_training = net.training
            net.eval()  # tracing runs a forward: BN running statistics must not move
            try:
                self._graph = build_graph(net, example)
            finally:
                net.train(was_training)
        removable = removable_channels(net, example, net.head_output_layers(), graph=self._graph)
        figures = {"sparsity/removable_channels": float(sum(removable.values()))}
        if params_left:
            probe = copy.deepcopy(net).cpu().float()
            prune_zero_channels(probe, example.cpu(), ignored_layers=probe.head_output_layers())
            figures["sparsity/encoder_params_left"] = float(sum(p.numel() for p in probe.encoder.parameters()))
        return figures

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._graph = None
        if trainer.is_global_zero and pl_module.sparsity.active:
            print_layer_table(self.last_stats or sparsity_stats(pl_module.sparsity.groups))


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
