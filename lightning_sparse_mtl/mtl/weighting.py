"""Task weighting strategies: fixed, uncertainty (Kendall et al. 2018), DWA (Liu et al. 2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.registry import Registry

WEIGHTINGS: Registry[type[nn.Module]] = Registry("weighting")


@WEIGHTINGS.register("fixed")
class FixedWeighting(nn.Module):
    """sum_t w_t * L_t with weights from config (missing tasks weigh 1)."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        weights = dict(weights or {})
        extra = sorted(set(weights) - set(tasks))
        if extra:
            raise UserError(f"task_weights names tasks not in tasks: {', '.join(extra)}")
        self.weights = {t: float(weights.get(t, 1.0)) for t in tasks}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.weights[t] * loss for t, loss in losses.items()]).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(self.weights)

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called with the epoch's mean training loss per task (used by DWA)."""


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(FixedWeighting):
    """sum_t w_t * (exp(-s_t) L_t + s_t) with learned log-variances s_t (optimised with the model)."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in tasks})

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = [
            self.weights[t] * (torch.exp(-self.log_vars[t]) * loss + self.log_vars[t]) for t, loss in losses.items()
        ]
        return torch.stack(terms).sum()

    def current_weights(self) -> dict[str, float]:
        return {t: self.weights[t] * float(torch.exp(-self.log_vars[t])) for t in self.weights}


@WEIGHTINGS.register("dwa")
class DWAWeighting(FixedWeighting):
    """Dynamic Weight Average: w_t = K softmax_t(r_t / T), r_t = L_t(e-1) / L_t(e-2); 1 for the first two epochs."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None, temperature: float = 2.0):
        super().__init__(tasks, weights)
        self.temperature = temperature
        self.history: list[dict[str, float]] = []
        self.dynamic = {t: 1.0 for t in tasks}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.weights[t] * self.dynamic[t] * loss for t, loss in losses.items()]).sum()

    def current_weights(self) -> dict[str, float]:
        return {t: self.weights[t] * self.dynamic[t] for t in self.weights}

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        self.history = [*self.history[-1:], dict(epoch_losses)]
        if len(self.history) < 2:
            return
        prev, last = self.history
        ratios = torch.tensor([last[t] / max(prev[t], 1e-12) for t in self.dynamic])
        w = len(ratios) * torch.softmax(ratios / self.temperature, 0)
        self.dynamic = {t: float(v) for t, v in zip(self.dynamic, w)}

    def get_extra_state(self) -> dict:
        return {"history": self.history, "dynamic": self.dynamic}

    def set_extra_state(self, state: dict) -> None:
        self.history, self.dynamic = state["history"], state["dynamic"]


def build_weighting(name: str, tasks: Sequence[str], weights: Mapping[str, float] | None = None, **kwargs) -> nn.Module:
    return WEIGHTINGS.get(name)(tasks, weights, **kwargs)
