"""The hand-written CPU kernel of the Adam prox (prox_cpu.c) against the eager operator, and its build path."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_sparse_mtl.sparsity import GroupSparsity, prox_cpu
from lightning_sparse_mtl.sparsity.prox import adam_soft_threshold_, channel_norms


def native_and_eager(w, v, tau, frozen=None, radius=None, iters=1):
    a, b = w.clone(), w.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback to torch.compile
        na = adam_soft_threshold_(a, v, tau, frozen, iters, radius, 0.5, 1e-8, compile=False, native=True)
    nb = adam_soft_threshold_(b, v, tau, frozen, iters, radius, 0.5, 1e-8, compile=False)
    return a, na, b, nb


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (12, 16, 1, 1), (10, 24), (5, 3, 5, 5), (64, 40, 3, 3)])
def test_native_kernel_equals_eager(shape) -> None:
    torch.manual_seed(sum(shape))
    w = torch.randn(shape)
    w[:, 0] *= 1e-3  # a group below the threshold
    v = torch.rand_like(w)
    frozen = torch.zeros(shape[1], dtype=torch.bool)
    frozen[1] = True
    for radius in (channel_norms(w) * 0.9, None):  # warm start, and a cold start (several passes)
        a, na, b, nb = native_and_eager(w, v, 0.05, frozen, radius)
        assert torch.equal(a == 0, b == 0) and torch.count_nonzero(a[:, :2]) == 0  # the same exact zeros
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(na, nb, rtol=1e-5, atol=0)
        torch.testing.assert_close(na, channel_norms(a), rtol=1e-5, atol=0)  # the norms returned are the weight's


def test_native_kernel_is_independent_of_the_thread_count() -> None:
    torch.manual_seed(1)
    w, v = torch.randn(33, 20, 3, 3), torch.rand(33, 20, 3, 3)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(native_and_eager(w, v, 0.1, radius=channel_norms(w))[0])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-7)


def test_zero_threshold_groups_stay_finite_in_every_path() -> None:
    """Bug: a zero group weight (tau = 0) with a frozen or all-zero group gave 0/0 = NaN in the update."""
    torch.manual_seed(2)
    w, v = torch.randn(8, 4, 3, 3), torch.rand(8, 4, 3, 3)
    w[:, 2] = 0.0
    frozen = torch.tensor([False, True, False, False])
    expect = w.clone()
    expect[:, 1] = 0.0
    for radius in (None, channel_norms(w)):
        a, na, b, nb = native_and_eager(w, v, 0.0, frozen, radius)
        for x, n in ((a, na), (b, nb)):
            assert torch.isfinite(x).all() and torch.isfinite(n).all()
            torch.testing.assert_close(x, expect, rtol=1e-5, atol=1e-6)  # tau = 0: identity on live groups


def test_group_sparsity_with_a_zero_group_weight_trains_finite() -> None:
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    gs = GroupSparsity.from_module(net, 5e-2, compile="auto").attach(opt)
    weights = torch.ones(8)
    weights[:4] = 0.0  # half the groups are free
    gs.set_group_weight(0, weights)
    for _ in range(6):
        opt.zero_grad()
        net(torch.randn(2, 3, 12, 12)).square().mean().backward()
        opt.step()
    w = gs.groups[0].weight
    assert torch.isfinite(w).all()
    assert bool((channel_norms(w)[:4] > 0).all())  # no threshold, no zeros


def test_kernel_build_is_cached_and_its_failure_is_one_warning(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(prox_cpu, "_LIB", {})
    assert prox_cpu.kernels() is not None
    built = list((tmp_path / "lightning_sparse_mtl" / "kernels").glob("*.so"))
    assert len(built) == 1 and prox_cpu.kernels() is prox_cpu.kernels()

    monkeypatch.setattr(prox_cpu, "_LIB", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match="could not be built"):
        assert prox_cpu.kernels() is None
    assert prox_cpu.kernels() is None  # decided once


def test_kernel_takes_only_cpu_float32_contiguous() -> None:
    z = torch.zeros(4, 9)
    assert prox_cpu.usable(z, z)
    assert not prox_cpu.usable(z.double(), z.double())
    assert not prox_cpu.usable(z.t(), z.t())


def test_auto_compile_runs_the_kernel_from_the_first_steps(monkeypatch) -> None:
    calls = []
    real = prox_cpu.halley_pass
    monkeypatch.setattr(prox_cpu, "halley_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for compile, expect_kernel in (("auto", True), (False, False)):
        calls.clear()
        gs = GroupSparsity.from_module(net, 1e-2, compile=compile).attach(opt)
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(2, 3, 10, 10)).square().mean().backward()
            opt.step()
        gs.detach()
        assert bool(calls) == expect_kernel


def test_subnormal_results_are_flushed_to_zero_in_every_path() -> None:
    """Bug: coordinates with no gradient (v = 0) shrank into the subnormal range and stayed there once the
    learning rate decayed; 146k such weights made CPU training steps 28% and eval 2x slower (docs/method.md,
    "The objective and where it runs")."""
    torch.manual_seed(4)
    w, v = torch.randn(8, 4, 3, 3), torch.rand(8, 4, 3, 3)
    w[:3] *= 1e-35  # rows nothing reads any more: no gradient, v = 0, tiny values
    v[:3] = 0.0
    tiny = torch.finfo(torch.float32).tiny
    for radius in (None, channel_norms(w)):
        a, na, b, nb = native_and_eager(w, v, 0.05, radius=radius)
        for x in (a, b):
            assert not ((x != 0) & (x.abs() < tiny)).any()  # no subnormals left
            assert torch.count_nonzero(x[:3]) == 0 and torch.count_nonzero(x[3:]) == x[3:].numel()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(na, channel_norms(a), rtol=1e-5, atol=0)
