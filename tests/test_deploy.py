"""Deployment: inference form (BN folding, channel rounding), verified exports, the pruned file format, speed report."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.deploy import export as ex
from lightning_sparse_mtl.deploy.compact import prune_and_measure, prune_copy
from lightning_sparse_mtl.deploy.inference import fold_batchnorm, inference_form
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.deploy.profile import layer_profile
from lightning_sparse_mtl.deploy.speed import speed_table
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.runs.checkpoints import LEGACY_PRUNED_FORMAT, load_any, load_pruned
from lightning_sparse_mtl.sparsity.groups import find_conv_groups
from lightning_sparse_mtl.sparsity.pruning import _flatten, prune_zero_channels
from lightning_sparse_mtl.training.module import SparseMTLModule

SIZE = (32, 32)


@torch.no_grad()
def randomise(net: nn.Module, fraction: float = 0.5, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and ``fraction`` of every grouped encoder layer's input groups set to zero."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    for group in find_conv_groups(net.encoder):
        group.weight[:, torch.randperm(group.num_groups, generator=g)[: int(fraction * group.num_groups)]] = 0
    return net.eval()


def small_net(seed: int = 0) -> MultiTaskNet:
    torch.manual_seed(seed)
    net = MultiTaskNet(build_tasks(["seg", "depth", "normal"], num_classes=11), "resnet18", 8, head_channels=16)
    return randomise(net, seed=seed)


def outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return _flatten(net.eval()(x))


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_batchnorm_folding_is_exact_and_removes_every_bn() -> None:
    net = small_net()
    x = torch.rand(4, 3, *SIZE)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    folded, diff = inference_form(net, x[:2])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0 and n_bn > 10
    assert diff <= 1e-5 and max_diff(outputs(net, x), outputs(folded, x)) <= 1e-5
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_bn_after_a_shared_conv_output_is_not_folded() -> None:
    class Fork(nn.Module):  # conv output read by a BN *and* by the residual: folding would change the residual
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    net = Fork().eval()
    net.bn.running_mean.fill_(0.5)
    assert fold_batchnorm(net, torch.rand(1, 3, 8, 8)) == 0 and isinstance(net.bn, nn.BatchNorm2d)


@pytest.mark.parametrize("round_to", [8, 16])
def test_round_to_keeps_outputs_exact_and_channel_counts_multiples(round_to: int) -> None:
    net = small_net()
    x = torch.rand(3, 3, *SIZE)
    exact, report = prune_copy(net, SIZE)
    rounded, _ = prune_copy(net, SIZE, round_to)
    assert max_diff(outputs(net, x), outputs(rounded, x)) <= 1e-4
    before = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    changed = 0
    for name, m in rounded.named_modules():
        if isinstance(m, nn.Conv2d) and m.out_channels != before[name].out_channels:
            assert m.out_channels % round_to == 0, (name, m.out_channels)
            changed += 1
    assert changed > 0
    one = torch.rand(1, 3, *SIZE)
    assert count_macs(exact, one) <= count_macs(rounded, one) < count_macs(net, one)
    assert report.macs_after == count_macs(exact, one)


def test_prune_report_counts_macs_per_image() -> None:
    net = small_net()
    dense_macs = count_macs(net, torch.rand(1, 3, *SIZE))
    report = prune_zero_channels(net, torch.rand(2, 3, *SIZE), net.head_output_layers())
    assert report.macs_before == dense_macs and report.macs_after == count_macs(net, torch.rand(1, 3, *SIZE))


class _Shift(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict:
        return {k: v + 1e-2 for k, v in self.net(x).items()}


def test_export_that_does_not_reproduce_the_model_fails_and_leaves_no_file(tmp_path: Path) -> None:
    net = inference_form(small_net(), torch.rand(2, 3, *SIZE))[0]
    inputs = [torch.rand(2, 3, *SIZE), torch.rand(3, 3, *SIZE)]
    with pytest.raises(ex.ExportError, match="differs from the PyTorch model"):
        ex.export_pt2(_Shift(net), tmp_path / "m.pt2", inputs, reference=net)
    with pytest.raises(ex.ExportError, match="differs from the PyTorch model"):
        ex.export_onnx(_Shift(net), tmp_path / "m.onnx", inputs, list(net.tasks), reference=net)
    assert list(tmp_path.iterdir()) == []  # no file, no temp file


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, SparseMTLModule]:
    """A (sparse, untrained) module pruned, exported and measured once for the tests below."""
    from conftest import compose_train_cfg

    run_dir = tmp_path_factory.mktemp("deploy")
    cfg = compose_train_cfg(run_dir, ["lambda=1e-5"])
    module = SparseMTLModule(cfg)
    randomise(module.net, seed=1)
    figures = prune_and_measure(module, run_dir / "pruned.pt", batch_sizes=(1, 2), repeats=2, min_run_time=0.01)
    return run_dir, figures, module


def test_deploy_writes_verified_files_and_a_complete_speed_report(deployed) -> None:
    run_dir, figures, _ = deployed
    for name in ("pruned.pt", "pruned.pt2", "pruned.onnx", "dense.onnx"):
        assert (run_dir / name).is_file(), name
    assert figures["pruned/onnx_path"] == str(run_dir / "pruned.onnx")  # the final place, not the staging folder
    assert figures["dense/onnx_path"] == str(run_dir / "dense.onnx") and len(list(run_dir.iterdir())) == 4
    for key in ("pruned/pt2_max_abs_diff", "pruned/onnx_max_abs_diff", "dense/onnx_max_abs_diff",
                "pruned/inference_form_max_abs_diff", "pruned/max_abs_diff"):  # fmt: skip
        assert figures[key] <= 1e-4, key
    records = figures["speed/records"]
    assert {(r["runtime"], r["batch"]) for r in records} == {(rt, b) for rt in ("eager", "onnxruntime") for b in (1, 2)}
    for r in records:
        assert r["threads"] == 2 and r["input_size"] == list(SIZE) and r["device"] == "cpu"
        ratios = [d / q for d, q in zip(r["dense_round_ms"], r["pruned_round_ms"])]
        assert len(ratios) == r["rounds"] and r["speedup"] == pytest.approx(statistics.median(ratios))
        assert r["speedup_over_macs_ratio"] == pytest.approx(r["speedup"] / figures["pruned/macs_ratio"])
        eff = r["speedup"] / figures["pruned/macs_ratio_effective"]
        assert r["speedup_over_effective_macs_ratio"] == pytest.approx(eff)
        assert figures[f"pruned/{r['runtime']}/speedup_over_effective_macs_ratio_b{r['batch']}"] == pytest.approx(eff)
        rt, b = r["runtime"], r["batch"]
        assert figures[f"pruned/{rt}/latency_b{b}_ms"] == pytest.approx(r["pruned_ms"])
        assert figures[f"dense/{rt}/latency_b{b}_iqr_ms"] == pytest.approx(r["dense_iqr_ms"])
        assert r["dense_iqr_ms"] >= 0 and r["pruned_iqr_ms"] >= 0
    for b in (1, 2):  # legacy keys: eager PyTorch
        assert figures[f"pruned/latency_b{b}_ms"] == figures[f"pruned/eager/latency_b{b}_ms"]
        assert figures[f"pruned/speedup_over_macs_ratio_b{b}"] == pytest.approx(
            figures[f"pruned/speedup_b{b}"] / figures["pruned/macs_ratio"]
        )
    assert figures["pruned/macs_ratio"] == pytest.approx(figures["dense/macs"] / figures["pruned/macs"])
    for k in ("dense", "pruned"):  # padding taps left out: fewer, never more
        assert 0 < figures[f"{k}/macs_effective"] < figures[f"{k}/macs"]
    assert figures["pruned/macs_ratio_effective"] == pytest.approx(
        figures["dense/macs_effective"] / figures["pruned/macs_effective"]
    )
    best = [r for r in records if r["batch"] == 2 and r["runtime"] == figures["pruned/best_runtime"]][0]
    assert figures["pruned/best_runtime_speedup_over_effective_macs_ratio"] == best["speedup_over_effective_macs_ratio"]
    json.dumps(figures)  # results.json-ready


def test_pruned_file_is_plain_data_and_rebuilds_the_model(deployed) -> None:
    run_dir, _, module = deployed
    raw = torch.load(run_dir / "pruned.pt", weights_only=True)
    assert set(raw) >= {"format", "config", "architecture", "state_dict", "report"}
    assert "profile" in raw["report"] and "heads.seg" in raw["report"]["profile"]["units"]
    profiles = raw["report"]["profiles"]
    assert set(profiles) == {"eager", "onnxruntime"} and profiles["eager"] == raw["report"]["profile"]
    for prof in profiles.values():
        units = prof["units"]
        assert {"encoder.stem", "encoder.layer1.0", "encoder.layer4.1", "heads.seg", "heads.normal", "other"} <= set(
            units
        )
        assert units["encoder.stem"]["pruned_ms"] > 0 and units["encoder.stem"]["pruned_macs"] > 0
        assert all(u["pruned_ms"] >= 0 and u["pruned_macs_effective"] <= u["pruned_macs"] for u in units.values())
        assert units["heads.seg"]["pruned_ms"] > 0 and units["encoder.layer1.0"]["pruned_ms"] > 0
        assert sum(u["pruned_ms"] for u in units.values()) == pytest.approx(prof["pruned_total_ms"])
        assert sum(u["pruned_share"] for u in units.values()) == pytest.approx(1.0)
        assert units["heads.seg"]["pruned_macs"] == units["heads.seg"]["dense_macs"] > 0  # heads are not pruned
        assert 0 < prof["unpruned_ms"] <= prof["pruned_total_ms"]
        assert prof["speedup_ceiling"] == pytest.approx(prof["dense_total_ms"] / prof["unpruned_ms"])
    net = load_pruned(run_dir / "pruned.pt")["model"]
    x = torch.rand(2, 3, *SIZE)
    assert max_diff(outputs(module.net, x), outputs(net, x)) <= 1e-4
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in module.net.parameters())
    assert load_any(run_dir / "pruned.pt").net.state_dict().keys() == net.state_dict().keys()


def test_exports_load_without_the_package_and_agree(deployed, tmp_path: Path) -> None:
    run_dir, figures, module = deployed
    # a batch size and an image size (48 x 64, not square) never traced: batch, height and width are dynamic
    x = torch.rand(5, 3, 48, 64)
    assert figures["pruned/dynamic_size"] == 1
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "run_exports.py"
    script.write_text(
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'lightning_sparse_mtl':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, onnxruntime as ort, torch\n"
        "run, x_path, out = sys.argv[1:]\n"
        "x = torch.load(x_path)\n"
        "pt2 = torch.export.load(run + '/pruned.pt2').module()(x)\n"
        "names = [o.name for o in ort.InferenceSession(run + '/pruned.onnx').get_outputs()]\n"
        "onnx = dict(zip(names, ort.InferenceSession(run + '/pruned.onnx').run(None, {'image': x.numpy()})))\n"
        "dense = dict(zip(names, ort.InferenceSession(run + '/dense.onnx').run(None, {'image': x.numpy()})))\n"
        "try:\n"
        "    import lightning_sparse_mtl\n"
        "    sys.exit('package importable')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "torch.save({'pt2': dict(pt2), 'onnx': {k: torch.from_numpy(v) for k, v in onnx.items()},\n"
        "            'dense': {k: torch.from_numpy(v) for k, v in dense.items()}}, out)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script), str(run_dir), str(tmp_path / "x.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = module.net.eval()(x)
    for task, value in expected.items():
        for kind in ("pt2", "onnx", "dense"):
            assert got[kind][task].shape == value.shape
            assert float((got[kind][task] - value).abs().max()) <= 1e-4, (kind, task)


def test_old_whole_module_pruned_file_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written before the layout refactor pickle ``lightning_sparse_mtl.tasks.TaskSpec``: remapped on load,
    which unpickles code, so only with ``trust`` (``trust_checkpoint=true``)."""
    import lightning_sparse_mtl.mtl.tasks as tasks_mod

    net = small_net()
    monkeypatch.setitem(sys.modules, "lightning_sparse_mtl.tasks", tasks_mod)
    monkeypatch.setattr(tasks_mod.TaskSpec, "__module__", "lightning_sparse_mtl.tasks")
    torch.save({"format": LEGACY_PRUNED_FORMAT, "model": net, "config": {}, "report": {}}, tmp_path / "old.pt")
    monkeypatch.undo()
    assert b"lightning_sparse_mtl.tasks" in (tmp_path / "old.pt").read_bytes()
    with pytest.raises(UserError, match="not plain data.*trust_checkpoint=true"):  # a pickled module: needs trust
        load_pruned(tmp_path / "old.pt")
    loaded = load_pruned(tmp_path / "old.pt", trust=True)["model"]
    x = torch.rand(1, 3, *SIZE)
    assert max_diff(outputs(net, x), outputs(loaded, x)) == 0


def test_speed_table_and_profile_are_consistent() -> None:
    net = inference_form(small_net(), torch.rand(2, 3, *SIZE))[0]
    from lightning_sparse_mtl.deploy.speed import eager_runner

    figures, records = speed_table({"eager": {"dense": eager_runner(net), "pruned": eager_runner(net)}}, SIZE, (1,),
                                   threads=1, macs_ratio=2.0, rounds=2, min_run_time=0.01)  # fmt: skip
    assert len(records) == 1 and records[0]["blocks"] >= 2 and records[0]["rounds"] == 2
    assert records[0]["speedup_iqr"] >= 0 and figures["pruned/eager/speedup_iqr_b1"] == records[0]["speedup_iqr"]
    assert figures["pruned/eager/speedup_over_macs_ratio_b1"] == pytest.approx(figures["pruned/eager/speedup_b1"] / 2)
    prof = layer_profile(net, torch.rand(2, 3, *SIZE), threads=1, repeats=3)
    assert {"encoder.stem", "encoder.layer1.0", "encoder.layer4.1", "heads.seg", "other", "total"} <= set(prof)
    units = sum(v for k, v in prof.items() if k not in ("total", "other"))
    assert 0 < units <= prof["total"] and prof["other"] == pytest.approx(prof["total"] - units)


def test_paired_speedup_is_the_median_of_per_round_ratios() -> None:
    from lightning_sparse_mtl.deploy.speed import paired_speedup

    # machine load doubles both timings in round 2: pairing cancels it, a ratio of pooled medians would not
    dense, pruned = [10.0, 20.0, 10.0, 10.0, 10.0], [2.0, 4.0, 2.5, 2.0, 5.0]
    speedup, iqr = paired_speedup(dense, pruned)
    assert speedup == pytest.approx(5.0)  # ratios 5, 5, 4, 5, 2
    assert iqr == pytest.approx(1.0)  # inclusive quartiles of [2, 4, 5, 5, 5]: 4 and 5
    assert paired_speedup([3.0], [1.5]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="equally many rounds"):
        paired_speedup([1.0, 2.0], [1.0])


def test_train_prune_block_reaches_prune_and_measure(train_cfg) -> None:
    from lightning_sparse_mtl.train import prune_options

    cfg = train_cfg("prune.round_to=8", "prune.export=true", "prune.latency_repeats=3")
    opts = prune_options(cfg.prune)
    assert opts["round_to"] == 8 and opts["export"] is True and opts["repeats"] == 3 and opts["batch_sizes"] == [1, 8]
    import inspect

    assert set(opts) <= set(inspect.signature(prune_and_measure).parameters)


def test_onnx_node_names_map_to_profile_units() -> None:
    from lightning_sparse_mtl.deploy.profile import onnx_scope, unit_aliases, unit_of

    assert onnx_scope("/encoder/layer4/layer4.1/relu/Relu_output_0_nchwc") == "encoder.layer4.1.relu"
    assert onnx_scope("/seg/block/block.2/Relu_output_0_nchwc") == "seg.block.2"
    assert onnx_scope("/Resize") == "" and onnx_scope("ReorderOutput_token_5") == ""
    net = small_net()
    aliases = unit_aliases(net)
    assert aliases["heads.seg"] == ["heads.seg", "seg"]  # ModuleDict is never called: not in the ONNX scope
    assert aliases["encoder.stem"] == ["encoder.conv1", "encoder.bn1", "encoder.relu", "encoder.maxpool"]
    assert unit_of("encoder.relu", aliases) == "encoder.stem"  # ORT names the fused conv+BN+ReLU after the ReLU
    assert unit_of("encoder.layer4.1.relu", aliases) == "encoder.layer4.1"
    assert unit_of("encoder.layer1.0.conv2", aliases) == "encoder.layer1.0"
    assert unit_of("seg.block.2", aliases) == "heads.seg" and unit_of("normal.out", aliases) == "heads.normal"
    assert unit_of("model.encoder.maxpool", aliases) == "encoder.stem"  # under the ChannelsLast wrapper
    assert unit_of("", aliases) == "other"


def test_bench_inference_rows_carry_both_mac_ratios() -> None:
    """``experiments/bench_inference.py`` on a tiny model, both runtimes: every row's ratios are its own MACs'."""
    import argparse
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "experiments" / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(runtimes=["eager", "onnxruntime"], threads=1, batch_sizes=[1], rounds=1,
                              min_run_time=0.01)  # fmt: skip
    net = small_net()
    records = bench.measure("tiny", net, SIZE, args, "folded+round8+channels_last")
    assert {r["runtime"] for r in records} == {"eager", "onnxruntime"}
    one = torch.rand(1, 3, *SIZE)
    exact, _ = prune_copy(net, SIZE)
    ratio = count_macs(net, one) / count_macs(exact, one)
    effective = count_macs(net, one, count_padding=False) / count_macs(exact, one, count_padding=False)
    for r in records:
        assert r["macs_ratio"] == pytest.approx(ratio) and r["macs_ratio_effective"] == pytest.approx(effective)
        assert r["speedup_over_effective_macs_ratio"] == pytest.approx(r["speedup"] / effective)
    assert "| tiny | folded+round8+channels_last | onnxruntime | 1 |" in bench.markdown(records)


def test_failed_prune_keeps_the_earlier_exports_and_export_false_removes_them(deployed, tmp_path, monkeypatch) -> None:
    """Exports are staged and moved into place only with pruned.pt: a prune that fails after exporting (here: in
    timing) leaves the earlier files byte for byte; a later export=false prune removes exports it did not write."""
    import shutil

    from lightning_sparse_mtl.core.errors import UserError
    from lightning_sparse_mtl.deploy import compact

    src, _, module = deployed
    names = ("pruned.pt", "pruned.pt2", "pruned.onnx", "dense.onnx")
    for name in names:
        shutil.copy(src / name, tmp_path / name)
    before = {n: (tmp_path / n).read_bytes() for n in names}

    def fail(*args, **kwargs):
        raise UserError("timing failed")

    with monkeypatch.context() as m:
        m.setattr(compact, "speed_table", fail)
        with pytest.raises(UserError, match="timing failed"):
            prune_and_measure(module, tmp_path / "pruned.pt", batch_sizes=(1,), repeats=1, min_run_time=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no staging folder left
    assert all((tmp_path / n).read_bytes() == before[n] for n in names)
    figures = prune_and_measure(module, tmp_path / "pruned.pt", batch_sizes=(1,), repeats=1, min_run_time=0.01,
                                export=False, profile=False)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.pt"]
    assert "pruned/onnx_path" not in figures and (tmp_path / "pruned.pt").read_bytes() != before["pruned.pt"]


def test_round_to_wider_than_the_layers_warns(deployed, tmp_path, capsys) -> None:
    """round_to=1000 keeps every channel (the rounded model is the dense one): said, not silent."""
    _, _, module = deployed
    figures = prune_and_measure(module, tmp_path / "pruned.pt", batch_sizes=(1,), repeats=1, min_run_time=0.01,
                                round_to=1000, export=False, profile=False)  # fmt: skip
    assert figures["pruned/macs_rounded"] == figures["dense/macs"] > figures["pruned/macs"]
    assert "warning: round_to=1000 gives back 100% of the MACs pruning removed" in capsys.readouterr().out
