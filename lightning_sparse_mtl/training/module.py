"""SparseMTLModule: one encoder pass, weighted task losses, and the group-sparsity method around the optimizer step."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig
from torch import nn

from lightning_sparse_mtl.core.configs import MODULE_KEYS, plain_config
from lightning_sparse_mtl.core.errors import NonFiniteLossError, unknown_name
from lightning_sparse_mtl.core.optim_checks import check_optimizer_objects
from lightning_sparse_mtl.data.datamodule import input_size_of
from lightning_sparse_mtl.models.build import build_net
from lightning_sparse_mtl.mtl.weighting import build_weighting
from lightning_sparse_mtl.peers import method_name, peer_settings
from lightning_sparse_mtl.peers.tp import TorchPruningCallback
from lightning_sparse_mtl.sparsity.controller import GroupSparsity, validate_sparsity_weight
from lightning_sparse_mtl.sparsity.costs import GROUP_WEIGHTS, MacsMeter, group_weights
from lightning_sparse_mtl.sparsity.target import TargetSparsity, build_target, target_settings
from lightning_sparse_mtl.training.callbacks import SparsityLogger

STAGES = ("val", "test")
__all__ = ["STAGES", "SparseMTLModule", "build_net"]  # build_net: moved to models.build, still importable here


class SparseMTLModule(L.LightningModule):
    """Multi-task training with channel-wise l1/l2 group sparsity on the shared encoder.

    ``cfg`` is the whole train config (kept in the checkpoint, so ``load_from_checkpoint(path)`` rebuilds
    the exact model). Batches are dicts ``{"image": (B,3,H,W), <task>: target}``.
    """

    def __init__(self, cfg: Mapping | DictConfig) -> None:
        super().__init__()
        method = plain_config(cfg, ("method",)).get("method")  # method=<arm> (peers/): not a module key
        cfg = plain_config(cfg, MODULE_KEYS)
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        self.sparsity_weight = validate_sparsity_weight(cfg["lambda"])
        self.net = build_net(cfg)
        self.task_names = list(self.net.tasks)
        weighting = dict(cfg.get("weighting") or {"name": "fixed"})
        self.weighting = build_weighting(weighting.pop("name"), self.task_names, cfg.get("task_weights"), **weighting)
        sp = dict(cfg.get("sparsity") or {})
        self.method = method_name(method)
        self.peer = peer_settings(method, sp, self.sparsity_weight)  # a peer arm takes sparsity.target_macs: popped
        target = sp.pop("module", "encoder")
        # target (issue 15): sparsity.target / target_macs adapt lambda; group_weight picks each group's weight
        self.target_settings, note = target_settings(sp, self.sparsity_weight, sp.get("prox", "adam"))
        if note:
            rank_zero_warn(note)
        self.group_weight_kind = sp.pop("group_weight", "sqrt_size") or "sqrt_size"
        if self.group_weight_kind not in GROUP_WEIGHTS:
            raise unknown_name("sparsity.group_weight", self.group_weight_kind, GROUP_WEIGHTS)
        start = self.target_settings["initial"] if self.target_settings else self.sparsity_weight
        # the whole method runs inside optimizer.step(): attached in configure_optimizers
        if sp.get("groups", "input") == "coupled":  # channel spaces of the whole net (heads may join), traced once
            example = torch.rand(1, 3, *input_size_of(cfg))
            self.sparsity = GroupSparsity.from_module(
                self.net, start, prefix="net.", example_inputs=example, shared=target, **sp
            )
        else:
            sp.pop("coupled_heads", None)
            self.sparsity = GroupSparsity.from_module(
                self.net.get_submodule(target), start, prefix=f"net.{target}.", **sp
            )
        self.target: TargetSparsity | None = None  # built at fit start (needs steps per epoch and the resolution)
        self._target_state: dict | None = None  # from a checkpoint, applied when the controller is built
        self.metrics = nn.ModuleDict(
            {s: nn.ModuleDict({t: spec.make_metric() for t, spec in self.net.tasks.items()}) for s in STAGES}
        )
        self._loss_sums: dict[str, torch.Tensor | float] = {}
        self._loss_count = 0

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(image)

    def task_losses(
        self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {t: self.net.tasks[t].loss(out[t], batch[t]) for t in self.task_names}

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.task_losses(self.net(batch["image"]), batch)
        loss = self.weighting(losses)
        if not torch.isfinite(loss):
            bad = [t for t, v in losses.items() if not torch.isfinite(v)] or ["weighted total"]
            raise NonFiniteLossError(
                f"non-finite {', '.join(bad)} loss at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); check the data for NaN targets or lower the learning rate"
            )
        bs = batch["image"].shape[0]
        if self.sparsity.penalty_grad and self.sparsity.active:
            self.log("train/sparsity_penalty", self.sparsity.last_penalty, batch_size=bs)  # of the last step
        # lambda in effect at this step (target, issue 15: adapted every step)
        self.log("sparsity/lambda", self.sparsity.lambda_at(self.current_epoch), on_step=True, on_epoch=False)
        self.log_dict({f"train/{t}/loss": v.detach() for t, v in losses.items()}, batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for t, v in losses.items():
            self._loss_sums[t] = self._loss_sums.get(t, 0.0) + v.detach()  # no host sync per step
        self._loss_count += 1
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.sparsity.epoch, self.sparsity.steps = self.current_epoch, self.global_step  # schedule + messages

    def on_fit_end(self) -> None:
        self.sparsity.detach()
        if self.target is not None:
            self.target.detach()

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            self.weighting.on_epoch_end({t: float(s) / self._loss_count for t, s in self._loss_sums.items()})
        self._loss_sums, self._loss_count = {}, 0
        for t, w in self.weighting.current_weights().items():
            self.log(f"train/{t}/weight", w)

    def _eval_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> None:
        out = self.net(batch["image"])
        loss = self.weighting(self.task_losses(out, batch))
        self.log(f"{stage}/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)
        for t in self.task_names:
            self.metrics[stage][t].update(out[t], batch[t])

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_metrics(self, stage: str) -> None:
        for t, metric in self.metrics[stage].items():
            for k, v in metric.compute().items():
                self.log(f"{stage}/{t}/{k}", v, prog_bar=stage == "val" and k in ("miou", "abs_err", "mean"))
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> Any:
        check_optimizer_objects(self.cfg)  # cfg may come from a file (load_from_checkpoint): torch classes only
        optimizer = instantiate(self.cfg["optimizer"], params=self.parameters())
        if self.sparsity.active:
            self.sparsity.attach(optimizer)  # masks, penalty gradient and prox inside optimizer.step()
        if not self.cfg.get("scheduler"):
            return optimizer
        sched = dict(self.cfg["scheduler"])
        interval = sched.pop("interval", "epoch")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": instantiate(sched, optimizer=optimizer), "interval": interval},
        }

    def on_fit_start(self) -> None:
        """Group weights (``sparsity.group_weight``) and the target controller, attached after the prox hook."""
        if self.group_weight_kind != "sqrt_size" or self.target_settings:
            example = torch.rand(1, 3, *input_size_of(self.cfg), device=self.device)
        if self.group_weight_kind != "sqrt_size":
            weights = group_weights(self.group_weight_kind, self.sparsity.groups, self.net, example)
            for i, (g, w) in enumerate(zip(self.sparsity.groups, weights)):
                self.sparsity.set_group_weight(i, torch.full((g.num_groups,), w))
        if not self.target_settings:
            return
        trainer = self.trainer
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        steps_per_epoch = trainer.estimated_stepping_batches / max_epochs
        self.target = build_target(
            self.sparsity,
            self.target_settings,
            steps_per_epoch,
            max_epochs,
            int(self.sparsity.warmup_epochs),
            macs_meter=lambda: MacsMeter(self.net, example, self.net.head_output_layers()),
        )
        if self._target_state is not None:
            self.target.load_state_dict(self._target_state)
        for opt in trainer.optimizers:
            self.target.attach(opt)

    def target_results(self) -> dict[str, Any]:
        """results.json entries of the target controller (empty without a target)."""
        if self.target is None:
            return {}
        return {
            "sparsity/final_lambda": self.sparsity.sparsity_weight,
            "sparsity/target": {**self.target_settings, "capped_layers": list(self.target.capped)},
            "lambda_trajectory": self.target.trajectory,  # [optimizer step, lambda for the next step, measured]
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states, so a resumed run draws the same random numbers as an uninterrupted one."""
        if self.target is not None:
            checkpoint["sparsity_target"] = self.target.state_dict()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {  # plain types and tensors only: loads with torch.load(weights_only=True)
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._target_state = checkpoint.get("sparsity_target")
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            name, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(states["python"])

    def configure_callbacks(self) -> list[L.Callback]:
        if self.peer is None:
            return [SparsityLogger()]
        if getattr(self, "peer_callback", None) is None:  # one for fit and test: train.py reads it after both
            self.peer_callback = TorchPruningCallback(self.peer)
        return [SparsityLogger(), self.peer_callback]
