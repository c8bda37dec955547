"""Every smp encoder (incl. ``tu-<timm>``): accepted by name, grouped exactly, trained with lambda > 0, pruned exactly.

The MACs a prune saves are checked against closed forms computed independently of Torch-Pruning and of
``FlopCounterMode``: per-layer MACs recorded by forward hooks (N*Ho*Wo*Cout*Cin/groups*k*k for a conv,
tokens*in*out for a linear), and the consumer rule applied by hand to a known zero pattern.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.models.encoders import build_encoder
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity.groups import find_conv_groups, group_norms, image_layers, ungrouped_layers
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels
from lightning_sparse_mtl.train import train
from lightning_sparse_mtl.training.callbacks import SparsityLogger
from lightning_sparse_mtl.training.module import SparseMTLModule

# Two optimizer steps of 4 tiny images, one val/test batch: the real train() path, kept cheap.
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "data.batch_size=4", "data.eval_batch_size=4", "model.output_stride=16"]  # fmt: skip


def _net(encoder: str, output_stride: int = 8) -> MultiTaskNet:
    torch.manual_seed(0)
    net = MultiTaskNet(build_tasks(["seg", "depth", "normal"], 11), encoder=encoder, output_stride=output_stride,
                       head_channels=16)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for m in net.modules():  # non-trivial BN statistics, so an unread channel is not accidentally zero
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


@torch.no_grad()
def _outs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.eval()(x).items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@torch.no_grad()
def _layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs of every Conv2d / Linear in one forward, by hand from the shapes the hooks see."""
    names = {m: n for n, m in model.named_modules()}
    macs: dict[str, int] = {}

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            n, c, ho, wo = out.shape
            per = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            macs[names[m]] = macs.get(names[m], 0) + n * c * ho * wo * per
        else:
            macs[names[m]] = macs.get(names[m], 0) + out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()(x)
    for h in handles:
        h.remove()
    return macs


def _chain_saving(macs: dict[str, int], model: nn.Module, chain: list[str], width: int, removed: int) -> int:
    """MACs saved by removing ``removed`` of the ``width`` channels that flow through ``chain``'s layers
    (each layer's MACs are linear in that channel count: producer out, depthwise in=out, consumer in)."""
    total = 0
    for name in chain:
        assert macs[name] % width == 0, name
        total += macs[name] // width * removed
    return total


# ---------------------------------------------------------------- names


def test_tu_timm_encoder_is_built_with_its_output_stride():
    for os_ in (8, 32):
        enc = build_encoder("tu-regnety_002", os_)
        feats = enc(torch.randn(1, 3, 64, 64))
        assert [f.shape[1] for f in feats] == list(enc.out_channels)
        assert feats[-1].shape[-1] == 64 // os_


def test_unknown_encoder_names_give_one_line_errors():
    with pytest.raises(UserError) as err:
        build_encoder("tu-regnety_02")
    assert "\n" not in str(err.value) and "timm.list_models()" in str(err.value)
    assert "tu-regnety_002" in str(err.value)  # close matches suggested
    with pytest.raises(UserError) as err:
        build_encoder("resnet19")
    assert str(err.value).startswith("unknown encoder 'resnet19'; valid:") and "tu-<any timm" in str(err.value)
    with pytest.raises(UserError, match="cannot be built at model.output_stride=8"):
        build_encoder("vgg11", 8)  # max-pool downsampling cannot dilate


# ---------------------------------------------------------------- groups


class ImageThroughOps(nn.Module):
    """The image conv reads 6 channels (image and its square, no parameters in between); a 3-channel conv
    sits deeper in and reads features; ``tied`` shares one weight between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(6, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.to3 = nn.Conv2d(8, 3, 1)
        self.deep3 = nn.Conv2d(3, 8, 3, padding=1)
        self.tied_a = nn.Conv2d(8, 8, 1)
        self.tied_b = nn.Conv2d(8, 8, 1)
        self.tied_b.weight = self.tied_a.weight
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)
        self.register_buffer("mean", torch.full((1, 6, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x * x], 1) - self.mean  # parameter-free: still "the image"
        y = self.to3(self.bn(self.stem(x)).relu())
        y = self.tied_b(self.tied_a(self.deep3(y)))
        y = self.grouped(self.dw(y))
        return self.fc(y.mean((2, 3)))


def test_image_conv_is_found_by_tracing_not_by_channel_count():
    model = ImageThroughOps().train()
    assert image_layers(model) == {model.stem}
    assert model.training and all(p.requires_grad for p in model.parameters())
    names = [g.name for g in find_conv_groups(model, prefix="m.")]
    assert names == ["m.to3", "m.deep3", "m.tied_a", "m.fc"]  # deep 3-channel conv grouped; tied weight once
    assert [g.name for g in find_conv_groups(model, linear=False)] == ["to3", "deep3", "tied_a"]
    assert [g.name for g in find_conv_groups(model, exclude_image_conv=False)][0] == "stem"
    skipped = ungrouped_layers(model, linear=False)
    assert skipped["stem"] == "reads the image" and skipped["dw"] == "depthwise conv"
    assert skipped["grouped"] == "grouped conv" and skipped["tied_b"].startswith("shares its weight with tied_a")
    assert "fc" in skipped and "fc" not in ungrouped_layers(model, linear=True)
    assert model.bn.num_batches_tracked == 0  # probing ran in eval mode


def test_shared_parameter_is_one_group():
    model = ImageThroughOps()
    groups = find_conv_groups(model)
    tied = [g for g in groups if g.weight is model.tied_a.weight]
    assert len(tied) == 1 and sum(g.weight is model.tied_b.weight for g in groups) == 1


def test_linear_groups_are_input_features():
    model = ImageThroughOps()
    (fc,) = [g for g in find_conv_groups(model) if g.name == "fc"]
    assert (fc.num_groups, fc.group_size, fc.sqrt_p) == (8, 4, 2.0)
    w = model.fc.weight.detach()
    torch.testing.assert_close(group_norms(w), w.pow(2).sum(0).sqrt())
    conv = model.to3.weight.detach()
    torch.testing.assert_close(group_norms(conv), conv.pow(2).sum((0, 2, 3)).sqrt())


def test_probe_failure_is_a_clear_error():
    model = nn.Sequential(nn.Linear(5, 4))
    with pytest.raises(UserError, match="pass example_inputs or exclude_image_conv=False"):
        find_conv_groups(model)
    assert [g.name for g in find_conv_groups(model, linear=True, example_inputs=torch.randn(2, 5))] == []
    assert len(find_conv_groups(model, exclude_image_conv=False, linear=True)) == 1


@pytest.mark.parametrize(
    "encoder,image_conv,skipped",
    [
        ("mobilenet_v2", "features.0.0", {"depthwise conv"}),
        ("tu-regnety_002", "model.stem.conv", {"grouped conv"}),
        ("mit_b0", "patch_embed1.proj", {"depthwise conv"}),
    ],
)
def test_encoder_groups(encoder, image_conv, skipped):
    enc = build_encoder(encoder, 8)
    reasons = ungrouped_layers(enc)
    assert reasons[image_conv] == "reads the image"
    assert set(reasons.values()) == {"reads the image", *skipped}
    groups = find_conv_groups(enc)
    assert groups and image_conv not in {g.name for g in groups}
    linears = [g for g in groups if g.weight.dim() == 2]
    assert len(linears) == sum(isinstance(m, nn.Linear) for m in enc.modules())  # mit: q, kv, proj, fc1, fc2
    assert (len(linears) > 0) == encoder.startswith("mit")
    if linears:
        assert ungrouped_layers(enc, linear=False)["block1.0.attn.q"].startswith("linear layer")


# ---------------------------------------------------------------- pruning: closed forms


def test_mobilenet_v2_inverted_residuals_prune_by_closed_form():
    """Zero half of the input groups of every projection conv: the expanded channels go from the expansion
    conv, through the depthwise conv, to the projection - all removed (today's rule kept them: ~1%)."""
    net = _net("mobilenet_v2")
    x = torch.randn(1, 3, 64, 64)
    macs = _layer_macs(net, x)
    enc = net.encoder
    saved = 0
    for i, block in enumerate(enc.features):
        if not hasattr(block, "conv") or len(block.conv) != 4:  # blocks with an expansion conv
            continue
        proj = block.conv[2]
        width = proj.in_channels
        drop = torch.arange(width) % 2 == (i % 2)
        with torch.no_grad():
            proj.weight[:, drop] = 0
        chain = [f"encoder.features.{i}.conv.{j}" for j in ("0.0", "1.0", "2")]
        saved += _chain_saving(macs, net, chain, width, int(drop.sum()))
    ref = _outs(net, x)
    report = prune_zero_channels(net, x, ignored_layers=net.head_output_layers())
    assert report.macs_before - report.macs_after == saved
    assert saved / report.macs_before > 0.3  # against 1% before depthwise convs passed the question on
    assert _max_diff(ref, _outs(net, x)) <= 1e-4


def test_resnet18_basic_blocks_prune_by_closed_form():
    net = _net("resnet18")
    x = torch.randn(1, 3, 64, 64)
    macs = _layer_macs(net, x)
    saved = 0
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for b in range(2):
            conv2 = net.encoder.get_submodule(f"{layer}.{b}.conv2")
            k = conv2.in_channels // 4
            with torch.no_grad():
                conv2.weight[:, :k] = 0
            saved += _chain_saving(macs, net, [f"encoder.{layer}.{b}.conv1", f"encoder.{layer}.{b}.conv2"],
                                   conv2.in_channels, k)  # fmt: skip
    ref = _outs(net, x)
    report = prune_zero_channels(net, x, ignored_layers=net.head_output_layers())
    assert report.macs_before - report.macs_after == saved
    assert _max_diff(ref, _outs(net, x)) <= 1e-4


def test_mit_b0_mlp_hidden_features_prune_by_closed_form():
    """Transformer MLPs: zero fc2 input features -> fc1 out, the MLP's depthwise conv and fc2 in go.
    Attention and LayerNorm keep their channels (conservative); this crashed with an IndexError before."""
    net = _net("mit_b0")
    x = torch.randn(1, 3, 64, 64)
    macs = _layer_macs(net, x)
    saved = 0
    groups = {g.name: g for g in find_conv_groups(net.encoder, prefix="encoder.")}
    for name, g in groups.items():
        if name.endswith("mlp.fc2"):
            width = g.num_groups
            with torch.no_grad():
                g.weight[:, : width // 2] = 0
            stem = name[: -len("fc2")]
            saved += _chain_saving(macs, net, [stem + "fc1", stem + "dwconv.dwconv", stem + "fc2"], width, width // 2)
        elif name.endswith(("attn.proj", "attn.q")):
            with torch.no_grad():
                g.weight[:, :5] = 0  # attention inputs: blocked (LayerNorm / matmul), must not crash
    ref = _outs(net, x)
    report = prune_zero_channels(net, x, ignored_layers=net.head_output_layers())
    assert report.macs_before - report.macs_after == saved > 0
    assert _max_diff(ref, _outs(net, x)) <= 1e-4


class GroupedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.b(self.g(self.a(x)).relu()).relu())


def test_grouped_convs_are_kept_whole():
    model = GroupedBlock()
    with torch.no_grad():
        model.b.weight[:, :8] = 0  # grouped conv out-channels 0..7 are unread: kept (conservative)
        model.g.weight[:4] = 0  # a whole group of the grouped conv reads nothing: its inputs are kept too
    x = torch.randn(2, 3, 12, 12)
    ref = model.eval()(x).detach()
    report = prune_zero_channels(model, x, ignored_layers=[model.out])
    assert report.channels_removed == {}
    assert (model.g.in_channels, model.g.out_channels, model.g.groups) == (16, 16, 4)
    assert float((model(x) - ref).abs().max()) == 0.0


# ---------------------------------------------------------------- the matrix: train() with lambda > 0, prune


SLOW = pytest.mark.slow  # same path, more families: `make test-slow`
MATRIX = [
    "resnet18",
    "mobilenet_v2",
    "efficientnet-b0",
    "tu-regnety_002",  # grouped convs + squeeze-excite (RegNetY), timm through smp's tu- prefix
    "mit_b0",  # transformer: LayerNorm, attention, depthwise conv in the MLP
    pytest.param("resnext50_32x4d", marks=SLOW),
    pytest.param("timm-efficientnet-b0", marks=SLOW),
    pytest.param("tu-mobilenetv3_small_050", marks=SLOW),  # hard-swish, SE
    pytest.param("tu-convnext_atto", marks=SLOW),
]


@pytest.mark.parametrize("encoder", MATRIX)
def test_train_then_prune_every_family(train_cfg, encoder):
    cfg = train_cfg(*SHORT, f"model.encoder={encoder}", "lambda=1e-3", "prune.after_train=false")
    results = train(cfg)
    assert results["lambda"] == 1e-3 and results["sparsity"]["total_groups"] > 0
    module = SparseMTLModule.load_from_checkpoint(results["ckpt_path"], weights_only=False).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random sparsity instead of long training: half of every layer's groups
        for g in module.sparsity.groups:
            g.weight[:, torch.rand(g.num_groups, generator=gen) < 0.5] = 0
    net = module.net
    # the per-epoch pruning figures (prune a copy) work on every family
    figures = SparsityLogger(probe_size=32).pruning_figures(net, {"zero_groups": 1})
    assert figures["sparsity/encoder_params_left"] <= sum(p.numel() for p in net.encoder.parameters())
    x, fresh = torch.rand(1, 3, 32, 32), torch.rand(3, 3, 32, 32)
    ref = _outs(net, fresh)
    pruned = copy.deepcopy(net)
    report = prune_zero_channels(pruned, x, ignored_layers=pruned.head_output_layers())
    assert _max_diff(ref, _outs(pruned, fresh)) <= 1e-4  # on an input the verification never saw
    assert report.macs_after <= report.macs_before and report.params_after <= report.params_before
    if encoder in ("resnet18", "mobilenet_v2", "efficientnet-b0", "timm-efficientnet-b0", "tu-mobilenetv3_small_050",
                   "tu-convnext_atto"):  # fmt: skip
        assert report.macs_after < 0.9 * report.macs_before  # depthwise / basic blocks free real compute
