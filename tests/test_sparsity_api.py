"""GroupSparsity.attach(optimizer) in a bare PyTorch loop: exactness, frozen groups, scalers, precision, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers.references import reference_adam_prox
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.sparsity import GroupSparsity
from lightning_sparse_mtl.sparsity.prox import adam_soft_threshold_, channel_norms

README = Path(__file__).resolve().parents[1] / "README.md"


def net(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Conv2d(12, 6, 1)]
    return nn.Sequential(*layers).to(dtype)


def batches(n: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 10, 10, generator=g).to(dtype) for _ in range(n)]


def loss_fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x) - 0.3).square().mean()


def reference_layer(z: torch.Tensor, d: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.stack([reference_adam_prox(z[:, c], d[:, c], tau).view_as(z[:, c]) for c in range(z.shape[1])], 1)


def snapshot_before_prox(opt: torch.optim.Optimizer, weights: list[torch.Tensor], store: list) -> None:
    """A post-hook registered *before* attach: sees z (the weight after the optimizer step, before the prox)."""

    def hook(o, args, kwargs) -> None:
        entry = []
        for w in weights:
            state = o.state[w]
            key = "max_exp_avg_sq" if o.param_groups[0].get("amsgrad") else "exp_avg_sq"
            entry.append((w.detach().clone(), state[key].clone(), float(state["step"])))
        store.append(entry)

    opt.register_step_post_hook(hook)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("warm_iters", [1, 3])
def test_bare_loop_matches_independent_float64_adam_prox(amsgrad: bool, warm_iters: int) -> None:
    model = net(torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, betas=(0.9, 0.99), eps=1e-8, amsgrad=amsgrad)
    seen: list = []
    gs = GroupSparsity.from_module(model, sparsity_weight=2e-3, prox="adam", warm_iters=warm_iters)
    snapshot_before_prox(opt, [g.weight for g in gs.groups], seen)
    gs.attach(opt)
    lr, beta2, lam = 3e-2, 0.99, 2e-3
    for x in batches(12, torch.float64):
        opt.zero_grad()
        loss_fn(model, x).backward()
        opt.step()
        for g, (z, v, step) in zip(gs.groups, seen[-1]):
            d = (v / (1 - beta2**step)).sqrt() + 1e-8
            tau = lr * lam * g.sqrt_p
            ref = torch.stack(
                [reference_adam_prox(z[:, c], d[:, c], tau).view_as(z[:, c]) for c in range(z.shape[1])], 1
            )
            assert torch.equal(g.weight == 0, ref == 0), g.name  # the same exact zeros
            # Halley passes until converged: one warm pass (the default) is as exact as three (atol: tau_c is float32)
            assert torch.allclose(g.weight, ref, rtol=1e-7, atol=1e-8), (g.name, (g.weight - ref).abs().max())
    assert 0 < sum(int(gs.frozen(i).sum()) for i in range(len(gs.groups))) < sum(g.num_groups for g in gs.groups)


def test_amsgrad_uses_max_exp_avg_sq() -> None:
    model = net(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    gs = GroupSparsity.from_module(model, 1e-3).attach(opt)
    for i, x in enumerate(batches(6, torch.float64)):
        opt.zero_grad()
        (loss_fn(model, x) * (10.0 if i == 0 else 0.1)).backward()  # a large first gradient: max != current
        opt.step()
    w = gs.groups[0].weight
    state = opt.state[w]
    assert not torch.allclose(state["max_exp_avg_sq"], state["exp_avg_sq"])
    seen: list = []
    opt.zero_grad()
    loss_fn(model, batches(1, torch.float64, seed=9)[0]).backward()
    gs.detach()
    snapshot_before_prox(opt, [w], seen)
    gs.attach(opt)
    opt.step()
    z, vmax, step = seen[0][0]
    d = (vmax / (1 - 0.999**step)).sqrt() + 1e-8
    tau = 1e-2 * 1e-3 * gs.groups[0].sqrt_p
    ref = reference_layer(z, d, tau)
    assert torch.allclose(w, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("prox,opt_name", [("adam", "AdamW"), ("plain", "AdamW"), ("plain", "SGD")])
def test_frozen_groups_stay_exactly_zero_with_their_optimizer_state(prox: str, opt_name: str) -> None:
    model = net()
    opt = (
        torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        if opt_name == "AdamW"
        else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
    )
    gs = GroupSparsity.from_module(model, 10.0 if prox == "plain" else 0.1, prox=prox).attach(opt)
    data = batches(8)
    opt.zero_grad()
    loss_fn(model, data[0]).backward()
    opt.step()  # a strong lambda for one step: some groups reach exact zero and freeze
    frozen = [gs.frozen(i).clone() for i in range(len(gs.groups))]
    assert 0 < sum(int(f.sum()) for f in frozen) < sum(g.num_groups for g in gs.groups)
    gs.sparsity_weight = 1e-12  # now the threshold is nothing: only the freeze keeps them at zero
    for x in data[1:]:
        opt.zero_grad()
        loss_fn(model, x).backward()
        opt.step()
        for i, g in enumerate(gs.groups):
            w, idx = g.weight, frozen[i].nonzero().flatten()
            assert torch.equal(gs.frozen(i), frozen[i])
            assert w.grad[:, idx].abs().sum() == 0  # masked inside step()
            assert torch.count_nonzero(w[:, idx]) == 0
            for key, value in opt.state[w].items():
                if torch.is_tensor(value) and value.shape == w.shape:
                    assert torch.count_nonzero(value[:, idx]) == 0, key
    assert all(bool((channel_norms(g.weight)[~f] > 0).all()) for g, f in zip(gs.groups, frozen))  # others train


def test_revive_follows_the_prox_without_clearing_state() -> None:
    conv = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
    gs = GroupSparsity.from_module(conv, 0.5, prox="plain", exclude_image_conv=False, revive=True)
    opt = torch.optim.SGD(conv.parameters(), lr=1.0, momentum=0.5)
    gs.attach(opt)
    conv.weight.grad = torch.tensor([-2.0, -0.2]).view(1, 2, 1, 1)  # z = -lr*g = (2, 0.2); tau = lr*lam*1 = 0.5
    opt.step()
    assert conv.weight.flatten().tolist() == pytest.approx([1.5, 0.0])  # soft-threshold of z: one back, one not
    assert opt.state[conv.weight]["momentum_buffer"][0, 1].item() == pytest.approx(-0.2)  # state kept
    conv.weight.grad = torch.tensor([0.0, -0.5]).view(1, 2, 1, 1)  # momentum: buf = 0.5*(-0.2) - 0.5 = -0.6
    opt.step()
    assert conv.weight.flatten()[1].item() == pytest.approx(0.6 - 0.5)  # revived once the push beat tau
    assert not gs.frozen(0).any()


def test_cached_norm_is_the_weights_group_norm() -> None:
    model = net()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    gs = GroupSparsity.from_module(model, 1e-3, penalty_grad=True).attach(opt)
    for x in batches(4):
        opt.zero_grad()
        loss_fn(model, x).backward()
        opt.step()
        for i, g in enumerate(gs.groups):
            version, norms = gs._norms[i]
            assert version == g.version() == (g.weight._version,)
            assert torch.allclose(norms, channel_norms(g.weight), rtol=1e-6, atol=0)


def test_lambda_is_a_mutable_attribute_and_group_weights_can_be_replaced() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gs = GroupSparsity.from_module(model, 0.0, prox="plain").attach(opt)
    data = batches(3)
    before = [g.weight.detach().clone() for g in gs.groups]
    opt.zero_grad()
    loss_fn(model, data[0]).backward()
    grads = [g.weight.grad.clone() for g in gs.groups]
    opt.step()  # lambda = 0: a plain SGD step
    for g, w0, gr in zip(gs.groups, before, grads):
        assert torch.allclose(g.weight, w0 - 0.1 * gr)
    gs.sparsity_weight = 1e3  # takes effect at the next step
    gs.set_group_weight(1, torch.zeros(gs.groups[1].num_groups))  # layer 1: no threshold at all
    opt.zero_grad()
    loss_fn(model, data[1]).backward()
    opt.step()
    assert torch.count_nonzero(gs.groups[0].weight) == 0 and bool(gs.frozen(0).all())
    assert bool((channel_norms(gs.groups[1].weight) > 0).all())
    with pytest.raises(UserError, match="group weights of 4 must be 12 finite values >= 0"):
        gs.set_group_weight(1, torch.ones(3))


def test_attach_errors_and_detach() -> None:
    model = net()
    with pytest.raises(UserError, match="prox 'adam' needs torch.optim.Adam or AdamW.*got SGD"):
        GroupSparsity.from_module(model, 1e-3, prox="adam").attach(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(UserError, match=r"grouped weights are not in the optimizer \(2"):
        GroupSparsity.from_module(model, 1e-3).attach(torch.optim.Adam(model[4].parameters()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    gs = GroupSparsity.from_module(model, 1e3).attach(opt)
    gs.detach()
    assert not gs.attached
    loss_fn(model, batches(1)[0]).backward()
    opt.step()
    assert all(bool((channel_norms(g.weight) > 0).all()) for g in gs.groups)  # nothing ran inside step()


def train_run(fused: bool, scaler: bool, penalty_grad: bool, steps: int = 25, inject_inf_at: int = -1):
    model = net()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, fused=fused)
    gs = GroupSparsity.from_module(model, 3e-3, penalty_grad=penalty_grad).attach(opt)
    amp = torch.amp.GradScaler("cpu", init_scale=2.0**12) if scaler else None
    snapshots = []
    for i, x in enumerate(batches(steps)):
        opt.zero_grad()
        loss = loss_fn(model, x)
        (amp.scale(loss) if amp else loss).backward()
        if i == inject_inf_at:
            gs.groups[0].weight.grad[0, 0, 0, 0] = float("inf")
            snapshots.append([p.detach().clone() for p in model.parameters()])
        if amp:
            amp.step(opt)
            amp.update()
        else:
            opt.step()
        if i == inject_inf_at:
            snapshots.append([p.detach().clone() for p in model.parameters()])
    return model, gs, snapshots


@pytest.mark.parametrize("penalty_grad", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_and_fused_adamw_reach_the_fp32_result(fused: bool, penalty_grad: bool) -> None:
    ref_model, ref_gs, _ = train_run(fused=False, scaler=False, penalty_grad=penalty_grad)
    model, gs, _ = train_run(fused=fused, scaler=True, penalty_grad=penalty_grad)
    ref_frozen = [ref_gs.frozen(i).clone() for i in range(len(ref_gs.groups))]
    assert sum(int(f.sum()) for f in ref_frozen) > 0  # the run does sparsify
    for i in range(len(gs.groups)):
        assert torch.equal(gs.frozen(i), ref_frozen[i])  # the same groups are zero
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_skipped_scaler_step_skips_the_prox(fused: bool) -> None:
    _, _, (before, after) = train_run(fused=fused, scaler=True, penalty_grad=True, steps=6, inject_inf_at=4)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # neither the step nor the prox moved anything


def test_penalty_gradient_is_applied_to_unscaled_gradients() -> None:
    grads = {}
    for name, fused, scaled in (("plain", False, False), ("scaler", False, True), ("scaler+fused", True, True)):
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)
        gs = GroupSparsity.from_module(model, 0.05, prox="none", penalty_grad=True).attach(opt)
        amp = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        before = gs.groups[0].weight.detach().clone()
        loss = loss_fn(model, batches(1)[0])
        (amp.scale(loss) if scaled else loss).backward()
        amp.step(opt) if scaled else opt.step()
        grads[name] = (before - gs.groups[0].weight.detach()) / 0.1  # the gradient SGD applied
    assert torch.allclose(grads["scaler"], grads["plain"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads["scaler+fused"], grads["plain"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_get_the_float32_prox_exactly(dtype: torch.dtype) -> None:
    model = net(dtype)
    eps = 1e-6  # AdamW's own update needs an eps that fp16 can represent (1e-8 underflows to 0 -> 0/0 there)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=eps)
    gs = GroupSparsity.from_module(model, 5e-3)
    seen: list = []
    snapshot_before_prox(opt, [g.weight for g in gs.groups], seen)
    gs.attach(opt)
    radius: list = [None] * len(gs.groups)  # the warm start the prox will use: last step's group norms
    for x in batches(6, dtype):
        frozen_before = [gs.frozen(i).clone() for i in range(len(gs.groups))]
        opt.zero_grad()
        loss_fn(model, x).float().backward()
        opt.step()
        for i, (g, (z, v, step)) in enumerate(zip(gs.groups, seen[-1])):
            ref = z.float()
            iters = gs.newton_iters if radius[i] is None else gs.warm_iters
            tau = (1e-2 * 5e-3) * gs.group_weights[i]
            adam_soft_threshold_(ref, v.float(), tau, frozen_before[i], iters, radius[i], 1 - 0.999**step, eps)
            assert torch.isfinite(g.weight).all()
            assert torch.equal(g.weight, ref.to(dtype)), g.name  # float32 math, rounded once
        radius = [gs._norms[i][1].clone() for i in range(len(gs.groups))]
    assert sum(int(gs.frozen(i).sum()) for i in range(len(gs.groups))) > 0


def test_compile_falls_back_to_eager_when_unavailable(monkeypatch) -> None:
    from lightning_sparse_mtl.sparsity import prox as prox_module

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(prox_module, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    w = torch.randn(6, 4, 3, 3)
    v, radius = torch.rand_like(w), channel_norms(w)
    a, b = w.clone(), w.clone()
    with pytest.warns(UserWarning, match="running it eagerly"):
        adam_soft_threshold_(a, v, 0.01, None, 1, radius, 0.5, 1e-8, compile=True, native=False)
    adam_soft_threshold_(b, v, 0.01, None, 1, radius, 0.5, 1e-8, compile=False)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_compiled_prox_equals_eager() -> None:  # torch.compile (the CPU float32 kernel: test_prox_cpu.py)
    torch.manual_seed(5)
    for shape in ((16, 8, 3, 3), (12, 16, 1, 1), (10, 24)):
        w = torch.randn(shape)
        w[:, 0] *= 1e-3
        v, radius = torch.rand_like(w), channel_norms(w) * 0.9
        a, b = w.clone(), w.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no silent fallback
            na = adam_soft_threshold_(a, v, 0.05, None, 1, radius, 0.5, 1e-8, compile=True, native=False)
        nb = adam_soft_threshold_(b, v, 0.05, None, 1, radius, 0.5, 1e-8, compile=False)
        assert torch.equal(a == 0, b == 0) and torch.count_nonzero(a[:, 0]) == 0
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7) and torch.allclose(na, nb, rtol=1e-5)
    # the compiled update writes into the weight in place; bf16 weights go through a float32 copy, rounded once
    w = torch.randn(16, 8, 3, 3).bfloat16()
    v, radius = torch.rand_like(w), channel_norms(w) * 0.9
    a, b = w.clone(), w.clone()
    adam_soft_threshold_(a, v, 0.05, None, 1, radius, 0.5, 1e-8, compile=True)
    adam_soft_threshold_(b, v, 0.05, None, 1, radius, 0.5, 1e-8, compile=False)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b) and not torch.equal(a, w)


def test_two_dim_weights_are_grouped_by_input_feature() -> None:
    torch.manual_seed(6)
    w = torch.randn(7, 5, dtype=torch.float64)
    w[:, 2] *= 1e-3
    d = torch.rand_like(w) + 0.5
    ref = torch.stack([reference_adam_prox(w[:, c], d[:, c], 0.2) for c in range(5)], 1)
    x = w.clone()
    adam_soft_threshold_(x, d.square(), 0.2, iters=8)
    assert torch.count_nonzero(x[:, 2]) == 0 and torch.allclose(x, ref, atol=1e-9)


def test_penalty_in_loss_is_a_deprecated_alias() -> None:
    with pytest.warns(FutureWarning, match="use sparsity.penalty_grad=true"):
        gs = GroupSparsity.from_module(net(), 1e-3, penalty_in_loss=True)
    assert gs.penalty_grad


def test_readme_bare_loop_example_runs() -> None:
    """The bare-loop block of the README and of docs/method.md: marked runnable (tests/test_docs.py runs every such
    block), short, and it really sparsifies."""
    from helpers.docs import runnable_blocks

    examples = [b for b in runnable_blocks() if "GroupSparsity.from_module" in b.code and ".attach(" in b.code]
    assert {b.path.name for b in examples} >= {"README.md", "method.md"}
    example = next(b.code for b in examples if b.path == README)
    assert len(example.strip().splitlines()) <= 15
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    gs = scope["gs"]
    zero = sum(int((channel_norms(g.weight) == 0).sum()) for g in gs.groups)
    assert zero > 0  # the example really sparsifies


def test_module_attaches_through_the_same_path(train_cfg) -> None:
    from lightning_sparse_mtl.training.module import SparseMTLModule

    module = SparseMTLModule(train_cfg("lambda=1e-4"))
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert module.sparsity.attached and module.sparsity._optimizer is opt
    assert "on_before_optimizer_step" not in type(module).__dict__  # no second path around the step
    dense = SparseMTLModule(train_cfg("lambda=0"))
    dense.configure_optimizers()
    assert not dense.sparsity.attached


def test_lambda_means_the_stated_objective_and_paper_counts_it_twice() -> None:
    """Full-batch group lasso: Adam + the Adam prox ends at the exact solution for lambda; adding the penalty
    gradient as well (sparsity=paper) ends at the solution for 2*lambda (experiments/lambda_meaning.py)."""
    import sys

    sys.path.insert(0, str(README.parent / "experiments"))
    from lambda_meaning import adam_run, exact_group_lasso, problem

    x, y = problem()
    lam = 0.05
    exact, exact2 = exact_group_lasso(x, y, lam), exact_group_lasso(x, y, 2 * lam)

    def dist(w, e):
        return float(torch.linalg.vector_norm(w - e) / torch.linalg.vector_norm(e))

    assert dist(exact, exact2) > 0.05  # the two solutions are far apart
    alone = adam_run(x, y, lam, "adam", False, steps=3000)
    paper = adam_run(x, y, lam, "adam", True, steps=3000)
    assert dist(alone, exact) < 0.01 and dist(alone, exact2) > 0.04
    assert dist(paper, exact2) < 0.01 and dist(paper, exact) > 0.04
    assert torch.equal(channel_norms(alone) == 0, channel_norms(exact) == 0)  # the same exact zeros


def test_old_config_key_penalty_in_loss_still_works(train_cfg) -> None:
    from lightning_sparse_mtl.training.module import SparseMTLModule

    with pytest.warns(FutureWarning, match="penalty_in_loss is deprecated"):
        module = SparseMTLModule(train_cfg("lambda=1e-4", "sparsity.penalty_in_loss=true"))
    assert module.sparsity.penalty_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert not SparseMTLModule(train_cfg("lambda=1e-4")).sparsity.penalty_grad  # no warning by default
