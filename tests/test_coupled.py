"""Coupled groups (``groups="coupled"``): a zero group is a removed channel; the prox is exact on groups that
span several tensors (checked against an independent per-group reference and the group-lasso optimality
conditions); frozen groups, optimizer state, penalty gradient and statistics work as for input groups."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.references import reference_adam_prox
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity import GroupSparsity, prune_zero_channels, sparsity_stats
from lightning_sparse_mtl.sparsity.costs import MacsMeter
from lightning_sparse_mtl.sparsity.coupled import CoupledGroup
from lightning_sparse_mtl.sparsity.coupled_prox import (
    coupled_adam_soft_threshold_,
    coupled_norms,
    coupled_soft_threshold_,
)


def _net(encoder: str = "resnet18", size: int = 32) -> tuple[MultiTaskNet, torch.Tensor]:
    torch.manual_seed(0)
    net = MultiTaskNet(build_tasks(["seg", "depth", "normal"], 11), encoder=encoder, output_stride=8, head_channels=16)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():  # non-trivial BN statistics, so a removed channel is not accidentally zero
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval(), torch.rand(2, 3, size, size)


class ConcatNet(nn.Module):
    """Two branches concatenated, then read by one conv: channel spaces that map into slices of one reader."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 5, 1), nn.BatchNorm2d(5), nn.ReLU())
        self.mix = nn.Conv2d(11, 7, 3, padding=1)
        self.out = nn.Conv2d(7, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        return self.out(torch.relu(self.mix(torch.cat([self.a(y), self.b(y)], 1))))


def _coverage(groups: list[CoupledGroup]) -> dict[int, torch.Tensor]:
    """Per parameter: how many groups each element belongs to."""
    counts: dict[int, torch.Tensor] = {}
    for g in groups:
        for p in g.pieces:
            c = counts.setdefault(id(p.param), torch.zeros(p.param.shape, dtype=torch.long))
            c.index_add_(p.dim, p.index, torch.ones_like(c).index_select(p.dim, p.index))
    return counts


@torch.no_grad()
def _zero_some(gs: GroupSparsity, seed: int = 0) -> dict[str, int]:
    """Zero a random proper subset of every group's channels (through the prox's frozen mask)."""
    g_ = torch.Generator().manual_seed(seed)
    zeroed = {}
    for g in gs.groups:
        mask = torch.rand(g.num_groups, generator=g_) < 0.5
        mask[0], mask[-1] = True, False
        coupled_soft_threshold_(g, 0.0, mask)
        zeroed[g.name] = int(mask.sum())
        assert torch.equal(coupled_norms(g) == 0, mask)
    return zeroed


ENCODERS = ["resnet18", "mobilenet_v2", "efficientnet-b0", "tu-convnext_atto"]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_zero_coupled_group_is_a_removed_channel(encoder: str) -> None:
    net, x = _net(encoder)
    gs = GroupSparsity.from_module(net, 1e-3, groups="coupled", example_inputs=x[:1], shared="encoder")
    assert gs.groups and all(isinstance(g, CoupledGroup) for g in gs.groups)
    assert max(int(c.max()) for c in _coverage(gs.groups).values()) == 1  # groups never overlap
    zeroed = _zero_some(gs)
    meter = MacsMeter(net, x[:1], net.head_output_layers())
    pruned = copy.deepcopy(net)
    report = prune_zero_channels(pruned, x, ignored_layers=pruned.head_output_layers())  # verifies outputs
    for name, n in zeroed.items():  # every zero group was removed, nothing else
        assert report.channels_removed.get(name, 0) == n, name
    assert sum(report.channels_removed.values()) == sum(zeroed.values())
    assert meter.pruned_macs() == report.macs_after  # the meter counts what the prune leaves
    stats = sparsity_stats(gs.groups)
    assert stats["zero_groups"] == sum(zeroed.values())


def test_resnet_streams_stem_and_heads_are_grouped() -> None:
    net, x = _net()
    gs = GroupSparsity.from_module(net, 1e-3, groups="coupled", example_inputs=x[:1], shared="encoder")
    names = [p.name for g in gs.groups for p in g.pieces]
    assert "encoder.conv1.weight" in names  # the stem's rows: its input (the image) is not grouped
    assert any(n.startswith("heads.seg.") for n in names)  # heads read the last stream
    last = gs.groups[-2]  # the layer4 stream (root: its downsample)
    readers = [p.name for p in last.pieces if p.dim == 1]
    assert any("heads.depth" in n for n in readers) and any("layer4.1.conv1" in n for n in readers)
    off = GroupSparsity.from_module(
        net, 1e-3, groups="coupled", example_inputs=x[:1], shared="encoder", coupled_heads=False
    )
    assert not any(p.name.startswith("heads.") for g in off.groups for p in g.pieces)
    assert len(off.groups) == len(gs.groups) - 1  # the stream the heads read stays dense


def test_concatenation_maps_channels_into_slices_of_the_reader() -> None:
    torch.manual_seed(0)
    net, x = ConcatNet().eval(), torch.rand(2, 3, 12, 12)
    gs = GroupSparsity.from_module(net, 1e-3, groups="coupled", example_inputs=x[:1])
    mix = {g.name: [p for p in g.pieces if p.name == "mix.weight"] for g in gs.groups}
    assert sorted(int(p[0].index.min()) for p in mix.values() if p) == [0, 6]  # a -> [0, 6), b -> [6, 11)
    zeroed = _zero_some(gs)
    report = prune_zero_channels(copy.deepcopy(net), x, ignored_layers=[net.out])
    assert sum(report.channels_removed.values()) == sum(zeroed.values())


def _group_vectors(g: CoupledGroup, tensors: dict[int, torch.Tensor], c: int) -> torch.Tensor:
    """The concatenated slices of group ``c`` read from ``tensors`` (by parameter id)."""
    parts = []
    for p in g.pieces:
        for j in p.index[p.channel == c].tolist():
            parts.append(tensors[id(p.param)].select(p.dim, j).flatten())
    return torch.cat(parts)


def _two_layers_and_bn(dtype=torch.float64, seed: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1)).to(dtype)


def test_coupled_adam_prox_matches_an_independent_reference_every_step() -> None:
    model = _two_layers_and_bn()
    torch.manual_seed(5)
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.randn(8, 4, 6, 6, dtype=torch.float64)
    lr, lam, beta2 = 3e-2, 1e-2, 0.99
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, beta2), weight_decay=0.0)
    gs = GroupSparsity.from_module(model, lam, groups="coupled", example_inputs=x[:1])
    (g,) = gs.groups  # conv0 rows + bias, BN gamma/beta, conv3 input slices: two layers and a BN
    assert {p.name for p in g.pieces} == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight"}
    seen: list = []
    opt.register_step_post_hook(
        lambda o, a, k: seen.append(
            (
                {id(p): p.detach().clone() for p in g.params},
                {id(p): o.state[p]["exp_avg_sq"].clone() for p in g.params},
                float(o.state[g.params[0]]["step"]),
            )  # fmt: skip
        )
    )
    gs.attach(opt)
    for _ in range(25):
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
        z, v, step = seen[-1]
        d = {k: (t / (1 - beta2**step)).sqrt() + 1e-8 for k, t in v.items()}
        now = {id(p): p.detach() for p in g.params}
        for c in range(g.num_groups):
            tau = lr * lam * float(g.sqrt_sizes()[c])
            ref = reference_adam_prox(_group_vectors(g, z, c), _group_vectors(g, d, c), tau)
            got = _group_vectors(g, now, c)
            assert torch.equal(got == 0, ref == 0) and torch.allclose(
                got, ref, rtol=1e-6, atol=1e-9
            )  # tau_c is float32
    assert 0 < int(gs.frozen(0).sum()) < g.num_groups


def _kkt_residual(model: nn.Module, g: CoupledGroup, loss_fn, lam: float) -> tuple[float, float]:
    """(worst |grad + lam w x/||x|||/lam over live groups, worst ||grad||/(lam w) over zero groups)."""
    model.zero_grad()
    loss_fn().backward()
    grads = {id(p): p.grad for p in g.params}
    vals = {id(p): p.detach() for p in g.params}
    live, dead = 0.0, 0.0
    for c in range(g.num_groups):
        w, gr = _group_vectors(g, vals, c), _group_vectors(g, grads, c)
        weight = lam * float(g.sqrt_sizes()[c])
        if float(w.norm()) == 0:
            dead = max(dead, float(gr.norm()) / weight)
        else:
            live = max(live, float((gr + weight * w / w.norm()).norm()) / weight)
    return live, dead


def _solve(method: str, lam: float = 1e-3, steps: int = 3000, ista_lr: float = 0.1) -> tuple[float, float, list[bool]]:
    def make(seed: int) -> nn.Sequential:  # BN in eval mode (a fixed affine map): a smooth, deterministic loss
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Conv2d(6, 2, 1)).double().eval()

    teacher = make(4)
    with torch.no_grad():  # channels 3, 4, 5 unused: a sparse truth
        teacher[0].weight[3:] = 0
        teacher[2].weight[:, 3:] = 0
    model = make(3)
    x = torch.randn(32, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = teacher(x).detach()

    def loss_fn():
        return (model(x) - y).square().mean()

    sched = None
    if method == "ista":
        opt = torch.optim.SGD(model.parameters(), lr=ista_lr)
        gs = GroupSparsity.from_module(model, lam, prox="plain", groups="coupled", example_inputs=x[:1], revive=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        gs = GroupSparsity.from_module(model, lam, groups="coupled", example_inputs=x[:1], revive=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s / 200))
    gs.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        if sched is not None:
            sched.step()
    (g,) = gs.groups
    live, dead = _kkt_residual(model, g, loss_fn, lam)
    return live, dead, (coupled_norms(g) == 0).tolist()


def test_coupled_prox_converges_to_a_group_lasso_solution() -> None:
    """Full-batch float64, groups spanning two layers and a BN: ISTA (SGD + the plain coupled prox, the reference
    method) and AdamW + the Adam-metric coupled prox both end at points that satisfy the group-lasso optimality
    conditions (live groups: grad = -lambda w x/||x||; zero groups: ||grad|| <= lambda w) with the same number of
    zero groups. The loss is bilinear in the two layers (not convex), so the two may pick different channels of
    a symmetric solution; the operator itself is checked exactly, step by step, in the test above."""
    ista, adam = _solve("ista", 3e-3, 3000, 0.2), _solve("adam", 3e-3, 3000)
    for live, dead, zeros in (ista, adam):
        assert 0 < sum(zeros) < len(zeros), zeros
        assert live < 5e-2 and dead <= 1.0 + 1e-6, (live, dead)
    assert sum(ista[2]) == sum(adam[2])


def test_frozen_coupled_groups_stay_zero_with_their_optimizer_state() -> None:
    net, x = _net(size=32)
    net.train()
    gs = GroupSparsity.from_module(net, 5e-2, groups="coupled", example_inputs=x[:1], shared="encoder")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    gs.attach(opt)
    target = torch.rand(2, 3, 32, 32)
    for _ in range(6):
        opt.zero_grad()
        (net(x)["depth"] - target[:, :1]).square().mean().backward()
        opt.step()
    frozen = [gs.frozen(i).clone() for i in range(len(gs.groups))]
    assert sum(int(f.sum()) for f in frozen) > 0
    gs.sparsity_weight = 1e-9  # the prox barely shrinks now: only the masks keep zeros at zero
    for _ in range(3):
        opt.zero_grad()
        (net(x)["depth"] - target[:, :1]).square().mean().backward()
        opt.step()
    for i, g in enumerate(gs.groups):
        assert torch.equal(coupled_norms(g) == 0, frozen[i] | (coupled_norms(g) == 0))
        assert bool((coupled_norms(g)[frozen[i]] == 0).all())
        for p in g.pieces:  # the optimizer state of frozen slices is zero
            idx = p.index[frozen[i][p.channel]]
            if idx.numel():
                assert int(opt.state[p.param]["exp_avg_sq"].index_select(p.dim, idx).count_nonzero()) == 0


def test_penalty_gradient_matches_autograd_on_coupled_groups() -> None:
    model = _two_layers_and_bn()
    gs = GroupSparsity.from_module(model, 0.1, groups="coupled", example_inputs=torch.rand(1, 3, 8, 8).double())
    (g,) = gs.groups
    for p in model.parameters():
        p.grad = None
    value = gs.add_penalty_grad_(0.1)
    mine = {id(p): p.grad.clone() for p in g.params}
    model.zero_grad()
    omega = sum(
        float(g.sqrt_sizes()[c]) * _group_vectors(g, {id(p): p for p in g.params}, c).norm()
        for c in range(g.num_groups)
    )
    (0.1 * omega).backward()
    assert abs(value - 0.1 * float(omega)) < 1e-9
    for p in g.params:
        assert torch.allclose(mine[id(p)], p.grad, atol=1e-12)


def test_bad_grouping_options_are_one_line_errors() -> None:
    net, x = _net()
    with pytest.raises(UserError, match="sparsity.groups"):
        GroupSparsity.from_module(net, 1e-3, groups="rows")
    with pytest.raises(UserError, match="no submodule 'backbone'"):
        GroupSparsity.from_module(net, 1e-3, groups="coupled", example_inputs=x[:1], shared="backbone")


def test_native_cpu_kernel_and_eager_coupled_prox_agree() -> None:
    """The CPU kernel's per-group sums (float32) give the eager path's result on every piece of a resnet."""
    net, x = _net()
    gs = GroupSparsity.from_module(net, 1e-3, groups="coupled", example_inputs=x[:1], shared="encoder")
    g = torch.Generator().manual_seed(0)
    for group in gs.groups:
        states = [(torch.rand(p.param.shape, generator=g) * 1e-4, 1.5, 1e-8) for p in group.pieces]
        n2 = torch.zeros(group.num_groups)  # ||D z||^2 per group: tau around it zeroes about half of them
        for p, (v, ib, eps) in zip(group.pieces, states):
            u = ((v * ib).sqrt() + eps) * p.param.detach()
            dims = [d for d in range(u.dim()) if d != p.dim]
            n2.index_add_(0, p.channel, (u.square().sum(dims) if dims else u.square())[p.index])
        tau = n2.sqrt() * (0.5 + torch.rand(group.num_groups, generator=g))
        before = {id(p.param): p.param.detach().clone() for p in group.pieces}
        eager = coupled_adam_soft_threshold_(group, states, tau, None, 1, None, native=False)
        after_eager = {k: p.detach().clone() for k, p in ((id(p.param), p.param) for p in group.pieces)}
        with torch.no_grad():
            for p in group.pieces:
                p.param.copy_(before[id(p.param)])
        native = coupled_adam_soft_threshold_(group, states, tau, None, 1, None, native=True)
        assert torch.equal(eager == 0, native == 0) and 0 < int((native == 0).sum()) < group.num_groups
        assert torch.allclose(eager, native, rtol=1e-4, atol=1e-7)
        for p in group.pieces:
            assert torch.allclose(p.param, after_eager[id(p.param)], rtol=1e-4, atol=1e-7), p.name


def test_the_library_default_is_the_fast_path(monkeypatch) -> None:
    """A bare loop that follows the README (no compile argument) runs the CPU kernel, for both groupings."""
    import lightning_sparse_mtl.sparsity.prox_cpu as prox_cpu

    calls = {"pass": 0, "sums": 0}
    real_pass, real_sums = prox_cpu.halley_pass, prox_cpu.halley_sums
    monkeypatch.setattr(prox_cpu, "halley_pass", lambda *a, **k: calls.__setitem__("pass", 1) or real_pass(*a, **k))
    monkeypatch.setattr(prox_cpu, "halley_sums", lambda *a, **k: calls.__setitem__("sums", 1) or real_sums(*a, **k))
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )
    for groups in ("input", "coupled"):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        gs = GroupSparsity.from_module(net, 1e-2, groups=groups, example_inputs=torch.rand(1, 3, 10, 10))
        assert gs.compile == "auto"
        gs.attach(opt)
        for _ in range(2):
            opt.zero_grad()
            net(torch.randn(2, 3, 10, 10)).square().mean().backward()
            opt.step()
        gs.detach()
    assert calls == {"pass": 1, "sums": 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_get_a_float32_coupled_prox(dtype: torch.dtype) -> None:
    """bf16/fp16 weights: the prox runs in float32 and rounds once; zero groups are exact zeros in every tensor."""
    model = _two_layers_and_bn(torch.float32)
    x = torch.randn(4, 3, 8, 8)
    ref = copy.deepcopy(model)
    gs = GroupSparsity.from_module(model.to(dtype), 0.0, groups="coupled", example_inputs=x[:1].to(dtype))
    gs_ref = GroupSparsity.from_module(ref, 0.0, groups="coupled", example_inputs=x[:1])
    (g,), (g_ref,) = gs.groups, gs_ref.groups
    tau = coupled_norms(g_ref) * torch.linspace(0.5, 1.5, g.num_groups)
    with torch.no_grad():  # the reference: the same bf16 values, in float32
        for p, q in zip(g.params, g_ref.params):
            q.copy_(p.float())
    got, want = coupled_soft_threshold_(g, tau), coupled_soft_threshold_(g_ref, tau)
    assert torch.equal(got == 0, want == 0) and 0 < int((got == 0).sum()) < g.num_groups
    for p, q in zip(g.params, g_ref.params):
        assert p.dtype == dtype and torch.equal(p, q.to(dtype))  # one rounding of the float32 result
