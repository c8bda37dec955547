"""Pretrained encoder weights: torchvision / timm / Lightning files, strict fit, tags offline, input normalisation."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torchvision

from lightning_sparse_mtl.core.configs import plain_config
from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.models import pretrained
from lightning_sparse_mtl.models.encoders import build_encoder
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.runs.checkpoints import load_module
from lightning_sparse_mtl.training.module import SparseMTLModule

ROOT = Path(__file__).resolve().parent.parent


def torchvision_features(model: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The six feature maps smp's ResNet encoder returns, computed with torchvision's own modules."""
    f1 = model.relu(model.bn1(model.conv1(x)))
    f2 = model.layer1(model.maxpool(f1))
    f3 = model.layer2(f2)
    f4 = model.layer3(f3)
    return [x, f1, f2, f3, f4, model.layer4(f4)]


@pytest.fixture(scope="module")
def tv_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    torch.manual_seed(0)
    out = {}
    for arch in ("resnet18", "resnet34", "resnet50"):
        model = getattr(torchvision.models, arch)(weights=None).eval()
        path = tmp_path_factory.mktemp("weights") / f"{arch}.pth"
        torch.save(model.state_dict(), path)
        out[arch] = (path, model)
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_state_dict_gives_torchvision_features(arch, tv_files, caplog) -> None:
    path, model = tv_files[arch]
    with caplog.at_level(logging.INFO, logger=pretrained.__name__):
        encoder = build_encoder(arch, 32, path).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, ref = encoder(x), torchvision_features(model, x)
    assert len(ours) == len(ref) == 6
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    [line] = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    n = len(encoder.state_dict())
    assert f"loaded {n}/{n} tensors" in line and "fc.weight, fc.bias" in line and "\n" not in line


def test_timm_state_dict_loads_into_smp_and_timm_universal_encoders(tmp_path) -> None:
    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "timm_resnet18.pth"
    torch.save(model.state_dict(), path)
    ref = model.state_dict()
    state = build_encoder("resnet18", 32, path).state_dict()
    assert all(torch.equal(state[k], v) for k, v in ref.items() if not k.startswith("fc."))
    # smp's timm-universal wrapper keeps the timm model under `model.` (whether encoders.py accepts tu- names is
    # the encoder factory's business; the loader handles the prefix)
    from segmentation_models_pytorch.encoders import get_encoder

    encoder = get_encoder("tu-resnet18", weights=None)
    pretrained.load_pretrained(encoder, "tu-resnet18", path)
    state = encoder.state_dict()
    assert all(torch.equal(state["model." + k], v) for k, v in ref.items() if not k.startswith("fc."))


def test_wrapped_and_lightning_state_dicts(tmp_path, tv_files, train_cfg) -> None:
    path, model = tv_files["resnet18"]
    ref = build_encoder("resnet18", 32, path).state_dict()
    wrapped = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    assert all(torch.equal(v, ref[k]) for k, v in build_encoder("resnet18", 32, wrapped).state_dict().items())
    # a Lightning checkpoint of this project: only state_dict keys containing "encoder" are used
    module = SparseMTLModule(train_cfg(f"model.weights={path}", "model.output_stride=32"))
    ckpt = tmp_path / "last.ckpt"
    torch.save({"pytorch-lightning_version": L.__version__, "state_dict": module.state_dict(), "epoch": 0}, ckpt)
    loaded = build_encoder("resnet18", 8, ckpt).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.items())


def one_line_error(fn) -> str:
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mismatched_files_are_refused_in_one_line(tmp_path, tv_files) -> None:
    r18, _ = tv_files["resnet18"]
    r34, _ = tv_files["resnet34"]
    msg = one_line_error(lambda: build_encoder("resnet50", 32, r18))
    assert "layer1.0.conv1.weight has shape (64, 64, 3, 3) in the file, (64, 64, 1, 1) in the encoder" in msg
    # resnet34 has every resnet18 tensor with the same shape, plus more blocks: refused, not silently partial
    msg = one_line_error(lambda: build_encoder("resnet18", 32, r34))
    assert "no place in the encoder" in msg and "layer1.2." in msg
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in torch.load(r18).items() if not k.startswith("layer4")}, partial)
    msg = one_line_error(lambda: build_encoder("resnet18", 32, partial))
    assert "missing from the file, first layer4.0.conv1.weight (512, 256, 3, 3)" in msg
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    assert "cannot read encoder weights" in one_line_error(lambda: build_encoder("resnet18", 32, junk))
    assert "not found" in one_line_error(lambda: build_encoder("resnet18", 32, tmp_path / "none.pth"))


def test_unknown_tag_lists_the_known_ones() -> None:
    msg = one_line_error(lambda: build_encoder("resnet18", 32, "imagenet21k"))
    assert "unknown weights 'imagenet21k' for encoder resnet18; valid: imagenet, ssl, swsl" in msg


def test_imagenet_without_network_fails_in_one_line(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    msg = one_line_error(lambda: build_encoder("resnet18", 32, "imagenet"))
    assert msg.startswith("cannot download 'imagenet' weights for encoder resnet18 (hub.invalid unreachable")
    assert "model.weights=/path/to/weights.pth" in msg
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE is set" in one_line_error(lambda: pretrained.fetch_tag("tu-resnet18", "imagenet"))


def test_train_cli_imagenet_offline_exits_2_with_one_line(tmp_path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "https://hub.invalid"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_sparse_mtl.train", "model.weights=imagenet", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot download 'imagenet' weights for encoder resnet18" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def net(**kwargs) -> MultiTaskNet:
    return MultiTaskNet(build_tasks(["seg", "depth"], 5), head_channels=8, output_stride=32, **kwargs).eval()


def test_pretrained_inputs_are_normalised_inside_the_model(tv_files) -> None:
    path, _ = tv_files["resnet18"]
    assert not hasattr(net(), "input_mean") and not hasattr(net(weights=path, normalize="none"), "input_mean")
    model = net(weights=path, normalize="auto")
    assert model.input_mean.flatten().tolist() == pytest.approx(pretrained.IMAGENET_MEAN)
    assert model.input_std.flatten().tolist() == pytest.approx(pretrained.IMAGENET_STD)
    assert {"input_mean", "input_std"} <= set(model.state_dict())  # exported / saved models carry them
    x = torch.rand(1, 3, 32, 32)
    mean, std = (
        torch.tensor(pretrained.IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(pretrained.IMAGENET_STD).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x)[-1], net(weights=path, normalize="none").encoder(x)[-1])
        expected = model.encoder((x - mean) / std)[-1]
        assert torch.equal(model.encoder(model.normalize_input(x))[-1], expected)
    custom = net(normalize={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert torch.allclose(custom.normalize_input(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
    assert "model.normalize" in one_line_error(lambda: net(normalize="zscore"))
    assert "model.normalize" in one_line_error(lambda: net(normalize={"mean": [0.5], "std": [1.0]}))


def test_checkpoints_restore_without_rereading_the_weights_file(tmp_path, tv_files, train_cfg) -> None:
    src, _ = tv_files["resnet18"]
    path = tmp_path / "moved_away.pth"
    path.write_bytes(src.read_bytes())
    cfg = train_cfg(f"model.weights={path}", "model.normalize={mean:[0.4,0.5,0.6],std:[0.2,0.3,0.4]}")
    module = SparseMTLModule(cfg)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": module.cfg}}, ckpt)
    path.unlink()  # evaluating on another machine: the weights file is gone, the checkpoint suffices
    restored = load_module(ckpt)
    assert restored.net.input_std.flatten().tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in module.state_dict().items())
    # a checkpoint written before model.normalize existed (no key, no buffers) still loads
    old_cfg = plain_config(train_cfg())
    del old_cfg["model"]["normalize"]
    old = SparseMTLModule(old_cfg)
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": {"cfg": old.cfg}}, ckpt)
    assert not hasattr(load_module(ckpt).net, "input_mean")


def test_normalised_model_prunes_and_keeps_its_outputs(tv_files) -> None:
    """The normalisation in front of the encoder does not disturb the dependency graph or the outputs."""
    from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels

    path, _ = tv_files["resnet18"]
    model = net(weights=path, normalize="auto")
    with torch.no_grad():
        model.encoder.layer1[0].conv2.weight[:, :16] = 0  # nothing reads channels 0..15 of layer1.0.conv1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    report = prune_zero_channels(model, x, ignored_layers=model.head_output_layers())
    assert sum(report.channels_removed.values()) >= 16 and report.max_abs_diff <= 1e-4
    assert model.encoder.layer1[0].conv1.out_channels == 48
    with torch.no_grad():
        after = model(x)
    assert all(torch.allclose(before[k], after[k], atol=1e-4) for k in before)
    assert model.input_mean.flatten().tolist() == pytest.approx(pretrained.IMAGENET_MEAN)
