"""prune_zero_channels on models whose forward names channel positions or counts, or that have no values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels

X = torch.rand(2, 3, 8, 8)


class Sliced(nn.Module):
    """``a`` -> an op on its channels -> ``b``/``c``; ``d`` -> ``e`` is a plain chain beside it (always prunable)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(5, 4, 1)
        self.d, self.e = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.op == "slice":
            out = self.b(y[:, 3:6]) + self.c(y[:, 3:])
        elif self.op == "head_slice":
            out = self.b(y[:, :3])
        elif self.op == "split":
            p, q = torch.split(y, [3, 5], dim=1)
            out = self.b(p) + self.c(q)
        elif self.op == "chunk":
            p, q = y.chunk(2, dim=1)
            out = self.b(p[:, :3]) + self.c(q[:, :3].repeat(1, 2, 1, 1)[:, :5])
        elif self.op == "narrow":
            out = self.b(y.narrow(1, 2, 3))
        else:  # "unbind"
            out = self.b(torch.stack(y.unbind(1)[:3], 1))
        return out + self.e(self.d(x))


@pytest.mark.parametrize("op", ["slice", "head_slice", "split", "chunk", "narrow", "unbind"])
def test_channels_selected_by_position_are_kept(op: str) -> None:
    torch.manual_seed(0)
    model = Sliced(op).eval()
    with torch.no_grad():  # channels of `a` the slice leaves out, and ones it takes that b/c read with zero weights
        model.b.weight[:, 1] = 0
        model.c.weight[:, :2] = 0
        model.e.weight[:, 4:] = 0
    ref = model(X)
    report = prune_zero_channels(model, X)
    assert model.a.out_channels == 8 and report.channels_removed == {"d": 2}  # the plain chain still prunes
    assert float((model(X) - ref).abs().max()) <= 1e-5


def test_spatial_and_whole_channel_slices_still_prune() -> None:
    class Crop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)[:, :, 1:-1, :][:, :])  # crop H; a no-op slice of every channel

    model = Crop().eval()
    with torch.no_grad():
        model.b.weight[:, 5:] = 0
    ref = model(X)
    assert prune_zero_channels(model, X).channels_removed == {"a": 3}
    assert model.a.out_channels == 5 and float((model(X) - ref).abs().max()) <= 1e-5


def test_hard_coded_channel_count_is_one_line() -> None:
    class View(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x).view(-1, 8, 8, 8))

    model = View().eval()
    with torch.no_grad():
        model.b.weight[:, :2] = 0
    with pytest.raises(UserError, match=r"no longer runs .*hard-codes a channel count") as err:
        prune_zero_channels(model, X)
    assert isinstance(err.value, RuntimeError) and "\n" not in str(err.value)


@pytest.mark.parametrize("where", ["model", "input"])
def test_meta_device_is_refused_before_any_change(where: str) -> None:
    model = Sliced("split")
    x = X
    if where == "model":
        model = model.to("meta")
    else:
        x = X.to("meta")
    with pytest.raises(UserError, match="meta device.*load its weights first") as err:
        prune_zero_channels(model, x)
    assert "\n" not in str(err.value) and model.a.out_channels == 8 and model.training
