"""GroupSparsity: the whole method inside ``optimizer.step()`` (step pre/post hooks of any torch optimizer).

    gs = GroupSparsity.from_module(net, sparsity_weight=2e-5).attach(optimizer)   # then train as usual

The objective, per grouped layer with weight W (O, I, ...) and group weights w_c (default sqrt(p_g)):

    min_W  loss(W) + lambda * sum_layers sum_c w_c * ||W[:, c]||_2

solved by proximal gradient: the optimizer's step on the loss, then the prox of lr * lambda * sum_c w_c ||.||
(``prox="adam"``: in Adam's metric, Deleu & Bengio 2021; ``"plain"``: Euclidean soft-threshold). With
``penalty_grad=True`` lambda * dOmega/dW is also added to the gradient before the step (the seed's recipe,
``sparsity=paper``): with the Adam prox that counts the penalty twice (fixed point of about 2*lambda) and
inflates Adam's second moment (docs/method.md, "What λ means (measured)").

Before every step (pre-hook): the gradients of frozen groups are zeroed, the penalty gradient is added (if
used; multiplied by the loss scale when a GradScaler hands a fused optimizer still-scaled gradients). After
every step (post-hook, skipped when the scaler found inf/NaN): the prox, then groups that reached zero are
frozen (their optimizer state cleared once) unless ``revive``. The frozen masks are buffers, so they travel
with a checkpoint. ``sparsity_weight`` is a plain attribute: setting it between steps takes effect at the next.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from lightning_sparse_mtl.core.errors import NonFiniteLossError, UserError, unknown_name
from lightning_sparse_mtl.registry import Registry
from lightning_sparse_mtl.sparsity.coupled import CoupledGroup, find_coupled_groups
from lightning_sparse_mtl.sparsity.coupled_prox import (
    coupled_adam_soft_threshold_,
    coupled_penalty_grad_,
    coupled_soft_threshold_,
    coupled_zero_grads_,
    coupled_zero_state_,
    local_indices,
    norms_of,
)
from lightning_sparse_mtl.sparsity.groups import ConvGroup, find_conv_groups
from lightning_sparse_mtl.sparsity.penalty import add_penalty_grad_
from lightning_sparse_mtl.sparsity.prox import adam_soft_threshold_, compile_settings, soft_threshold_

SCHEDULES = ("constant", "linear")
GROUP_WEIGHTS = ("sqrt_size",)
GROUPINGS = ("input", "coupled")
ADAM_TYPES = (torch.optim.Adam, torch.optim.AdamW)
COMPILE_AFTER = 50  # prox steps before compile="auto" uses torch.compile (compiling the two kernels: ~20 s)

# prox operator: (sparsity, layer index, optimizer, param group, tau (I,), frozen (I,)) -> (I,) norms after
ProxFn = Callable[["GroupSparsity", int, torch.optim.Optimizer, dict, torch.Tensor, torch.Tensor], torch.Tensor]
PROX: Registry[ProxFn] = Registry("sparsity.prox")
PROX_KINDS = ("none", "plain", "adam")


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
    """The channel-wise l1/l2 method on ``groups`` with strength ``sparsity_weight`` (lambda).

    prox: "adam" (Adam-weighted, needs Adam/AdamW), "plain" soft-threshold, or "none" (penalty gradient only).
    penalty_grad: also add lambda * dOmega/dW to the gradients before the step (``penalty_in_loss``: old name).
    warmup_epochs: dense epochs first; schedule "linear" ramps lambda over ramp_epochs (reads ``self.epoch``).
    newton_iters / warm_iters: least Halley passes of the Adam prox without / with a warm start (more run until
    converged).
    revive: zero groups may grow back when the gradient beats the threshold (default: frozen at exact zero).
    group_weight: "sqrt_size" -> w_c = sqrt(p_g); ``self.group_weights[i]`` (I,) may be replaced.
    compile: True runs the Adam prox compiled: CPU float32 weights through the hand-written kernel of
    ``prox_cpu`` (built once in ~1 s), others fused by ``torch.compile`` (eager fallback where it cannot);
    "auto": the CPU kernel from the first step, ``torch.compile`` from the COMPILE_AFTER-th step on (short runs
    never pay its ~20 s compile); False: eager.
    """

    def __init__(
        self,
        groups: Sequence[ConvGroup],
        sparsity_weight: float = 0.0,
        prox: str = "adam",
        penalty_grad: bool = False,
        revive: bool = False,
        warmup_epochs: int = 0,
        schedule: str = "constant",
        ramp_epochs: int = 0,
        newton_iters: int = 1,
        warm_iters: int = 1,
        group_weight: str = "sqrt_size",
        compile: bool | str = "auto",
        penalty_in_loss: bool | None = None,
    ) -> None:
        super().__init__()
        PROX.get(prox)
        if schedule not in SCHEDULES:
            raise unknown_name("sparsity.schedule", schedule, SCHEDULES)
        if group_weight not in GROUP_WEIGHTS:
            raise unknown_name("sparsity.group_weight", group_weight, GROUP_WEIGHTS)
        if penalty_in_loss is not None:
            warnings.warn(
                "sparsity.penalty_in_loss is deprecated: it is a gradient added before the step; use "
                f"sparsity.penalty_grad={str(bool(penalty_in_loss)).lower()}",
                FutureWarning,
                stacklevel=2,
            )
            penalty_grad = bool(penalty_in_loss)
        self.groups = list(groups)
        self.sparsity_weight = validate_sparsity_weight(sparsity_weight)
        self.prox, self.penalty_grad, self.revive = prox, bool(penalty_grad), bool(revive)
        self.warmup_epochs, self.schedule, self.ramp_epochs = warmup_epochs, schedule, ramp_epochs
        self.newton_iters, self.warm_iters = newton_iters, warm_iters
        if compile not in (True, False, "auto"):
            raise unknown_name("sparsity.compile", compile, ("auto", "true", "false"))
        self.compile = compile
        self._prox_calls = 0
        self.epoch = 0  # set by the training loop (Lightning: the module, every epoch)
        self.steps = 0  # optimizer steps seen (for messages)
        self.last_penalty = 0.0  # lambda * Omega added at the last step (penalty_grad only)
        self.grouping = "coupled" if any(isinstance(g, CoupledGroup) for g in self.groups) else "input"
        for i, g in enumerate(self.groups):
            self.register_buffer(f"frozen_{i}", torch.zeros(g.num_groups, dtype=torch.bool, device=g.device))
            # per-group weights w_c (I,): not in the checkpoint (derived), but they move with the module
            self.register_buffer(f"group_weight_{i}", g.sqrt_sizes().to(g.device), persistent=False)
        # (I,) group norms left by the last prox, with the weight's version counter at that time: valid while
        # the weight is untouched, so the next penalty gradient needs no norm pass and Newton is warm-started.
        self._norms: dict[int, tuple[int, torch.Tensor]] = {}
        self._frozen_idx: dict[int, torch.Tensor] = {}  # indices of frozen groups, refreshed when they change
        self._handles: list = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._step_lam = 0.0

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        sparsity_weight: float,
        prox: str = "adam",
        *,
        exclude_image_conv: bool = True,
        exclude: Sequence[str] = (),
        prefix: str = "",
        groups: str = "input",
        example_inputs: object = None,
        shared: str | None = None,
        coupled_heads: bool = True,
        **kwargs,
    ) -> GroupSparsity:
        """The groups of ``module`` and the method on them.

        ``groups="input"`` (the seed's): one group per input channel of each conv (the image conv and
        ``exclude`` regexes left out). ``groups="coupled"``: one group per channel of each channel space of
        ``module``'s dependency graph (``sparsity.coupled``; traced once on ``example_inputs``, e.g. one
        (1, 3, H, W) batch at the training size; default a (1, 3, 64, 64) tensor). ``shared`` names the
        submodule whose spaces are grouped (e.g. "encoder" when ``module`` is the whole multi-task net) and
        ``coupled_heads`` lets the readers outside it (the heads) join those groups.
        """
        for pattern in exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise UserError(f"sparsity.exclude: bad regex {pattern!r} ({err})") from None
        if groups not in GROUPINGS:
            raise unknown_name("sparsity.groups", groups, GROUPINGS)
        if groups == "input":
            found = find_conv_groups(module, exclude_image_conv, exclude, prefix)
        else:
            if example_inputs is None:
                ref = next(module.parameters(), torch.zeros(()))
                example_inputs = torch.rand(1, 3, 64, 64, device=ref.device, dtype=ref.dtype)
            found = find_coupled_groups(module, example_inputs, shared, bool(coupled_heads), prefix, exclude)
        return cls(found, sparsity_weight, prox, **kwargs)

    # --- lambda: read in one place -------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether anything happens at lambda > 0 (the "none" prox without penalty gradient is dense)."""
        return self.sparsity_weight > 0 and len(self.groups) > 0 and (self.prox != "none" or self.penalty_grad)

    def lambda_at(self, epoch: int) -> float:
        """lambda in effect during ``epoch`` (0 during warm-up, ramped when schedule is linear)."""
        if not self.active or epoch < self.warmup_epochs:
            return 0.0
        if self.schedule == "linear" and self.ramp_epochs > 0:
            return self.sparsity_weight * min(1.0, (epoch - self.warmup_epochs + 1) / self.ramp_epochs)
        return self.sparsity_weight

    def current_lambda(self) -> float:
        """lambda for the next optimizer step (``sparsity_weight`` through the schedule at ``self.epoch``)."""
        return self.lambda_at(self.epoch)

    def weight_at(self, epoch: int) -> float:
        warnings.warn("GroupSparsity.weight_at is deprecated: use lambda_at", FutureWarning, stacklevel=2)
        return self.lambda_at(epoch)

    def frozen(self, i: int) -> torch.Tensor:
        """(I,) bool: the frozen (exactly zero) groups of layer ``i``."""
        return getattr(self, f"frozen_{i}")

    @property
    def group_weights(self) -> list[torch.Tensor]:
        """The (I,) group weights w_c of every layer (penalty and threshold: tau_c = lr * lambda * w_c)."""
        return [getattr(self, f"group_weight_{i}") for i in range(len(self.groups))]

    def set_group_weight(self, i: int, weight: torch.Tensor) -> None:
        """Replace layer ``i``'s (I,) group weights (e.g. cost-aware weights); takes effect at the next step."""
        weight = torch.as_tensor(weight, dtype=torch.float32).flatten()
        if weight.shape != (self.groups[i].num_groups,) or not bool(torch.isfinite(weight).all() & (weight >= 0).all()):
            raise UserError(
                f"group weights of {self.groups[i].name} must be {self.groups[i].num_groups} finite values >= 0"
            )
        setattr(self, f"group_weight_{i}", weight.to(self.frozen(i).device))

    # --- attaching to an optimizer ------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> GroupSparsity:
        """Run the method inside ``optimizer.step()`` from now on (replaces an earlier attachment).
        A second GroupSparsity on the same optimizer is refused: it would apply lambda twice."""
        self.detach()
        hooks = getattr(optimizer, "_optimizer_step_pre_hooks", {}).values()
        if any(isinstance(getattr(h, "__self__", None), GroupSparsity) for h in hooks):
            raise UserError(
                "this optimizer already has a GroupSparsity attached (two would apply lambda twice); detach() it "
                "first, or build one GroupSparsity over all the layers to sparsify"
            )
        if self.prox == "adam" and not isinstance(optimizer, ADAM_TYPES):
            raise UserError(
                f"sparsity prox 'adam' needs torch.optim.Adam or AdamW (it reads their second moments), got "
                f"{type(optimizer).__name__}; use prox='plain' (sparsity=prox) with other optimizers"
            )
        owned = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        missing = [g.name for g in self.groups if any(id(p) not in owned for p in g.params)]
        if missing:
            raise UserError(
                f"grouped weights are not in the optimizer ({', '.join(missing[:3])}...); "
                "do not freeze the grouped layers when lambda > 0"
            )
        for g in self.groups:
            if len({id(owned[id(p)]) for p in g.params}) > 1:
                raise UserError(
                    f"the weights of the coupled group {g.name} sit in different optimizer param groups; one group's "
                    "threshold needs one learning rate: put them in one param group"
                )
        self._optimizer = optimizer
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]
        return self

    def detach(self) -> None:
        """Remove the hooks; the optimizer steps plainly again."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._optimizer = [], None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # --- the hooks ----------------------------------------------------------------------------------
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict):
        """Read lambda for this step; mask + penalty now, or right after the closure when the step gets one
        (Lightning computes the gradients inside ``optimizer.step(closure)``)."""
        self._step_lam = self.current_lambda()
        if self._step_lam <= 0:
            return None
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if closure is None:
            self._before_step(optimizer, kwargs)
            return None

        def closure_then_method():
            loss = closure()
            self._before_step(optimizer, kwargs)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_method}
        return (args[0], closure_then_method, *args[2:]), kwargs

    @torch.no_grad()
    def _before_step(self, optimizer: torch.optim.Optimizer, kwargs: dict) -> None:
        lam = self._step_lam
        self.mask_frozen_grads_()
        if self.penalty_grad:
            value = self.add_penalty_grad_(lam, _grad_scale(optimizer, kwargs))
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"non-finite sparsity penalty at step {self.steps} (epoch {self.epoch}); "
                    "the grouped weights diverged: lower lambda or the learning rate"
                )
            self.last_penalty = value

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.steps += 1
        if self._step_lam > 0 and not _skipped(optimizer, kwargs):
            self.prox_(optimizer, self._step_lam)

    def mask_frozen_grads_(self) -> None:
        """Zero the gradients of frozen groups, so weights and optimizer state stay exactly zero in the step."""
        if self.revive:
            return
        for i, g in enumerate(self.groups):
            if i not in self._frozen_idx:  # after a change or a restore from a checkpoint
                frozen = self.frozen(i)
                coupled = isinstance(g, CoupledGroup)
                self._frozen_idx[i] = local_indices(g, frozen) if coupled else frozen.nonzero().flatten()
            if isinstance(g, CoupledGroup):
                coupled_zero_grads_(g, self._frozen_idx[i])
            elif self._frozen_idx[i].numel() and g.weight.grad is not None:
                g.weight.grad.index_fill_(1, self._frozen_idx[i], 0.0)

    def add_penalty_grad_(self, lam: float, grad_scale: torch.Tensor | None = None) -> float:
        """Add lam * dOmega/dW (times ``grad_scale`` for still-scaled grads); returns lam * Omega."""
        norms = [self.cached_norms(i) for i in range(len(self.groups))]
        if self.grouping == "input":
            return add_penalty_grad_(self.groups, lam, norms, self.group_weights, grad_scale)
        terms = [
            coupled_penalty_grad_(g, lam, w, n, grad_scale) for g, w, n in zip(self.groups, self.group_weights, norms)
        ]
        return lam * float(torch.stack(terms).sum()) if terms else 0.0

    def cached_norms(self, i: int) -> torch.Tensor | None:
        """Layer ``i``'s (I,) group norms as the last prox left them, or None if the weights changed since."""
        version, norms = self._norms.get(i, (None, None))
        return norms if version == self.groups[i].version() else None

    @torch.no_grad()
    def prox_(self, optimizer: torch.optim.Optimizer, lam: float) -> None:
        """Proximal step (after a real optimizer step), then freeze zero groups (weights and optimizer state)."""
        if lam <= 0:
            return
        groups_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        prox = PROX.get(self.prox)
        self._prox_calls += 1
        with compile_settings() if self._compiling() else nullcontext():
            self._prox_layers_(optimizer, lam, prox, groups_of)

    def _compiling(self) -> bool:
        return self.prox == "adam" and (
            self.compile is True or (self.compile == "auto" and self._prox_calls > COMPILE_AFTER)
        )

    def _prox_layers_(self, optimizer: torch.optim.Optimizer, lam: float, prox: Callable, groups_of: dict) -> None:
        for i, g in enumerate(self.groups):
            frozen = self.frozen(i)
            group = groups_of[id(g.params[0])]
            tau = (group["lr"] * lam) * getattr(self, f"group_weight_{i}")  # not the list property: 35x35 lookups
            norms = prox(self, i, optimizer, group, tau, frozen)
            self._norms[i] = (g.version(), norms)
            if self.revive:
                continue  # revival follows the prox: no state clearing, no masks
            fresh = (norms == 0) & ~frozen
            if fresh.any():  # groups zeroed by this step: clear their optimizer state once, freeze them
                if isinstance(g, CoupledGroup):
                    coupled_zero_state_(g, optimizer, fresh)
                else:
                    _zero_optimizer_state_(optimizer, g.weight, fresh)
                frozen |= fresh
                self._frozen_idx.pop(i, None)


@PROX.register("none")
def _prox_none(gs: GroupSparsity, i: int, optimizer, group: dict, tau: torch.Tensor, frozen: torch.Tensor):
    return _prox_plain(gs, i, optimizer, group, torch.zeros_like(tau), frozen)


@PROX.register("plain")
def _prox_plain(gs: GroupSparsity, i: int, optimizer, group: dict, tau: torch.Tensor, frozen: torch.Tensor):
    g = gs.groups[i]
    if isinstance(g, CoupledGroup):
        return coupled_soft_threshold_(g, tau, None if gs.revive else frozen)
    return soft_threshold_(g.weight, tau, None if gs.revive else frozen)


@PROX.register("adam")
def _prox_adam(gs: GroupSparsity, i: int, optimizer, group: dict, tau: torch.Tensor, frozen: torch.Tensor):
    if isinstance(gs.groups[i], CoupledGroup):
        return _prox_adam_coupled(gs, i, optimizer, group, tau, None if gs.revive else frozen)
    w = gs.groups[i].weight
    frozen = None if gs.revive else frozen
    state = optimizer.state.get(w, {})
    if "exp_avg_sq" not in state:  # before the optimizer's first step on this weight
        return soft_threshold_(w, 0.0, frozen)
    v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    bc2 = 1.0 - group["betas"][1] ** float(state["step"])
    warm = gs._norms.get(i, (None, None))[1]
    iters = gs.warm_iters if warm is not None else gs.newton_iters
    return adam_soft_threshold_(
        w,
        v,
        tau,
        frozen,
        iters,
        warm,
        bc2,
        group["eps"],
        compile=gs._compiling(),
        native=gs.compile in (True, "auto"),
    )


def _adam_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, group: dict) -> tuple | None:
    """(v, 1 / bias_correction2, eps) of ``param`` in an Adam/AdamW, None before its first step."""
    state = optimizer.state.get(param, {})
    if "exp_avg_sq" not in state:
        return None
    v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    return v, 1.0 / (1.0 - group["betas"][1] ** float(state["step"])), group["eps"]


def _prox_adam_coupled(gs: GroupSparsity, i: int, optimizer, group: dict, tau, frozen):
    g = gs.groups[i]
    states = [_adam_state(optimizer, p.param, group) for p in g.pieces]
    if any(s is None for s in states):  # before the optimizer's first step on one of the weights
        return coupled_soft_threshold_(g, 0.0, frozen)
    warm = gs._norms.get(i, (None, None))[1]
    iters = gs.warm_iters if warm is not None else gs.newton_iters
    native = gs.compile in (True, "auto")
    return coupled_adam_soft_threshold_(g, states, tau, frozen, iters, warm, native=native)


def _grad_scale(optimizer: torch.optim.Optimizer, kwargs: dict) -> torch.Tensor | None:
    """The loss scale still in the gradients: a GradScaler hands it to optimizers that unscale in their step
    (``fused=True``) as ``optimizer.grad_scale`` (torch >= 2.x) or a ``grad_scale`` step kwarg; None otherwise."""
    scale = kwargs.get("grad_scale", getattr(optimizer, "grad_scale", None))
    return None if scale is None else scale


def _skipped(optimizer: torch.optim.Optimizer, kwargs: dict) -> bool:
    """Whether a GradScaler told the optimizer that this step has inf/NaN gradients (the step did nothing)."""
    found_inf = kwargs.get("found_inf", getattr(optimizer, "found_inf", None))
    return found_inf is not None and bool(found_inf.item() > 0)


def _zero_optimizer_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, zero: torch.Tensor) -> None:
    """Zero the input-channel slices ``zero`` (I,) bool of every per-parameter state tensor shaped like ``param``."""
    idx = zero.nonzero().flatten()
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.index_fill_(1, idx, 0.0)


def group_norms_of(gs: GroupSparsity) -> list[torch.Tensor]:
    """(I,) group norms of every grouped layer (float32 at least)."""
    return [norms_of(g) for g in gs.groups]
