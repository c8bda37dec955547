"""The method: groups, penalty, proximal steps, freezing and statistics against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.references import reference_adam_prox
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.sparsity.controller import GroupSparsity, validate_sparsity_weight
from lightning_sparse_mtl.sparsity.groups import find_conv_groups, group_norms
from lightning_sparse_mtl.sparsity.penalty import add_penalty_grad_, group_penalty
from lightning_sparse_mtl.sparsity.prox import adam_soft_threshold_, soft_threshold_
from lightning_sparse_mtl.sparsity.stats import sparsity_stats


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 1))


def test_groups_are_input_channels_and_skip_the_image_conv() -> None:
    net = small_net()
    groups = find_conv_groups(net)
    assert [g.name for g in groups] == ["2", "4"]
    assert [(g.num_groups, g.group_size) for g in groups] == [(4, 6 * 9), (6, 5)]
    assert groups[0].sqrt_p == pytest.approx(math.sqrt(54))
    assert [g.name for g in find_conv_groups(net, exclude_image_conv=False, exclude=["^4$"])] == ["0", "2"]


def test_plain_prox_closed_form() -> None:
    w = torch.zeros(2, 3, 1, 1)
    w[:, 0] = torch.tensor([3.0, 4.0]).view(2, 1, 1)  # norm 5  -> scaled by 1 - 2/5
    w[:, 1] = torch.tensor([0.6, 0.8]).view(2, 1, 1)  # norm 1  -> below tau = 2 -> exactly 0
    w[:, 2] = torch.tensor([0.0, 10.0]).view(2, 1, 1)  # norm 10 -> frozen -> exactly 0
    expected0 = w[:, 0].clone() * (1 - 2 / 5)
    norms = soft_threshold_(w, 2.0, frozen=torch.tensor([False, False, True]))
    assert torch.equal(w[:, 0], expected0)
    assert torch.count_nonzero(w[:, 1:]) == 0
    assert norms.tolist() == pytest.approx([3.0, 0.0, 0.0])


def test_adam_prox_matches_reference_and_optimality() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    w[:, 3] *= 0.01  # a small group that must vanish
    d = torch.rand_like(w) * 5 + 0.1
    tau = 0.5
    ref = torch.stack([reference_adam_prox(w[:, c], d[:, c], tau).view(8, 3, 3) for c in range(5)], 1)
    x = w.clone()
    norms = adam_soft_threshold_(x, d.square(), tau, iters=6)  # v = D^2, eps = 0: the metric is D
    assert torch.count_nonzero(x[:, 3]) == 0
    assert torch.allclose(x, ref, atol=1e-6)
    assert torch.allclose(norms, group_norms(ref), atol=1e-6)
    # optimality: D (x - z) + tau x / ||x|| = 0 for non-zero groups
    for c in range(5):
        if group_norms(x)[c] > 0:
            grad = d[:, c] * (x[:, c] - w[:, c]) + tau * x[:, c] / torch.linalg.vector_norm(x[:, c])
            assert grad.abs().max() < 1e-6


def test_adam_prox_with_constant_metric_is_plain_prox() -> None:
    torch.manual_seed(2)
    w = torch.randn(4, 6, 3, 3)
    a, b = w.clone(), w.clone()
    adam_soft_threshold_(a, torch.full_like(a, 4.0), tau=3.0, iters=1)  # D = 2
    soft_threshold_(b, 1.5)  # tau / delta
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(a == 0, b == 0)


def test_penalty_value_and_gradient_by_hand() -> None:
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[3.0, 0.0], [4.0, 0.0], [0.0, 2.0]]).view(3, 2, 1, 1))
    groups = find_conv_groups(conv, exclude_image_conv=False)
    # norms: 5 and 2, sqrt(p) = sqrt(3)
    assert group_penalty(groups).item() == pytest.approx(math.sqrt(3) * 7)
    group_penalty(groups).backward()
    autograd = conv.weight.grad.clone()
    expected = math.sqrt(3) * torch.tensor([[3 / 5, 0.0], [4 / 5, 0.0], [0.0, 1.0]]).view(3, 2, 1, 1)
    assert torch.allclose(autograd, expected)
    conv.weight.grad = torch.ones_like(conv.weight)
    value = add_penalty_grad_(groups, 0.1)
    assert value == pytest.approx(0.1 * math.sqrt(3) * 7)
    assert torch.allclose(conv.weight.grad, 1 + 0.1 * expected)


def test_analytic_penalty_grad_equals_autograd_on_a_real_encoder() -> None:
    from segmentation_models_pytorch.encoders import get_encoder

    enc = get_encoder("resnet18", weights=None)
    with torch.no_grad():
        enc.layer2[0].conv1.weight[:, :7] = 0  # zero groups: subgradient 0
    groups = find_conv_groups(enc)
    (0.3 * group_penalty(groups)).backward()
    auto = [g.weight.grad.clone() for g in groups]
    for g in groups:
        g.weight.grad = None
    add_penalty_grad_(groups, 0.3)
    for g, a in zip(groups, auto):
        assert torch.allclose(g.weight.grad, torch.nan_to_num(a), atol=1e-6), g.name


def test_sparsity_stats_exact() -> None:
    net = small_net()
    groups = find_conv_groups(net)
    with torch.no_grad():
        groups[0].weight[:, [0, 2]] = 0  # 2 of 4 groups, size 54
        groups[1].weight[:, 5] = 0  # 1 of 6 groups, size 5
        groups[1].weight[0, 4] = 0  # a partial group is not a zero group
    stats = sparsity_stats(groups)
    assert stats["zero_groups"] == 3 and stats["total_groups"] == 10
    assert stats["group_sparsity"] == pytest.approx(30.0)
    assert stats["weight_sparsity"] == pytest.approx(100 * (2 * 54 + 5) / (4 * 54 + 6 * 5))
    assert stats["layers"]["2"] == {"groups": 4, "zero_groups": 2, "group_sparsity": pytest.approx(50.0)}


@pytest.mark.parametrize("bad", ["abc", -1e-4, float("nan"), True, None])
def test_bad_lambda_is_a_clear_error(bad: object) -> None:
    with pytest.raises(UserError, match="lambda must be"):
        validate_sparsity_weight(bad)


def test_lambda_schedule_warmup_and_ramp() -> None:
    s = GroupSparsity(find_conv_groups(small_net()), 1.0, warmup_epochs=2, schedule="linear", ramp_epochs=4)
    assert [s.lambda_at(e) for e in range(7)] == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1, 1])
    with pytest.warns(FutureWarning, match="use lambda_at"):
        assert s.weight_at(3) == pytest.approx(0.5)
    s.epoch = 3
    assert s.current_lambda() == pytest.approx(0.5)
    s.sparsity_weight = 4.0  # a plain attribute (what a lambda controller sets between steps)
    assert s.current_lambda() == pytest.approx(2.0)
    with pytest.raises(UserError, match="unknown sparsity.prox 'magic'; valid: adam, none, plain"):
        GroupSparsity([], 1.0, prox="magic")


def test_adam_prox_warm_start_one_iteration_and_safeguard() -> None:
    torch.manual_seed(3)
    w = torch.randn(16, 6, 3, 3, dtype=torch.float64)
    d = torch.rand_like(w) + 0.5
    ref = w.clone()
    r_ref = adam_soft_threshold_(ref, d.square(), 0.3, iters=8)
    near = w.clone()
    adam_soft_threshold_(near, d.square(), 0.3, iters=1, radius=r_ref * 1.01)  # warm start 1% off
    assert torch.allclose(near, ref, atol=1e-6)
    far = w.clone()
    adam_soft_threshold_(far, d.square(), 0.3, iters=1, radius=r_ref * 50)  # first step overshoots below 0
    assert torch.equal(far == 0, ref == 0)  # no live group zeroed by the solver
    assert torch.allclose(far, ref, atol=1e-6)


def test_penalty_grad_reuses_norms_left_by_the_prox() -> None:
    net = small_net()
    groups = find_conv_groups(net)
    sparsity = GroupSparsity(groups, 1e-2, prox="plain")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sparsity.prox_(opt, 1e-2)
    assert set(sparsity._norms) == {0, 1}
    for g in groups:
        g.weight.grad = torch.zeros_like(g.weight)
    cached = sparsity.add_penalty_grad_(1e-2)
    fresh_grads = [g.weight.grad.clone() for g in groups]
    for g in groups:
        g.weight.grad = torch.zeros_like(g.weight)
    assert cached == pytest.approx(add_penalty_grad_(groups, 1e-2), rel=1e-6)
    for g, fresh in zip(groups, fresh_grads):
        assert torch.allclose(g.weight.grad, fresh, atol=1e-7)
    with torch.no_grad():
        groups[0].weight.mul_(2.0)  # version bump: the cache must not be used
    for g in groups:
        g.weight.grad = torch.zeros_like(g.weight)
    assert sparsity.add_penalty_grad_(1e-2) == pytest.approx(1e-2 * group_penalty(groups).item(), rel=1e-6)
