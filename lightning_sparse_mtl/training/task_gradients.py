"""Per-task gradients on the shared encoder: their norms (loss-scale imbalance) and cosines (gradient conflict).

:func:`task_gradient_stats` is a pure function; :class:`TaskGradientProbe` logs it every N optimizer steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch


def task_gradient_stats(
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Norms and pairwise cosines of the per-task gradients ``g_t = d(w_t * loss_t) / d(params)``.

    ``losses``: task -> scalar loss (shape ``()``) whose graph reaches ``params``. ``params``: tensors of any
    shapes; ``g_t`` is conceptually their gradients flattened and concatenated (a vector of ``sum(p.numel())``
    entries; a param the loss does not reach, or one that does not require grad, contributes zeros).
    ``weights``: task -> w_t (a missing task weighs 1). Reductions are in float64, one param at a time (the Gram
    matrix of the tasks' gradients is accumulated, no concatenated copy is made).

    Returns ``{"<t>/norm": ||g_t||}`` per task, ``{"<a>~<b>/cos": cos(g_a, g_b)}`` per unordered pair (tasks in
    sorted order, a < b; 0 when either gradient is zero), ``"conflict_fraction"``: the fraction of pairs with
    cos < 0 (0 with fewer than two tasks), ``"norm_ratio"``: max norm / min norm (inf when a norm is 0 and
    another is not, 1 when all are 0). ``.grad`` of ``params`` is never written (``torch.autograd.grad``).
    """
    tasks = sorted(losses)
    weights = weights or {}
    params = list(params)
    live = [i for i, p in enumerate(params) if p.requires_grad]
    grads: list[list[torch.Tensor | None]] = []  # grads[task][param]
    for t in tasks:
        loss = float(weights.get(t, 1.0)) * losses[t]
        row: list[torch.Tensor | None] = [None] * len(params)
        if loss.requires_grad and live:
            found = torch.autograd.grad(loss, [params[i] for i in live], retain_graph=True, allow_unused=True)
            for i, g in zip(live, found):
                row[i] = g
        grads.append(row)
    n = len(tasks)
    device = params[0].device if params else torch.device("cpu")
    gram = torch.zeros(n, n, dtype=torch.float64, device=device)  # gram[a, b] = <g_a, g_b>
    for j, p in enumerate(params):
        rows = [grads[k][j] for k in range(n)]
        if all(g is None for g in rows):
            continue
        flat = torch.stack([(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g in rows])
        gram += flat @ flat.T  # (n, numel) @ (numel, n)
    norms = gram.diagonal().clamp_min(0).sqrt().tolist()
    stats: dict[str, float] = {f"{t}/norm": norms[k] for k, t in enumerate(tasks)}
    pairs = list(itertools.combinations(range(n), 2))
    conflicts = 0
    for a, b in pairs:
        denom = norms[a] * norms[b]
        cos = float(gram[a, b]) / denom if denom > 0 else 0.0
        stats[f"{tasks[a]}~{tasks[b]}/cos"] = cos
        conflicts += cos < 0
    stats["conflict_fraction"] = conflicts / len(pairs) if pairs else 0.0
    high, low = (max(norms), min(norms)) if norms else (0.0, 0.0)
    stats["norm_ratio"] = high / low if low > 0 else (float("inf") if high > 0 else 1.0)
    return stats


class TaskGradientProbe(L.Callback):
    """Logs :func:`task_gradient_stats` of the shared encoder as ``task_grad/<key>`` every ``every_n_steps``.

    At the end of a training batch whose ``global_step`` is a positive multiple of ``every_n_steps`` (once per
    optimizer step), with two tasks or more: one extra forward of the batch's image (the model in its current mode
    and the trainer's precision context, as the training forward), the
    module's ``task_losses``, the weighting's ``current_weights()`` (1 without one) and one backward per task
    (``torch.autograd.grad``) onto the encoder parameters that require grad. Training is left as it was: no
    optimizer interaction, ``.grad`` untouched, torch's CPU (and the module's CUDA device's) RNG state and the
    net's buffers (BatchNorm running statistics) restored after the extra forward.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        tasks = list(getattr(pl_module, "task_names", []))
        if step == 0 or step % self.every_n_steps or step == self._last_step or len(tasks) < 2:
            return  # step 0: no optimizer step yet (gradient accumulation's first batches)
        self._last_step = step  # with gradient accumulation several batches end at the same step
        with trainer.strategy.precision_plugin.forward_context():  # the training forward's autocast (bf16/fp16)
            stats = self.measure(pl_module, batch)
        bs = batch["image"].shape[0]
        logged = {f"task_grad/{k}": v for k, v in stats.items()}
        # every rank probes at the same step: the epoch means are averaged over ranks
        pl_module.log_dict(logged, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)

    @staticmethod
    def measure(pl_module: L.LightningModule, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """:func:`task_gradient_stats` of ``pl_module`` on ``batch`` (``{"image": (B,3,H,W), <task>: target}``)."""
        net = pl_module.net
        params = [p for p in net.encoder.parameters() if p.requires_grad]
        weighting = getattr(pl_module, "weighting", None)
        weights = weighting.current_weights() if hasattr(weighting, "current_weights") else None
        buffers = [(b, b.detach().clone()) for b in net.buffers()]
        device = batch["image"].device
        cuda = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        try:
            with torch.random.fork_rng(devices=cuda), torch.enable_grad():
                losses = pl_module.task_losses(net(batch["image"]), batch)
                return task_gradient_stats(losses, params, weights)
        finally:
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)
