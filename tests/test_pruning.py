"""Physical pruning of zero-read channels: exactness, the consumer rule, reporting, measurement."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from lightning_sparse_mtl.deploy.measure import count_macs, count_params, macs_by_module, measure_latency
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity import pruning
from lightning_sparse_mtl.sparsity.pruning import PruneReport, prune_zero_channels, removable_channels

TASKS = {"seg": 11, "depth": 1, "normal": 3}
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny convs gain little from two, and it keeps timings sane on a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head(c_in: int, c_out: int, hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, c_out, 1)
    )


class TinyMTL(nn.Module):
    """Encoder run once -> per-task heads -> {task: (N, C_t, H, W)}; ``decoder`` in {None, "cat", "add"}.

    "cat"/"add": a skip decoder fuses the upsampled deepest feature (projected) with the stride-8
    feature by concatenation or residual addition. ``cls``: extra pooled linear head -> (N, 2).
    """

    def __init__(self, name: str, output_stride: int = 32, decoder: str | None = None, cls: bool = False):
        super().__init__()
        self.encoder = get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
        chs = self.encoder.out_channels
        self.decoder = decoder
        c = chs[-1]
        if decoder is not None:
            self.lateral = nn.Conv2d(chs[-1], 32, 1)
            self.skip = nn.Conv2d(chs[3], 32, 1) if decoder == "add" else nn.Identity()
            self.fuse = nn.Sequential(nn.Conv2d(32 + (chs[3] if decoder == "cat" else 0), 32, 3, padding=1), nn.ReLU())
            c = 32
        self.heads = nn.ModuleDict({t: _head(c, n) for t, n in TASKS.items()})
        self.cls = nn.Linear(chs[-1], 2) if cls else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(x)
        f = feats[-1]
        if self.decoder is not None:
            skip = feats[3]
            up = F.interpolate(self.lateral(f), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            fused = torch.cat([up, skip], 1) if self.decoder == "cat" else up + self.skip(skip)
            g = self.fuse(fused)
        else:
            g = f
        out = {
            t: F.interpolate(h(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
            for t, h in self.heads.items()
        }
        if self.cls is not None:
            out["attr"] = self.cls(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))
        return out

    def output_layers(self) -> list[nn.Module]:
        return [h[-1] for h in self.heads.values()] + ([self.cls] if self.cls is not None else [])


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@torch.no_grad()
def _zero_groups(modules: list[nn.Module], frac: float, seed: int = 0) -> int:
    """Zero a random ``frac`` of input-channel groups W[:, c] of every conv with > 3 in-channels."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for m in modules:
        if isinstance(m, nn.Conv2d) and m.in_channels > 3 and m.groups == 1:
            z = torch.rand(m.in_channels, generator=g) < frac
            m.weight[:, z] = 0
            n += int(z.sum())
    return n


@torch.no_grad()
def _outs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.eval()(x).items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_count_macs_single_conv_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.randn(1, 3, 10, 10)) == 8 * 3 * 9 * 100
    assert count_params(conv) == 8 * 3 * 9 + 8


@pytest.mark.parametrize(
    "conv, size",
    [
        (nn.Conv2d(4, 6, 3, padding=1), (10, 10)),
        (nn.Conv2d(4, 6, 3, padding=4, dilation=4), (6, 6)),  # an OS 8 resnet's layer4 on a 48x48 image
        (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), (9, 7)),
        (nn.Conv2d(4, 6, (1, 5), padding=(0, 2)), (5, 8)),
        (nn.Conv2d(4, 8, 3, padding=1, groups=2), (7, 7)),
        (nn.Conv2d(4, 6, 1), (5, 5)),  # no padding: both counts agree
    ],
)
def test_effective_macs_leave_out_padding_taps_exactly(conv: nn.Conv2d, size: tuple[int, int]) -> None:
    """Reference: a conv of ones over an image of ones counts, at every output position, the taps that read it."""
    x = torch.rand(2, 4, *size)
    with torch.no_grad():
        ones = nn.functional.conv2d(torch.ones(1, conv.in_channels // conv.groups, *size),
                                    torch.ones(1, conv.in_channels // conv.groups, *conv.kernel_size),
                                    stride=conv.stride, padding=conv.padding, dilation=conv.dilation)  # fmt: skip
    expected = 2 * conv.out_channels * int(ones.sum())
    assert count_macs(conv, x, count_padding=False) == expected
    assert count_macs(conv, x) == 2 * conv.out_channels * conv.in_channels // conv.groups * ones.numel() * math.prod(
        conv.kernel_size
    )
    if conv.padding == (0, 0):
        assert count_macs(conv, x, count_padding=False) == count_macs(conv, x)


def test_macs_by_module_adds_up_to_the_whole_model() -> None:
    net = MultiTaskNet(build_tasks(["seg", "depth"], num_classes=5), "resnet18", 8, head_channels=8).eval()
    x = torch.rand(1, 3, 32, 32)
    for pad in (True, False):
        per = macs_by_module(net, x, pad)
        assert per[""] == count_macs(net, x, count_padding=pad)
        assert per["encoder"] + per["heads.seg"] + per["heads.depth"] == per[""]
        assert sum(per[f"encoder.layer{i}"] for i in range(1, 5)) + per["encoder.conv1"] == per["encoder"]


def test_measure_latency_restores_threads_and_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    threads = torch.get_num_threads()
    lat = measure_latency(model, torch.randn(1, 3, 16, 16), warmup=1, repeats=3, threads=1)
    assert lat["min"] <= lat["median"] and lat["min"] > 0 and lat["threads"] == 1
    assert torch.get_num_threads() == threads and model.training


CASES = [  # encoder, output stride, decoder, classification head, zero fraction, input size
    ("resnet18", 32, None, False, 0.3, 64),
    ("resnet18", 8, "cat", False, 0.7, 64),
    ("resnet34", 16, "add", True, 0.5, 64),
    ("resnet50", 8, None, False, 0.5, 32),
    ("resnet50", 32, "cat", True, 0.7, 64),
]


@pytest.mark.parametrize("name,os_,decoder,cls,frac,size", CASES)
def test_prune_is_exact(name, os_, decoder, cls, frac, size):
    torch.manual_seed(0)
    model = TinyMTL(name, os_, decoder, cls)
    _randomize_bn(model)
    modules = list(model.encoder.modules()) if decoder is None else list(model.modules())
    assert _zero_groups(modules, frac) > 0
    x = torch.randn(1, 3, size, size)
    fresh = torch.randn(2, 3, size, size)
    ref = _outs(model, fresh)
    shapes = {k: v.shape for k, v in ref.items()}
    predicted = removable_channels(model, x, ignored_layers=model.output_layers())
    model.train()
    report = prune_zero_channels(model, x, ignored_layers=model.output_layers())
    assert model.training  # mode restored
    assert report.channels_removed == predicted and sum(predicted.values()) > 0
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert report.params_after == count_params(model) and report.max_abs_diff <= 1e-4
    out = _outs(model, fresh)
    assert {k: v.shape for k, v in out.items()} == shapes
    assert _max_diff(ref, out) <= 1e-4
    for head in model.heads.values():  # head output layers keep their sizes
        assert head[-1].out_channels in TASKS.values()
    assert removable_channels(model, x, ignored_layers=model.output_layers()) == {}  # idempotent
    assert set(report.to_dict()) >= {"channels_removed", "params_before", "macs_after", "max_abs_diff"}


def test_nothing_removed_when_nothing_is_zero():
    model = TinyMTL("resnet18")
    x = torch.randn(1, 3, SIZE, SIZE)
    before = count_params(model)
    assert removable_channels(model, x) == {}
    report = prune_zero_channels(model, (x,), ignored_layers=model.output_layers())  # tuple inputs too
    assert isinstance(report, PruneReport) and sum(report.channels_removed.values()) == 0
    assert report.params_after == report.params_before == before and report.macs_after == report.macs_before


# Every conv that reads the layer1 residual stream of a resnet18 (stem -> layer1.0 -> layer1.1 -> layer2).
STREAM_CONSUMERS = ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"]


@pytest.mark.parametrize("n_zeroed", [4, 3])
def test_residual_stream_needs_every_consumer_zero(n_zeroed):
    model = TinyMTL("resnet18")
    _randomize_bn(model)
    enc = model.encoder
    with torch.no_grad():
        for name in STREAM_CONSUMERS[:n_zeroed]:
            enc.get_submodule(name).weight[:, 5] = 0
    x = torch.randn(1, 3, SIZE, SIZE)
    ref = _outs(model, x)
    expected = 1 if n_zeroed == len(STREAM_CONSUMERS) else 0
    graph = pruning.build_graph(model.train(), x)  # prebuilt once, e.g. for per-epoch logging
    for _ in range(2):
        assert sum(removable_channels(model, x, graph=graph).values()) == expected
    assert model.training and enc.layer1[0].conv1.in_channels == 64  # nothing modified
    report = prune_zero_channels(model, x, ignored_layers=model.output_layers())
    assert sum(report.channels_removed.values()) == expected
    for name in ["conv1", "layer1.0.conv2", "layer1.1.conv2"]:  # the stream's producers
        assert enc.get_submodule(name).out_channels == 64 - expected
    assert enc.layer1[0].conv1.in_channels == enc.layer2[0].downsample[0].in_channels == 64 - expected
    assert _max_diff(ref, _outs(model, x)) <= 1e-4


def test_ignored_and_output_layers_keep_out_channels():
    model = TinyMTL("resnet18")
    with torch.no_grad():
        model.encoder.layer1[0].conv2.weight[:, 7] = 0  # nothing reads channel 7 of layer1.0.conv1
        for h in model.heads.values():
            h[-1].weight[:, 0] = 0  # nothing but the model output reads a head's final channels
    x = torch.randn(1, 3, SIZE, SIZE)
    assert removable_channels(model, x) == {"encoder.layer1.0.conv1": 1, **{f"heads.{t}.0": 1 for t in TASKS}}
    assert removable_channels(model, x, ignored_layers=[model.encoder.layer1[0].conv1]) == {
        f"heads.{t}.0": 1 for t in TASKS
    }

    class Raw(nn.Module):  # head outputs returned as-is: detected as output layers without ignored_layers
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(self.a(x))

    raw = Raw()
    with torch.no_grad():
        raw.b.weight[:, :2] = 0
    report = prune_zero_channels(raw, torch.randn(1, 3, 8, 8))
    assert raw.a.out_channels == 6 and raw.b.out_channels == 4 and report.channels_removed == {"a": 2}


def test_grouped_and_depthwise_convs_are_safe():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 16, 1),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),  # grouped
        nn.Conv2d(16, 4, 1),
    )
    _randomize_bn(model)
    with torch.no_grad():
        model[2].weight[2] = 0  # a zero depthwise filter alone frees nothing: its output (bias, BN) is still read
        model[3].weight[:, 3] = 0  # channel 3: nothing reads it after the depthwise conv -> removed before it too
        model[3].weight[:, 5] = 0
        model[2].weight[5] = 1.0  # channel 5: a non-zero depthwise filter does not keep an unread channel
        model[4].weight[:, 0] = 0
        model[5].weight[:, :3] = 0  # grouped conv: never pruned (conservative)
    x = torch.randn(2, 3, 12, 12)
    ref = model.eval()(x).detach()
    report = prune_zero_channels(model, x)
    assert sum(report.channels_removed.values()) == 2 and model[0].out_channels == 6
    assert model[2].groups == model[2].out_channels == model[2].in_channels == 6 and model[3].in_channels == 6
    assert (model[4].in_channels, model[4].out_channels, model[4].groups) == (16, 16, 4)
    assert float((model(x) - ref).abs().max()) <= 1e-5


def test_pruned_model_reloads_in_new_process(tmp_path: Path):
    torch.manual_seed(0)
    model = TinyMTL("resnet18", 8, "cat")
    _randomize_bn(model)
    _zero_groups(list(model.modules()), 0.5)
    x = torch.randn(1, 3, SIZE, SIZE)
    prune_zero_channels(model, x, ignored_layers=model.output_layers())
    fresh = torch.randn(2, 3, SIZE, SIZE)
    torch.save(model, tmp_path / "model.pt")
    torch.save({"x": fresh, "ref": _outs(model, fresh)}, tmp_path / "io.pt")
    script = f"""
import sys, importlib, torch
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
importlib.import_module({TinyMTL.__module__!r})
m = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False).eval()
io = torch.load({str(tmp_path / "io.pt")!r})
with torch.no_grad():
    out = m(io["x"])
print(max(float((out[k] - io["ref"][k]).abs().max()) for k in io["ref"]))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.strip().splitlines()[-1]) <= 1e-5


def test_failed_verification_raises(monkeypatch):
    model = TinyMTL("resnet18")
    x = torch.randn(1, 3, SIZE, SIZE)
    real_plan = pruning._plan

    def wrong_plan(graph, ignored_layers, *args, **kwargs):  # remove channels that ARE read: outputs must change
        assert real_plan(graph, ignored_layers, *args, **kwargs) == []
        conv = model.encoder.layer1[0].conv1
        return [(conv, "encoder.layer1.0.conv1", graph.get_pruner_of_module(conv).prune_out_channels, [0, 1, 2])]

    monkeypatch.setattr(pruning, "_plan", wrong_plan)
    model.train()
    with pytest.raises(RuntimeError, match="differs"):
        prune_zero_channels(model, x, ignored_layers=model.output_layers())
    assert model.training
