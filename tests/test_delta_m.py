"""Δm against a hand computation, baselines from config or from single-task results.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.mtl.delta_m import delta_m, load_baselines, metric_directions
from lightning_sparse_mtl.mtl.tasks import build_tasks

DIRECTIONS = {"test/seg/miou": True, "test/depth/abs_err": False, "test/normal/mean": False, "test/Male/acc": True}


def test_delta_m_matches_hand_computation_with_mixed_directions() -> None:
    stl = {"test/seg/miou": 0.40, "test/depth/abs_err": 0.50, "test/normal/mean": 20.0}
    mtl = {"test/seg/miou": 0.42, "test/depth/abs_err": 0.55, "test/normal/mean": 19.0, "test/loss": 3.0}
    # seg: +(0.42-0.40)/0.40 = +5 %; depth (lower better): -(0.55-0.50)/0.50 = -10 %; normal: -(19-20)/20 = +5 %
    assert delta_m(mtl, stl, DIRECTIONS) == pytest.approx((5.0 - 10.0 + 5.0) / 3)
    better = {"test/seg/miou": 0.5, "test/depth/abs_err": 0.25}
    assert delta_m(better, stl, DIRECTIONS) == pytest.approx((25.0 + 50.0) / 2)  # positive = MTL better
    assert delta_m(stl, stl, DIRECTIONS) == 0.0


def test_delta_m_skips_metrics_missing_from_baseline_and_rejects_no_overlap() -> None:
    stl = {"test/seg/miou": 0.5, "test/delta_m": 1.0}
    mtl = {"test/seg/miou": 0.4, "test/normal/mean": 10.0, "test/delta_m": 2.0, "test/Male/acc": None}
    assert delta_m(mtl, stl, DIRECTIONS) == pytest.approx(-20.0)
    with pytest.raises(UserError, match="no test/<task>/<metric> key shared"):
        delta_m({"test/depth/abs_err": 0.3}, stl, DIRECTIONS)
    with pytest.raises(UserError, match="no direction"):
        delta_m({"test/foo/bar": 1.0}, {"test/foo/bar": 2.0}, DIRECTIONS)
    with pytest.raises(UserError, match="is 0"):
        delta_m({"test/seg/miou": 0.1}, {"test/seg/miou": 0.0}, DIRECTIONS)


def test_metric_directions_from_task_specs() -> None:
    d = metric_directions(build_tasks(["seg", "disparity", "normal", "Male"], 7, ["Male"]))
    assert d["test/seg/miou"] is True and d["test/disparity/abs_err"] is False and d["test/disparity/rel_err"] is False
    assert d["test/normal/mean"] is False and d["test/normal/within_11.25"] is True
    assert d["test/Male/acc"] is True and d["test/Male/f1"] is True
    assert all(k.startswith("test/") and k.count("/") == 2 for k in d)


def test_load_baselines_from_config_and_results_files(tmp_path: Path) -> None:
    assert load_baselines({"test/seg/miou": 0.5}) == {"test/seg/miou": 0.5}
    assert load_baselines(None) == {}
    seg = tmp_path / "seg" / "results.json"
    depth = tmp_path / "depth" / "results.json"
    seg_data = {"test/seg/miou": 0.4, "test/loss": 1.0, "params": 10, "config": {"lambda": 0}}
    depth_data = {"test/depth/abs_err": 0.5, "test/depth/rel_err": None, "sparsity/group_sparsity": 0}
    for path, data in ((seg, seg_data), (depth, depth_data)):
        path.parent.mkdir()
        path.write_text(json.dumps(data))
    merged = load_baselines([str(seg), depth])
    assert merged == {"test/seg/miou": 0.4, "test/depth/abs_err": 0.5}
    assert load_baselines(str(seg)) == {"test/seg/miou": 0.4}
    with pytest.raises(UserError, match="baseline results file not found: .*nope/results.json"):
        load_baselines([seg, tmp_path / "nope" / "results.json"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read baseline .*bad.json"):
        load_baselines([tmp_path / "bad.json"])
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"test/seg/miou": 0.3}))
    with pytest.raises(UserError, match="appears in both"):
        load_baselines([seg, twice])
    with pytest.raises(UserError, match="must be a number"):
        load_baselines({"test/seg/miou": "high"})
