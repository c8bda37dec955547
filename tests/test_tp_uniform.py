"""The even-width arm (method=tp_uniform): nearest rounding, the one local ratio nearest the MACs goal, even widths
after pruning, and the whole train -> prune -> export path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.peers.tp_uniform import NearestRoundPruner, prune_to_ratio_, uniform_ratio
from lightning_sparse_mtl.train import train
from lightning_sparse_mtl.training.module import SparseMTLModule

STEPS = ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.limit_train_batches=2",
         "prune.batch_sizes=[1]", "prune.latency_repeats=1"]  # fmt: skip


@pytest.mark.parametrize("current, n_pruned, kept", [(64, 33, 32), (64, 44, 16), (64, 60, 16), (64, 0, 64),
                                                     (512, 270, 240), (48, 1, 48), (8, 3, 8), (12, 11, 12),
                                                     (64, 40, 32), (64, 24, 32)])  # fmt: skip
def test_rounding_keeps_the_nearest_multiple_of_round_to_at_least_one_block(current, n_pruned, kept) -> None:
    """Torch-Pruning's own rounding keeps the multiple *below* (31 of 64 -> 16); this one the nearest (-> 32); a
    group narrower than one block keeps all it has; ties (24, 40 = 1.5, 2.5 blocks) go to the even block count."""
    assert current - NearestRoundPruner._round_to(None, n_pruned, current, 16) == kept


def _encoder_widths(net: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in net.encoder.named_modules() if isinstance(m, nn.Conv2d)}


def test_one_ratio_nearest_the_goal_gives_every_space_the_same_fraction_in_blocks_of_16(train_cfg) -> None:
    module = SparseMTLModule(train_cfg("method=tp_uniform", "sparsity.target_macs=0.3"))
    module.configure_callbacks()
    callback, net = module.peer_callback, module.net.eval()
    example = callback._example(module)
    dense, widths = count_macs(net, example), _encoder_widths(net)
    state = copy.deepcopy(net.state_dict())

    def build(n: nn.Module):
        return callback._build_pruner(module, n)

    ratio, fraction = uniform_ratio(net, build, example, 0.3, dense, high=0.95)
    assert count_macs(net, example) == dense and all((net.state_dict()[k] == v).all() for k, v in state.items())
    pruned = copy.deepcopy(net)
    prune_to_ratio_(build(pruned), ratio)
    assert count_macs(pruned, example) / dense == pytest.approx(fraction, abs=1e-12)
    for r in [*np.linspace(0.1, 0.8, 8), ratio - 1e-3, ratio + 1e-3]:  # no ratio on a grid or beside it is nearer
        trial = copy.deepcopy(net)
        prune_to_ratio_(build(trial), float(r))
        assert abs(fraction - 0.3) <= abs(count_macs(trial, example) / dense - 0.3) + 1e-9, (r, fraction)
    for name, width in _encoder_widths(pruned).items():  # even: one fraction everywhere, in whole blocks of 16
        assert width % 16 == 0, (name, width)
        assert abs(width - widths[name] * (1 - ratio)) <= 8 + 1, (name, widths[name], width, ratio)


def test_tp_uniform_trains_the_even_width_net_from_the_first_step_and_exports(train_cfg) -> None:
    cfg = train_cfg("method=tp_uniform", "sparsity.target_macs=0.3", *STEPS, "prune.export=true")
    results = train(cfg)
    on_disk = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    peer = on_disk["peer"]
    assert on_disk["method"] == "tp_uniform" and [s["step"] for s in peer["stages"]] == [0]
    assert peer["stages"][0]["pruner_steps"] == 1 and abs(peer["macs_fraction"] - 0.3) <= 0.05, peer["stages"]
    assert peer["optimizer_rebuilds"][0]["optimizer_has_net_params"]
    kept = [v["out"] for k, v in peer["kept_channels"].items() if k.startswith("encoder.") and "out" in v]
    assert kept and all(c % 16 == 0 for c in kept), kept
    fraction = results["pruned/macs"] / results["dense/macs"]
    assert fraction == pytest.approx(peer["macs_fraction"], abs=1e-9)  # the compact path removes exactly those
    assert results["pruned/max_abs_diff"] <= 1e-4 and results["pruned/pt2_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize(
    "arm, override, message",
    [("tp_uniform", "method.round_to=0", "method.round_to must be an integer >= 1 or null"),
     ("tp_uniform", "method.round_to=16.0", "method.round_to must be an integer >= 1 or null"),
     ("tp_uniform", "method.round_to=true", "method.round_to must be an integer >= 1 or null"),
     ("tp_uniform", "method.global_pruning=sometimes", "method.global_pruning must be true or false"),
     ("tp_uniform", "method.global_pruning=true", "method=tp_uniform needs method.global_pruning=false"),
     ("tp_magnitude", "+method.global_pruning=false", "method=tp_magnitude needs method.global_pruning=true"),
     ("tp_group_norm", "+method.round_to=16", "method.round_to is for method=tp_uniform"),
     ("tp_uniform", "method.prune_steps=3", "method.prune_steps must be 1")],
)  # fmt: skip
def test_bad_even_width_settings_are_one_line_errors(arm: str, override: str, message: str, train_cfg) -> None:
    with pytest.raises(UserError, match=message) as err:
        SparseMTLModule(train_cfg(f"method={arm}", "sparsity.target_macs=0.3", override))
    assert "\n" not in str(err.value)
