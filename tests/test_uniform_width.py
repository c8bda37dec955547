"""The uniform-width speed reference (``experiments/uniform_width_copies.py``): every coupled space keeps the same
fraction of its channels (multiples of ``round_to``), pruning removes exactly the rest, and the budget search
lands on the MACs fraction it reports."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers.runs import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_coupled import _net

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.sparsity import prune_zero_channels
from lightning_sparse_mtl.sparsity.costs import MacsMeter
from lightning_sparse_mtl.sparsity.coupled import find_coupled_groups


def _script():
    path = ROOT / "experiments" / "uniform_width_copies.py"
    spec = importlib.util.spec_from_file_location("uniform_width_copies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kept_width_is_a_multiple_of_round_to_within_the_space() -> None:
    kw = _script().kept_width
    assert kw(64, 0.32, 8) == 24  # 20.48 channels -> 3 blocks of 8
    assert kw(512, 0.25, 8) == 128
    assert kw(16, 0.01, 8) == 8  # at least one block
    assert kw(20, 1.0, 8) == 20  # never wider than the space
    assert kw(10, 0.5, 1) == 5


def test_zeroed_spaces_prune_to_the_uniform_width_and_the_meter_agrees() -> None:
    script = _script()
    net, x = _net()
    groups = find_coupled_groups(net, x[:1], shared="encoder", coupled_heads=True)
    dense_macs = count_macs(net, x[:1])
    before = {id(p.param): p.param.detach().clone() for g in groups for p in g.pieces}
    kept = script.zero_uniform(groups, 0.3, round_to=8)
    assert len(kept) == len(groups) and kept == [script.kept_width(g.num_groups, 0.3, 8) for g in groups]
    for g, k in zip(groups, kept):  # every slice of a dropped channel is zero, every kept one untouched
        for p in g.pieces:
            keep = p.index[p.channel < k]
            assert p.param.index_select(p.dim, p.index[p.channel >= k]).abs().sum() == 0
            assert torch.equal(p.param.index_select(p.dim, keep), before[id(p.param)].index_select(p.dim, keep))
    predicted = MacsMeter(net, x[:1], net.head_output_layers()).macs_fraction()
    report = prune_zero_channels(net, x, net.head_output_layers())  # raises if the outputs changed
    assert report.max_abs_diff <= 1e-4
    assert count_macs(net, x[:1]) / dense_macs == pytest.approx(predicted, rel=1e-6)
    # the stem and the last stream keep exactly their uniform widths
    assert net.encoder.conv1.out_channels == script.kept_width(64, 0.3, 8) == 16
    assert net.encoder.layer4[1].conv2.out_channels == script.kept_width(512, 0.3, 8) == 152


def test_uniform_copy_reaches_the_budget_it_reports() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = ["experiment=digits_sparse", "+data.input_size=[32,32]"]
        cfg = OmegaConf.to_container(compose("train", overrides=overrides))
    script = _script()
    net, fraction, reached = script.uniform_copy(cfg, 0.25)
    example = torch.rand(1, 3, 32, 32)
    meter = MacsMeter(net, example, net.head_output_layers())
    assert meter.macs_fraction() == pytest.approx(reached) and 0.3 < fraction < 0.7
    whole, full_fraction, full_macs = script.uniform_copy(cfg, 1.0)  # nothing zeroed: the fresh net
    assert (full_fraction, full_macs) == (1.0, pytest.approx(1.0))
    # nearest: the neighbouring width fractions land no nearer the budget (zeroed independently of the search)
    groups = find_coupled_groups(whole, example, shared="encoder", coupled_heads=True)
    fresh = {k: v.clone() for k, v in whole.state_dict().items()}
    meter = MacsMeter(whole, example, whole.head_output_layers())
    for other in (fraction - 0.01, fraction + 0.01):
        whole.load_state_dict(fresh)
        script.zero_uniform(groups, other, 8)
        assert abs(meter.macs_fraction() - 0.25) >= abs(reached - 0.25) - 1e-12
    assert script.uniform_copy(cfg, 0.0)[1] == 0.04  # the narrowest width the search tries
