"""Proximal operators of the group penalty tau * sum_c ||W[:, c]||: exact zeros, no tolerance.

A group is the slice ``W[:, c]`` of a weight of any rank >= 2 (conv (O, I, k, k), linear (O, I)): every
reduction is over all dims except dim 1. Arithmetic is in float32 at least (bf16/fp16 weights and optimizer
state are upcast, the result is rounded back once), so low-precision weights neither lose the shrink to
rounding inside the solve nor underflow Adam's epsilon.

Plain:  W[:, c] <- W[:, c] * max(0, 1 - tau / ||W[:, c]||).
Adam-weighted (Deleu & Bengio 2021, arXiv 2102.03869), the prox in Adam's metric D = sqrt(v_hat) + eps:
    x = argmin_x 1/2 (x - z)^T D (x - z) + tau ||x||   per group, i.e.
    x = 0 if ||D z|| <= tau, else x_i = D_i z_i r / (D_i r + tau) with r = ||x|| the root of
    f(r) = sum_i (D_i z_i / (D_i r + tau))^2 = 1, found by Newton on q(r) = f(r)^(-1/2) - 1 (exact in one step
    when D is constant over the group), all groups of a layer at once.
Each operator returns the (I,) group norms of the weight *after* the step (the cache for the next penalty
gradient and the Newton warm start).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def group_dims(weight: torch.Tensor) -> tuple[int, ...]:
    """The dims a group reduces over: all but dim 1 (input channels / features)."""
    return (0, *range(2, weight.dim()))


def per_group(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(I,) -> a view that broadcasts against ``weight`` (O, I, ...)."""
    return values.view(1, -1, *([1] * (weight.dim() - 2)))


def channel_norms(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, ...) -> (I,) Euclidean norm of every group ``W[:, c]``, in float32 at least."""
    return torch.linalg.vector_norm(weight, dim=group_dims(weight), dtype=compute_dtype(weight))


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(weight.dtype, torch.float32)


@torch.no_grad()
def soft_threshold_(
    weight: torch.Tensor, tau: float | torch.Tensor, frozen: torch.Tensor | None = None
) -> torch.Tensor:
    """Group soft-threshold of ``weight`` (O, I, ...) in place; ``frozen`` (I,) bool groups are set to 0.

    ``tau``: a float or an (I,) tensor (one threshold per group). Returns the (I,) group norms after the step.
    """
    z = weight.to(compute_dtype(weight))
    norms = torch.linalg.vector_norm(z, dim=group_dims(z))
    scale = torch.clamp(1.0 - tau / norms.clamp_min(torch.finfo(norms.dtype).tiny), min=0.0)
    if frozen is not None:
        scale = scale.masked_fill(frozen, 0.0)
    if z is weight:
        weight.mul_(per_group(scale, weight))
    else:
        weight.copy_(z.mul_(per_group(scale, z)))
        return channel_norms(weight)
    return norms * scale


def _newton(u: torch.Tensor, d: torch.Tensor, tau: torch.Tensor, alive: torch.Tensor, r: torch.Tensor, iters: int):
    """``iters`` Newton steps on q(r) = f(r)^(-1/2) - 1 for every group (u = D z); dead groups get r = 0."""
    dims = group_dims(u)
    for _ in range(iters):
        a = torch.addcmul(per_group(tau, u), d, per_group(r, u))  # D r + tau
        t = u / a
        f = t.square_().sum(dims)
        df = -2.0 * t.mul_(d).div_(a).sum(dims)  # f'(r)
        q = f.rsqrt() - 1.0
        dq = -0.5 * f.pow(-1.5) * df
        r = torch.where(alive, (r - q / dq).clamp_min(0.0), torch.zeros_like(r))
    return r


def _alive(u: torch.Tensor, tau: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    return (torch.linalg.vector_norm(u, dim=group_dims(u)) > tau) & ~frozen


def _update(u: torch.Tensor, d: torch.Tensor, tau: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = D z r / (D r + tau) (exact zeros where r = 0) and its (I,) group norms."""
    rr = per_group(r, u)
    x = (u * rr).div_(torch.addcmul(per_group(tau, u), d, rr))
    return x, torch.linalg.vector_norm(x, dim=group_dims(u))


def _metric(v: torch.Tensor, inv_bc2: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return (v * inv_bc2).sqrt_().add_(eps)


def _solve_step(z, v, inv_bc2, eps, tau, frozen, r, iters: int):
    """Warm-started Newton steps and the update, in one function (what ``torch.compile`` fuses)."""
    d = _metric(v, inv_bc2, eps)
    u = d * z
    alive = _alive(u, tau, frozen)
    r = _newton(u, d, tau, alive, r, iters)
    x, norms = _update(u, d, tau, r)
    return x, norms, r, alive


_COMPILED: dict[str, Callable | None] = {}


def _compile_config():
    """No duck sizing (a layer with O == I must not tie the two sizes and recompile for the next layer) and
    room for the few graphs a network needs (ranks, 1x1 vs kxk)."""
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    patch_fx = fx_config.patch(use_duck_shape=False)
    patch_dynamo = torch._dynamo.config.patch(recompile_limit=32)

    class _Both:
        def __enter__(self):
            patch_fx.__enter__()
            patch_dynamo.__enter__()

        def __exit__(self, *exc):
            patch_dynamo.__exit__(*exc)
            patch_fx.__exit__(*exc)

    return _Both()


def _compiled_solve_step() -> Callable | None:
    """``torch.compile(_solve_step)`` (dynamic shapes), or None where compiling is not possible."""
    if "step" not in _COMPILED:
        try:
            _COMPILED["step"] = torch.compile(_solve_step, dynamic=True)
        except Exception as err:  # pragma: no cover - depends on the platform
            warnings.warn(f"torch.compile of the Adam prox is unavailable ({err}); running it eagerly", stacklevel=2)
            _COMPILED["step"] = None
    return _COMPILED["step"]


@torch.no_grad()
def adam_soft_threshold_(
    weight: torch.Tensor,
    v: torch.Tensor,
    tau: float | torch.Tensor,
    frozen: torch.Tensor | None = None,
    iters: int = 3,
    radius: torch.Tensor | None = None,
    bias_correction2: float = 1.0,
    eps: float = 0.0,
    compile: bool = False,
) -> torch.Tensor:
    """Adam-weighted group soft-threshold of ``weight`` (O, I, ...) in place.

    ``v`` (O, I, ...): Adam's (max) second moment; the metric is D = sqrt(v / bias_correction2) + eps > 0
    (pass ``v = D**2, eps = 0`` to give D directly). ``tau``: a float or an (I,) tensor.
    ``radius`` (I,) warm-starts Newton (e.g. the previous step's group norms): q is concave and increasing,
    so every Newton iterate after the first lies left of the root and converges monotonically
    (quadratically); groups whose iterate is still <= 0 get extra iterations, so no live group is zeroed
    by the solver. Without ``radius`` (cold start) Newton runs to convergence. With a warm start the solve
    and the update run as one compiled function when ``compile`` (eager fallback).
    Returns the (I,) group norms after the step (exactly 0 for zeroed groups).
    """
    dt = compute_dtype(weight)
    z, v = weight.to(dt), v.to(dt)
    frozen = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device) if frozen is None else frozen
    scalar = dict(dtype=dt, device=weight.device)
    inv_bc2, eps_t = (torch.tensor(x, **scalar) for x in (1.0 / bias_correction2, eps))
    tau_t = torch.as_tensor(tau, **scalar).expand(weight.shape[1])
    r0 = torch.zeros(weight.shape[1], **scalar) if radius is None else radius.to(dt)
    fn = _compiled_solve_step() if compile and radius is not None else None
    if fn is not None:
        try:
            with _compile_config():
                x, norms, r, alive = fn(z, v, inv_bc2, eps_t, tau_t, frozen, r0, iters)
        except Exception as err:  # pragma: no cover - compiler missing at run time
            warnings.warn(f"torch.compile of the Adam prox failed ({err}); running it eagerly", stacklevel=2)
            _COMPILED["step"] = fn = None
    if fn is None:
        d = _metric(v, inv_bc2, eps_t)
        u = d * z
        alive = _alive(u, tau_t, frozen)
        r = _newton(u, d, tau_t, alive, r0, iters)
        x = None
        if radius is None:  # cold start (once per layer): iterate to convergence
            tol = 1e-12 if dt == torch.float64 else 1e-6
            for _ in range(50):
                r_next = _newton(u, d, tau_t, alive, r, 1)
                done = bool(((r_next - r).abs() <= tol * r_next.abs().clamp_min(1e-30)).all())
                r = r_next
                if done:
                    break
    for _ in range(8):  # safeguard (rare): a live group whose iterate is still at 0
        if not bool((alive & (r <= 0)).any()):
            break
        if x is not None:  # came from the compiled path
            d = _metric(v, inv_bc2, eps_t)
            u = d * z
        r = _newton(u, d, tau_t, alive, r, 1)
        x = None
    if x is None:
        x, norms = _update(u, d, tau_t, r)
    weight.copy_(x)
    return norms if dt == weight.dtype else channel_norms(weight)
