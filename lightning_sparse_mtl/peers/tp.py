"""The Torch-Pruning arms (``method=tp_magnitude`` / ``tp_group_norm`` / ``tp_uniform``) as one Lightning callback.

Phases, in optimizer steps (:meth:`PeerSettings.schedule`): dense training; for ``tp_group_norm`` the
GroupNormPruner regulariser after every backward (``pruner.regularize(net)``); ``prune_steps`` pruning steps, each
calling ``pruner.step()`` (global ranking of Torch-Pruning's dependency groups by group L2 magnitude; ``tp_uniform``:
local, every group pruned to the same ratio, rounded to ``round_to``) until the MACs
fraction reaches that step's goal, the last goal being ``sparsity.target_macs``; fine-tuning to the end. The shared
encoder's channels are pruned, with the heads' input slices they feed; head layers are ignored (never roots), so the
outputs keep their shape. Pruning changes the net's shapes, so the optimizer is rebuilt (``configure_optimizers``)
and the learning rate and scheduler state carried over.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch_pruning as tp

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.data.datamodule import input_size_of
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.peers.densify import KeptChannels, dense_form
from lightning_sparse_mtl.peers.settings import PeerSettings
from lightning_sparse_mtl.peers.tp_uniform import NearestRoundPruner, prune_to_ratio_, uniform_ratio

SLACK = 0.003  # a pruning step stops within this MACs fraction above its goal (the study's tolerance is 0.02)


class TorchPruningCallback(L.Callback):
    """Runs a Torch-Pruning arm inside ``trainer.fit``; ``results()`` and ``dense_net()`` serve results.json."""

    def __init__(self, settings: PeerSettings) -> None:
        self.settings = settings
        self.pruner: tp.pruner.BasePruner | None = None
        self.kept: KeptChannels | None = None
        self.plan: dict[str, Any] = {}
        self.stages: list[dict[str, float | int]] = []  # one per pruning step: step, goal, MACs fraction reached
        self.dense_macs = 0
        self._next = 0  # index of the next pruning step
        self.ratio = 0.0  # cumulative channel pruning ratio reached (global; tp_uniform: every group's local ratio)
        self.regularised_steps = 0  # optimizer steps with the GroupNormPruner regulariser (tp_group_norm)
        self.rebuilds: list[dict[str, Any]] = []  # optimizer rebuilds: step, lr before/after, params of the pruned net

    # --- set-up ------------------------------------------------------------------------------------------
    def _example(self, pl_module: L.LightningModule) -> torch.Tensor:
        """(1, 3, H, W) random input at the training resolution, on the module's device."""
        return torch.rand(1, 3, *input_size_of(pl_module.cfg), device=pl_module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise UserError(f"method={self.settings.name} changes the net's shapes mid-training: run it on one device")
        if trainer.ckpt_path:
            raise UserError(f"method={self.settings.name} cannot resume from a checkpoint (its net is pruned in place)")
        self.plan = self.settings.schedule(int(trainer.estimated_stepping_batches))
        self.dense_macs = count_macs(pl_module.net, self._example(pl_module))
        self.kept = KeptChannels(pl_module.net)

    def _build_pruner(self, pl_module: L.LightningModule, net: torch.nn.Module | None = None) -> tp.pruner.BasePruner:
        """The arm's pruner over ``net`` (default: the module's net)."""
        net, s = pl_module.net if net is None else net, self.settings
        common = dict(
            example_inputs=self._example(pl_module),
            importance=tp.importance.GroupMagnitudeImportance(p=s.importance_p),
            global_pruning=s.global_pruning,  # False (tp_uniform): every dependency group loses the same fraction
            round_to=s.round_to,
            pruning_ratio=1.0,  # the per-step ratios are set by _pruner_step; the MACs goal decides where to stop
            max_pruning_ratio=s.max_pruning_ratio,
            iterative_steps=s.pruner_steps,
            ignored_layers=[net.heads],  # head layers are never roots: only encoder channels (+ heads' inputs) go
        )
        was_training = net.training
        net.eval()  # tracing runs a forward: BN running statistics must not move
        try:
            with torch.enable_grad():
                if s.name == "tp_group_norm":
                    return tp.pruner.GroupNormPruner(net, reg=s.reg, alpha=s.reg_alpha, **common)
                if not s.global_pruning:
                    return NearestRoundPruner(net, **common)  # tp_uniform: even widths, rounded to the nearest block
                return tp.pruner.BasePruner(net, **common)  # = tp.pruner.MagnitudePruner / MetaPruner
        finally:
            net.train(was_training)

    # --- training hooks ----------------------------------------------------------------------------------
    def _regularising(self, step: int) -> bool:
        prune_at = self.plan.get("prune_at") or [0]
        return self.settings.name == "tp_group_norm" and self.plan["sparse_start"] <= step < prune_at[0]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if batch_idx % max(trainer.accumulate_grad_batches, 1):
            return  # only between optimizer steps
        if self.pruner is None and (self._regularising(step) or self._due(step)):
            self.pruner = self._build_pruner(pl_module)
        pruned = False
        while self._due(step):
            self._prune_step(pl_module, step)
            pruned = True
        if pruned:
            before = trainer.optimizers[0].param_groups[0]["lr"]
            rebuild_optimizers(trainer)
            groups = trainer.optimizers[0].param_groups
            held = {id(p) for g in groups for p in g["params"]}
            complete = all(id(p) in held for p in pl_module.parameters())
            self.rebuilds.append(
                {"step": step, "lr_before": before, "lr_after": groups[0]["lr"], "optimizer_has_net_params": complete}
            )

    def _due(self, step: int) -> bool:
        return self._next < len(self.plan["prune_at"]) and self.plan["prune_at"][self._next] <= step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.pruner is not None and self._regularising(trainer.global_step):
            self.pruner.regularize(pl_module.net, alpha=2**self.settings.reg_alpha)  # adds to .grad
            self.regularised_steps += 1

    @torch.no_grad()
    def _prune_step(self, pl_module: L.LightningModule, step: int) -> None:
        """Prune to this pruning step's MACs goal (:meth:`_search_global`, or ``tp_uniform``'s
        :meth:`_prune_uniform`) and record the step: its goal, the MACs fraction reached, the ratio trajectory."""
        assert self.pruner is not None and self.kept is not None
        net, example = pl_module.net, self._example(pl_module)
        goal = self.settings.goal(self._next)
        fraction = count_macs(net, example) / self.dense_macs
        trajectory = [(round(self.ratio, 5), round(fraction, 5))]  # (channel ratio, MACs fraction) after each call
        was_training = net.training
        net.eval()
        try:
            if self.settings.global_pruning:
                calls, fraction = self._search_global(net, example, goal, fraction, trajectory)
            else:
                calls, fraction = self._prune_uniform(pl_module, net, example, goal, trajectory)
        finally:
            net.train(was_training)
        self.stages.append({"step": step, "goal": goal, "macs_fraction": fraction, "channel_ratio": self.ratio,
                            "pruner_steps": calls, "trajectory": trajectory})  # fmt: skip
        self._next += 1
        print(f"{self.settings.name}: pruning step {self._next}/{self.settings.prune_steps} at optimizer step {step}: "
              f"MACs fraction {fraction:.3f} (goal {goal:.3f}, {calls} pruner steps)")  # fmt: skip

    def _search_global(
        self, net: torch.nn.Module, example: torch.Tensor, goal: float, fraction: float, trajectory: list
    ) -> tuple[int, float]:
        """Global pruner steps until the MACs fraction is within ``SLACK`` above ``goal``; (calls, fraction).

        Each ``pruner.step()`` prunes to a cumulative global channel ratio r (of the encoder's prunable channels,
        ranked by group magnitude across all groups). r advances by 70% of the gap (50% within 0.02 of the goal) to
        the most cautious predicted ratio for the goal, at least ``1 / pruner_steps``: a handful of re-ranked steps.
        """
        fine, calls = 1.0 / self.settings.pruner_steps, 0
        last: tuple[float, float] | None = None  # (ratio, MACs fraction) before the last pruner step
        while fraction > goal + SLACK and self.ratio < 1.0:
            # the most cautious of three predictions: MACs ~ (1 - r)^2, the average slope since the dense net,
            # the secant through the last two points (steep after a plateau of cheap channels: never alone)
            guesses = [1.0 - (1.0 - self.ratio) * (goal / fraction) ** 0.5]
            if self.ratio > 0 and fraction < 1.0:
                guesses.append(self.ratio + (fraction - goal) * self.ratio / (1.0 - fraction))
            if last is not None and last[1] - fraction > 1e-9:
                guesses.append(self.ratio + (fraction - goal) * (self.ratio - last[0]) / (last[1] - fraction))
            predicted = min(guesses)
            last = (self.ratio, fraction)
            share = 0.7 if fraction - goal > 0.02 else 0.5  # approach from above
            self.ratio = min(1.0, self.ratio + max(fine, share * (predicted - self.ratio)))
            self._pruner_step(self.ratio)
            calls += 1
            fraction = count_macs(net, example) / self.dense_macs
            trajectory.append((round(self.ratio, 5), round(fraction, 5)))
        return calls, fraction

    def _prune_uniform(
        self, pl_module: L.LightningModule, net: torch.nn.Module, example: torch.Tensor, goal: float, trajectory: list
    ) -> tuple[int, float]:
        """``tp_uniform``: the one local ratio nearest ``goal`` (searched on copies,
        :func:`~lightning_sparse_mtl.peers.tp_uniform.uniform_ratio`), then one pruner step to it; (1, fraction)."""
        high = self.settings.max_pruning_ratio
        self.ratio, _ = uniform_ratio(net, lambda n: self._build_pruner(pl_module, n), example, goal,
                                      self.dense_macs, high)  # fmt: skip
        self._pruner_step(self.ratio)
        fraction = count_macs(net, example) / self.dense_macs
        trajectory.append((round(self.ratio, 5), round(fraction, 5)))
        if abs(fraction - goal) > 0.02:
            print(f"warning: method={self.settings.name}: no width fraction up to max_pruning_ratio={high:g} comes "
                  f"within 0.02 of the MACs goal {goal:.3f} (nearest: {fraction:.3f})")  # fmt: skip
        return 1, fraction

    def _pruner_step(self, ratio: float) -> None:
        """One ``pruner.step()`` to the cumulative channel pruning ratio ``ratio``; kept channels recorded."""
        assert self.pruner is not None and self.kept is not None
        prune_to_ratio_(self.pruner, ratio, self.kept.record)

    # --- after training ----------------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """results.json's ``peer`` entry: settings, schedule, MACs fraction after each pruning step, kept channels."""
        return {
            "method": self.settings.name,
            "settings": {k: v for k, v in vars(self.settings).items() if k != "name"},
            "schedule": self.plan,
            "stages": self.stages,
            "regularised_steps": self.regularised_steps,
            "optimizer_rebuilds": self.rebuilds,
            "macs_fraction": self.stages[-1]["macs_fraction"] if self.stages else 1.0,
            "kept_channels": self.kept.to_dict() if self.kept else {},
        }

    def dense_net(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """A net of the dense architecture holding the pruned weights, zeros where channels went (verified)."""
        assert self.kept is not None
        cfg, net = pl_module.cfg, pl_module.net.eval()
        data = cfg["data"]
        tasks = build_tasks(cfg["tasks"], data.get("num_classes"), data.get("attributes") or ())
        fresh = MultiTaskNet(tasks, **cfg["model"]).to(next(net.parameters()).device).eval()  # the dense architecture
        example = torch.rand(2, 3, *input_size_of(pl_module.cfg), device=next(net.parameters()).device)
        return dense_form(net, fresh, self.kept, example)


def rebuild_optimizers(trainer: L.Trainer) -> None:
    """New optimizer(s) over the pruned net's parameters (``configure_optimizers``), keeping each param group's
    learning rate and each lr scheduler's state (epoch/step count); the optimizer's moments start afresh."""
    lrs = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]
    states = [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]
    trainer.strategy.setup_optimizers(trainer)
    for opt, group_lrs in zip(trainer.optimizers, lrs):
        for g, lr in zip(opt.param_groups, group_lrs):
            g["lr"] = lr
    for config, state in zip(trainer.lr_scheduler_configs, states):
        config.scheduler.load_state_dict(state)


def dense_view(module: L.LightningModule) -> Any:
    """What ``deploy.compact.prune_and_measure`` reads (``.net``, ``.cfg``), with the Torch-Pruning arm's net in its
    dense form: the compact path prunes, exports and times it against the dense architecture, as for group lasso."""
    from types import SimpleNamespace

    return SimpleNamespace(net=module.peer_callback.dense_net(module), cfg=module.cfg)
