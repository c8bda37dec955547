"""Cost-aware group weights against a hand computation; the MACs meter against real pruning."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.sparsity.costs import MacsMeter, group_macs, group_weights
from lightning_sparse_mtl.sparsity.groups import find_conv_groups
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),  # image conv: not grouped
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),  # 8x8 -> 4x4
        nn.Conv2d(6, 5, 1),
    )  # fmt: skip


def test_macs_group_weights_match_a_hand_computation() -> None:
    net, x = chain(), torch.rand(1, 3, 8, 8)
    groups = find_conv_groups(net)
    # removing one input channel of conv "2" saves O*k*k*H_out*W_out = 6*9*16; of conv "4": 5*1*16
    assert group_macs(net, groups, x) == [864.0, 80.0]
    assert group_macs(net, groups, torch.rand(2, 3, 8, 8)) == [864.0, 80.0]  # per sample
    w = group_weights("macs", groups, net, x)
    total_sqrt = 4 * math.sqrt(54) + 6 * math.sqrt(5)  # sum over groups of sqrt(p_g)
    scale = total_sqrt / (4 * 864 + 6 * 80)
    assert w == pytest.approx([864 * scale, 80 * scale])
    assert group_weights("sqrt_size", groups) == pytest.approx([math.sqrt(54), math.sqrt(5)])
    with pytest.raises(UserError, match="valid: macs, sqrt_size"):
        group_weights("flops", groups)


class Residual(nn.Module):
    """Stem -> two residual blocks -> head: zeros in the residual stream count only when every reader is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.a2(torch.relu(self.a1(x)))
        x = x + self.b2(torch.relu(self.b1(x)))
        return self.head(x)


@pytest.mark.parametrize("zero_frac", [0.0, 0.4, 0.8])
def test_macs_meter_equals_the_prune_report(zero_frac: float) -> None:
    torch.manual_seed(1)
    net, x = Residual(), torch.rand(1, 3, 10, 10)
    meter = MacsMeter(net, x, ignored_layers=[net.head])
    assert meter.dense_macs == count_macs(net, x)
    with torch.no_grad():
        for g in find_conv_groups(net):
            idx = torch.randperm(g.num_groups)[: int(zero_frac * g.num_groups)]
            g.weight[:, idx] = 0
        net.head.weight[:, :3] = 0  # residual channels 0-2: free only if a1 and b1 do not read them either
        net.a1.weight[:, :3] = 0
    pruned = copy.deepcopy(net)
    report = prune_zero_channels(pruned, x, ignored_layers=[pruned.head])
    assert meter.pruned_macs() == report.macs_after
    assert meter.macs_fraction() == pytest.approx(report.macs_after / report.macs_before)
