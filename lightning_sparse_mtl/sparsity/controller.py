"""GroupSparsity: lambda schedule, penalty gradient, proximal step and frozen-group masks for one model.

The frozen masks are buffers, so they travel with the LightningModule checkpoint (resume keeps them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_sparse_mtl.runs.errors import UserError, unknown_name
from lightning_sparse_mtl.sparsity.groups import ConvGroup
from lightning_sparse_mtl.sparsity.penalty import add_penalty_grad_
from lightning_sparse_mtl.sparsity.prox import adam_soft_threshold_, soft_threshold_

PROX_KINDS = ("none", "plain", "adam")
SCHEDULES = ("constant", "linear")


def validate_sparsity_weight(value: object) -> float:
    """The ``lambda`` config value as a float >= 0, or a one-line error."""
    if isinstance(value, bool):
        raise UserError(f"lambda must be a number >= 0, got {value!r}")
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise UserError(f"lambda must be a number >= 0 (e.g. lambda=1e-4), got {value!r}") from None
    if not lam >= 0 or lam == float("inf"):
        raise UserError(f"lambda must be a finite number >= 0, got {value!r}")
    return lam


class GroupSparsity(nn.Module):
    """Applies the channel-wise l1/l2 method to ``groups`` with strength ``sparsity_weight`` (lambda).

    prox: "plain" soft-threshold, "adam" Adam-weighted soft-threshold, or "none" (penalty only).
    warmup_epochs: dense epochs before sparsification; schedule "linear" ramps lambda over ramp_epochs.
    revive: let zeroed groups grow back (default: frozen at exact zero, optimizer state masked too).
    """

    def __init__(
        self,
        groups: Sequence[ConvGroup],
        sparsity_weight: float = 0.0,
        prox: str = "adam",
        penalty_in_loss: bool = True,
        revive: bool = False,
        warmup_epochs: int = 0,
        schedule: str = "constant",
        ramp_epochs: int = 0,
        newton_iters: int = 3,
    ) -> None:
        super().__init__()
        if prox not in PROX_KINDS:
            raise unknown_name("sparsity.prox", prox, PROX_KINDS)
        if schedule not in SCHEDULES:
            raise unknown_name("sparsity.schedule", schedule, SCHEDULES)
        self.groups = list(groups)
        self.sparsity_weight = validate_sparsity_weight(sparsity_weight)
        self.prox, self.penalty_in_loss, self.revive = prox, penalty_in_loss, revive
        self.warmup_epochs, self.schedule, self.ramp_epochs = warmup_epochs, schedule, ramp_epochs
        self.newton_iters = newton_iters
        for i, g in enumerate(self.groups):
            self.register_buffer(f"frozen_{i}", torch.zeros(g.num_groups, dtype=torch.bool, device=g.weight.device))
        # group norms left by the last prox, keyed by layer, with the weight's version counter at that time:
        # valid while the weight is untouched, so the next penalty gradient needs no extra norm pass.
        self._norms: dict[int, tuple[int, torch.Tensor]] = {}
        self._frozen_idx: dict[int, torch.Tensor] = {}  # indices of frozen groups, refreshed when they change

    @property
    def active(self) -> bool:
        return self.sparsity_weight > 0 and len(self.groups) > 0

    def frozen(self, i: int) -> torch.Tensor:
        return getattr(self, f"frozen_{i}")

    def weight_at(self, epoch: int) -> float:
        """lambda in effect during ``epoch`` (0 during warm-up, ramped when schedule is linear)."""
        if not self.active or epoch < self.warmup_epochs:
            return 0.0
        if self.schedule == "linear" and self.ramp_epochs > 0:
            return self.sparsity_weight * min(1.0, (epoch - self.warmup_epochs + 1) / self.ramp_epochs)
        return self.sparsity_weight

    @torch.no_grad()
    def before_step_(self, lam: float) -> float:
        """Before a real optimizer step: zero the gradients of frozen groups (so the weights and the optimizer
        state of those groups stay exactly zero through the step), then add the penalty gradient. Returns lam*Omega.
        """
        if lam <= 0:
            return 0.0
        if not self.revive:
            for i, g in enumerate(self.groups):
                if i not in self._frozen_idx:  # after a change or a restore from a checkpoint
                    self._frozen_idx[i] = self.frozen(i).nonzero().flatten()
                if self._frozen_idx[i].numel() and g.weight.grad is not None:
                    g.weight.grad.index_fill_(1, self._frozen_idx[i], 0.0)
        return self.add_penalty_grad_(lam)

    def add_penalty_grad_(self, lam: float) -> float:
        """Add lam * dOmega/dW to the grads (when penalty_in_loss); returns lam * Omega for logging."""
        if lam <= 0 or not self.penalty_in_loss:
            return 0.0
        cached = [self._norms.get(i, (None, None)) for i in range(len(self.groups))]
        norms = [n if v == g.weight._version else None for g, (v, n) in zip(self.groups, cached)]
        return add_penalty_grad_(self.groups, lam, norms)

    @torch.no_grad()
    def prox_(self, optimizer: torch.optim.Optimizer, lam: float) -> None:
        """Proximal step after a real optimizer step, then freeze zero groups (weights and optimizer state)."""
        if lam <= 0:
            return
        groups_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        for i, g in enumerate(self.groups):
            w, frozen = g.weight, self.frozen(i)
            group = groups_of.get(id(w))
            if group is None:
                raise UserError(
                    "a grouped encoder weight is not in the optimizer; do not freeze the encoder when lambda > 0"
                )
            tau = group["lr"] * lam * g.sqrt_p
            if self.prox == "adam":
                d = _adam_metric(optimizer, group, w)
                if d is None:
                    norms = soft_threshold_(w, 0.0, frozen)
                else:
                    warm = self._norms.get(i, (None, None))[1]
                    iters = 1 if warm is not None else self.newton_iters
                    norms = adam_soft_threshold_(w, d, tau, frozen, iters, radius=warm)
            elif self.prox == "plain":
                norms = soft_threshold_(w, tau, frozen)
            else:
                norms = soft_threshold_(w, 0.0, frozen)
            self._norms[i] = (w._version, norms)
            zero = norms == 0
            fresh = zero if self.revive else zero & ~frozen
            if fresh.any():  # groups zeroed by this step: clear their optimizer state once
                _zero_optimizer_state_(optimizer, w, fresh)
                if not self.revive:
                    frozen |= zero
                self._frozen_idx.pop(i, None)


def _adam_metric(optimizer: torch.optim.Optimizer, group: dict, param: torch.Tensor) -> torch.Tensor | None:
    """D = sqrt(v_hat) + eps from Adam/AdamW state, (O, I, k, k); None before the first step."""
    state = optimizer.state.get(param, {})
    if "exp_avg_sq" not in state:
        if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            return None
        raise UserError(f"sparsity prox 'adam' needs an Adam/AdamW optimizer, got {type(optimizer).__name__}")
    step = float(state["step"])
    beta2 = group["betas"][1]
    v_hat = state["exp_avg_sq"] / (1.0 - beta2**step)
    return v_hat.sqrt_().add_(group["eps"])


def _zero_optimizer_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, zero: torch.Tensor) -> None:
    """Zero the input-channel slices ``zero`` (I,) bool of every per-parameter state tensor shaped like ``param``."""
    idx = zero.nonzero().flatten()
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.index_fill_(1, idx, 0.0)
