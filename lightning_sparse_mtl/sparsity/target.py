"""Say what you want, not lambda: a controller that adapts lambda to reach a target sparsity or MACs budget.

:class:`LambdaController` is the decision rule alone (pure, no torch): at every update it compares a measured
fraction ``m`` (zero groups, or MACs removed) with a schedule ``s(t)`` that rises from 0 at ``start_step`` to the
target at ``end_step`` (cubic, Zhu & Gupta 2017: ``s = target * (1 - (1 - u)^3)``, fast first, flat at the end),
and integrates the relative error in log lambda::

    e = (s(t) - m) / target,   log lambda += clip(gain * e, -max_down, +max_up)

Groups that hit zero stay zero (unless ``revive``), so an overshoot cannot be undone: once ``m >= target``
lambda is cut by ``hold_factor`` and from then on falls while ``m >= target``, the error counting as at most
``-late_error`` (it rises again only if groups revive). Past ``end_step`` and still below target, the error
counts as at least ``late_error`` (0.5), so the last few groups do not take forever. The symmetric floor after
the target matters for coupled groups: one of them frees a whole residual-stream channel, and a lambda that fell
only by the tiny error ``(s - m) / target`` kept zeroing groups for the rest of the run (measured: MACs budget
0.25 ended at 0.224-0.229, a 0.015 creep over the last 330 steps; with the floor lambda falls ~100x in 100
steps). Every quantity it reads must be identical on all DDP ranks (the weights after the all-reduced step, the
step count), so every rank decides the same lambda.

:class:`TargetSparsity` binds a controller to a :class:`~lightning_sparse_mtl.sparsity.controller.GroupSparsity`
(anything with ``groups``, a mutable ``sparsity_weight`` and per-layer ``group_weights``): a step post-hook on
the optimizer (registered after the method's own hook, so it sees the weights after the prox) measures, sets
``gs.sparsity_weight`` for the next step, and caps layers: a layer whose zero fraction reaches
``max_layer_sparsity`` (checked after every step, not only at the controller's readings: measured, a layer of a
coupled run lost 0 -> 71% of its groups within 20 steps, between two readings 10 steps apart, with a cap of 0.55)
gets its group weight multiplied by ``CAP_FACTOR`` (1e-9: practically no penalty and no
threshold, so no more of its groups are zeroed; not exactly 0, where the Adam-weighted prox is undefined for
frozen groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.sparsity.coupled_prox import norms_of

SCHEDULES = ("cubic", "linear")
CAP_FACTOR = 1e-9


class LambdaController:
    """Multiplicative (log-space integral) lambda controller tracking a sparsity schedule; see the module doc."""

    def __init__(
        self,
        target: float,
        start_step: int,
        end_step: int,
        initial_weight: float,
        schedule: str = "cubic",
        gain: float = 0.1,
        max_up: float = math.log(1.05),
        max_down: float = math.log(2.0),
        hold_factor: float = 0.1,
        min_weight: float | None = None,
        max_weight: float | None = None,
    ) -> None:
        if not 0.0 < target < 1.0:
            raise UserError(f"a sparsity target must be a fraction in (0, 1), got {target!r}")
        if schedule not in SCHEDULES:
            raise UserError(f"unknown target schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not end_step > start_step >= 0:
            raise UserError(
                f"the target must be reached after sparsification starts (start step {start_step}, "
                f"target step {end_step}); raise sparsity.target_epoch or lower sparsity.warmup_epochs"
            )
        if not initial_weight > 0 or not math.isfinite(initial_weight):
            raise UserError(f"the controller's initial lambda must be > 0, got {initial_weight!r}")
        self.target, self.start_step, self.end_step = float(target), int(start_step), int(end_step)
        self.schedule, self.gain, self.max_up, self.max_down = schedule, gain, max_up, max_down
        self.hold_factor = hold_factor
        self.late_error = 0.5  # |error| floor: past end_step below target lambda grows, at the target it falls
        self.min_weight = min_weight if min_weight is not None else initial_weight * 1e-6
        self.max_weight = max_weight if max_weight is not None else initial_weight * 1e6
        self.log_weight = math.log(initial_weight)  # the integral term
        self.error_sum = 0.0  # sum of relative errors (diagnostic)
        self.reached = False
        self.last_step = -1
        self.last_measured = 0.0

    @property
    def sparsity_weight(self) -> float:
        return math.exp(self.log_weight)

    def scheduled(self, step: int) -> float:
        """The fraction the schedule asks for at ``step``."""
        u = min(1.0, max(0.0, (step - self.start_step) / (self.end_step - self.start_step)))
        if self.schedule == "linear":
            return self.target * u
        return self.target * (1.0 - (1.0 - u) ** 3)

    def update(self, step: int, measured: float) -> float:
        """Take the ``measured`` fraction after optimizer step ``step``; returns lambda for the next step."""
        self.last_step, self.last_measured = int(step), float(measured)
        if step < self.start_step:
            return self.sparsity_weight
        if measured >= self.target and not self.reached:
            self.reached = True
            self.log_weight += math.log(self.hold_factor)
        error = (self.scheduled(step) - measured) / self.target
        if self.reached and measured >= self.target:
            error = min(error, -self.late_error)  # at the target: lambda falls at a minimum pace, no creep past it
        elif step >= self.end_step and measured < self.target:
            error = max(error, self.late_error)  # schedule over, target not met: lambda keeps a minimum pace
        self.error_sum += error
        self.log_weight += min(self.max_up, max(-self.max_down, self.gain * error))
        self.log_weight = min(max(self.log_weight, math.log(self.min_weight)), math.log(self.max_weight))
        return self.sparsity_weight

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next lambda (plain types: loads with ``torch.load(weights_only=True)``)."""
        return {
            "log_weight": self.log_weight,
            "error_sum": self.error_sum,
            "reached": self.reached,
            "last_step": self.last_step,
            "last_measured": self.last_measured,
            "target": self.target,
            "start_step": self.start_step,
            "end_step": self.end_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("target", "start_step", "end_step"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(
                    f"the checkpoint's sparsity target controller has {key}={state[key]!r}, this run "
                    f"{getattr(self, key)!r}; resume with the same sparsity.target/target_macs/target_epoch"
                )
        self.log_weight = float(state["log_weight"])
        self.error_sum = float(state["error_sum"])
        self.reached = bool(state["reached"])
        self.last_step = int(state["last_step"])
        self.last_measured = float(state["last_measured"])


def zero_group_fraction(
    groups: Any, cached: Callable[[int], torch.Tensor | None] | None = None
) -> tuple[float, list[float]]:
    """(overall, per layer) fraction of exact-zero groups: the definition of ``sparsity/group_sparsity`` / 100.
    ``cached(i)``: layer ``i``'s (I,) group norms if still valid (the prox's own, computed this step), else None."""
    groups = list(groups)
    if not groups:
        return 0.0, []
    with torch.no_grad():
        norms = [(cached(i) if cached is not None else None) for i in range(len(groups))]
        counts = [((norms_of(g) if n is None else n) == 0).sum() for g, n in zip(groups, norms)]
        zeros = torch.stack(counts).tolist()  # one device sync for all layers (this runs after every step)
    sizes = [g.num_groups for g in groups]
    return sum(zeros) / max(sum(sizes), 1), [z / n for z, n in zip(zeros, sizes)]


class TargetSparsity:
    """Adapts ``gs.sparsity_weight`` after every optimizer step so that a measured fraction follows its target.

    ``measure``: None = fraction of zero groups of ``gs.groups``; or a callable returning the fraction to drive
    (e.g. ``lambda: 1 - meter.macs_fraction()`` for a MACs budget), read every ``every`` steps.
    ``max_layer_sparsity``: per-layer cap (1.0 = allow a layer to lose all its groups). ``apply_caps`` expects the
    GroupSparsity's uncapped weights (a fresh one): call :meth:`load_state_dict` once, right after building it.
    Use in a bare loop: ``gs.attach(opt)`` (or the method's own hook) first, then ``target.attach(opt)``.
    """

    def __init__(
        self,
        gs: Any,
        controller: LambdaController,
        measure: Callable[[], float] | None = None,
        every: int = 1,
        max_layer_sparsity: float = 0.9,
    ) -> None:
        if not 0.0 < max_layer_sparsity <= 1.0:
            raise UserError(f"sparsity.max_layer_sparsity must be in (0, 1], got {max_layer_sparsity!r}")
        self.gs, self.controller, self.measure = gs, controller, measure
        self.every, self.max_layer_sparsity = max(1, int(every)), max_layer_sparsity
        self.step = 0  # optimizer steps taken so far
        self.capped: list[str] = []
        self.trajectory: list[list[float]] = []  # [step, lambda in effect for the next step, measured fraction]
        self._handles: list = []
        gs.sparsity_weight = controller.sparsity_weight

    def attach(self, optimizer: torch.optim.Optimizer) -> TargetSparsity:
        """Register the step post-hook (after the prox hook, so it sees the weights the prox left)."""
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step()))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def after_step(self) -> float:
        """Count one optimizer step; measure, cap layers and update lambda when due. Returns lambda."""
        self.step += 1
        due = self.step % self.every == 0
        if self.step < self.controller.start_step or not (due or self.max_layer_sparsity < 1.0):
            return self.gs.sparsity_weight
        overall, per_layer = zero_group_fraction(self.gs.groups, getattr(self.gs, "cached_norms", None))
        self._cap_layers(per_layer)  # every step: between two readings a layer can lose most of its groups
        if not due:
            return self.gs.sparsity_weight
        measured = overall if self.measure is None else float(self.measure())
        lam = self.controller.update(self.step, measured)
        self.gs.sparsity_weight = lam
        self.trajectory.append([float(self.step), lam, measured])
        return lam

    def _cap_layers(self, per_layer: list[float]) -> None:
        if self.max_layer_sparsity >= 1.0:
            return
        for i, (g, frac) in enumerate(zip(self.gs.groups, per_layer)):
            if frac >= self.max_layer_sparsity and g.name not in self.capped:
                self.capped.append(g.name)
                self._scale_layer(i)

    def apply_caps(self) -> None:
        """Re-apply the saved layer caps (after :meth:`load_state_dict` on a freshly built GroupSparsity)."""
        for i, g in enumerate(self.gs.groups):
            if g.name in self.capped:
                self._scale_layer(i)

    def _scale_layer(self, i: int) -> None:
        """Layer ``i``'s group weights times CAP_FACTOR (through ``set_group_weight`` when the gs has one)."""
        if hasattr(self.gs, "set_group_weight"):
            self.gs.set_group_weight(i, self.gs.group_weights[i] * CAP_FACTOR)
        else:
            self.gs.group_weights[i] = self.gs.group_weights[i] * CAP_FACTOR

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "step": self.step,
            "capped": list(self.capped),
            "trajectory": [list(t) for t in self.trajectory],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.step = int(state["step"])
        self.capped = list(state["capped"])
        self.trajectory = [list(t) for t in state["trajectory"]]
        self.gs.sparsity_weight = self.controller.sparsity_weight
        self.apply_caps()


TARGET_KEYS = ("target", "target_macs", "target_epoch", "target_every", "target_lambda_init", "max_layer_sparsity")
# starting lambda of the controller when neither `lambda` nor sparsity.target_lambda_init is given, per prox
DEFAULT_INITIAL = {"adam": 1e-6, "plain": 1e-3}


def _fraction(key: str, value: object) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"sparsity.{key} must be a fraction in (0, 1), got {value!r}") from None
    if isinstance(value, bool) or not 0.0 < x < 1.0:
        raise UserError(f"sparsity.{key} must be a fraction in (0, 1), got {value!r}")
    return x


def target_settings(sparsity_cfg: dict, sparsity_weight: float, prox: str) -> tuple[dict | None, str | None]:
    """Pop the target keys from ``sparsity_cfg`` and validate them: (settings or None, one-line note or None).

    settings: {"kind": "groups"|"macs", "fraction": zero-group fraction or MACs fraction to remove,
    "target_epoch", "every", "initial", "max_layer_sparsity"}. Conflicts raise a one-line :class:`UserError`.
    """
    raw = {k: sparsity_cfg.pop(k, None) for k in TARGET_KEYS}
    target, macs = raw["target"], raw["target_macs"]
    if target is None and macs is None:
        return None, None
    if target is not None and macs is not None:
        raise UserError(
            f"sparsity.target={target} and sparsity.target_macs={macs} conflict: set one (target = fraction of "
            "zero groups, target_macs = pruned/dense MACs)"
        )
    if prox not in DEFAULT_INITIAL:
        raise UserError(f"sparsity.target/target_macs need a prox that makes exact zeros (adam or plain), got {prox!r}")
    key = "target" if target is not None else "target_macs"
    value = _fraction(key, target if target is not None else macs)
    note = None
    initial = raw["target_lambda_init"]
    if sparsity_weight > 0:
        if initial is not None:
            raise UserError(
                f"lambda={sparsity_weight:g} and sparsity.target_lambda_init={initial} conflict: with sparsity.{key} "
                "lambda is only the controller's starting value; set one of them"
            )
        initial = sparsity_weight
        note = (
            f"sparsity.{key}={value:g} wins over lambda={sparsity_weight:g}: lambda is the controller's starting value"
        )
    initial = float(initial) if initial is not None else DEFAULT_INITIAL[prox]
    if not initial > 0:
        raise UserError(f"sparsity.target_lambda_init must be > 0, got {raw['target_lambda_init']!r}")
    cap = float(raw["max_layer_sparsity"]) if raw["max_layer_sparsity"] is not None else 0.9
    if not 0.0 < cap <= 1.0:
        raise UserError(f"sparsity.max_layer_sparsity must be in (0, 1], got {raw['max_layer_sparsity']!r}")
    epoch = raw["target_epoch"]
    if epoch is not None and (isinstance(epoch, bool) or not float(epoch) > 0):
        raise UserError(f"sparsity.target_epoch must be a number of epochs > 0, got {epoch!r}")
    kind = "groups" if key == "target" else "macs"
    every = int(raw["target_every"]) if raw["target_every"] is not None else (1 if kind == "groups" else 10)
    if every < 1:
        raise UserError(f"sparsity.target_every must be >= 1, got {raw['target_every']!r}")
    return {
        "kind": kind,
        "fraction": value if kind == "groups" else 1.0 - value,
        "target_epoch": None if epoch is None else float(epoch),
        "every": every,
        "initial": initial,
        "max_layer_sparsity": cap,
    }, note


def build_target(
    gs: Any,
    settings: dict,
    steps_per_epoch: float,
    max_epochs: int,
    warmup_epochs: int = 0,
    macs_meter: Callable[[], Any] | None = None,
) -> TargetSparsity:
    """The :class:`TargetSparsity` for ``settings`` (from :func:`target_settings`); the target is reached at
    ``target_epoch`` (default: 70% of ``max_epochs``), counted in optimizer steps. ``macs_meter`` builds the
    :class:`~lightning_sparse_mtl.sparsity.costs.MacsMeter` for a MACs target."""
    epoch = settings["target_epoch"] or max(warmup_epochs + 1, round(0.7 * max_epochs))
    if epoch > max_epochs:
        raise UserError(f"sparsity.target_epoch={epoch:g} is after the last epoch (trainer.max_epochs={max_epochs})")
    controller = LambdaController(
        settings["fraction"],
        start_step=int(round(warmup_epochs * steps_per_epoch)),
        end_step=int(round(epoch * steps_per_epoch)),
        initial_weight=settings["initial"],
        gain=0.1 * settings["every"],  # the same lambda speed per step whatever the reading interval
        max_up=math.log(1.05) * settings["every"],
    )
    measure = None
    if settings["kind"] == "macs":
        meter = macs_meter()  # type: ignore[misc]

        def measure() -> float:
            return 1.0 - meter.macs_fraction()

    return TargetSparsity(gs, controller, measure, settings["every"], settings["max_layer_sparsity"])
