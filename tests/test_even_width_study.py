"""The even-width study's queue and report (``experiments/even_width_study.py``) and the width-snapping probe
(``experiments/snap_widths.py``): closed forms on hand-made runs and a tiny net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.runs import assert_png
from test_coupled import _net
from test_study import load_script

from lightning_sparse_mtl.sparsity.coupled import find_coupled_groups
from lightning_sparse_mtl.sparsity.coupled_prox import coupled_norms


def test_queue_names_each_arm_and_budget_and_the_late_arm_prunes_after_two_thirds() -> None:
    study = load_script("even_width_study")
    jobs = dict(study.jobs([0.25, 0.12], [0, 1], [0.25], [0.12]))
    assert list(jobs) == ["even_m0.25_s0", "even_m0.12_s0", "even_m0.25_s1", "even_late_m0.12_s0"]
    assert jobs["even_m0.25_s1"] == ["method=tp_uniform", "sparsity.target_macs=0.25", "seed=1"]
    assert jobs["even_late_m0.12_s0"] == ["method=tp_uniform", "method.dense_fraction=0.6667",
                                          "sparsity.target_macs=0.12", "seed=0"]  # fmt: skip


def test_report_pairs_each_arm_with_its_measured_speedups(tmp_path: Path) -> None:
    study = load_script("even_width_study")
    runs = tmp_path / "runs"
    made = {"dense_s0": (0.5, 1.0), "dense_s1": (0.5, 1.0), "even_m0.25_s0": (0.45, 4.0), "even_m0.25_s1": (0.4, 4.0),
            "coupled_m0.25_s0": (0.55, 4.0)}  # name: (seg mIoU, MACs ratio)  # fmt: skip
    for name, (miou, ratio) in made.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps({"test/seg/miou": miou, "pruned/macs_ratio": ratio}))
    rows = [{"run": n, "size": [288, 384], "batch": 1, "speedup": s, "speedup_over_macs_ratio": s / 4}
            for n, s in (("even_m0.25_s0", 3.6), ("even_m0.25_s1", 3.8), ("coupled_m0.25_s0", 3.3))]  # fmt: skip
    table = study.rows(runs, [0.25], [0, 1], {"rows": rows})
    by_arm = {r["arm"]: r for r in table}
    assert by_arm["even"]["n"] == 2 and by_arm["even"]["delta"] == pytest.approx([-10.0, -20.0])
    assert by_arm["coupled"]["delta"] == pytest.approx([10.0]) and by_arm["even"]["macs"] == pytest.approx(0.25)
    mean, std, n, per_mac = by_arm["even"]["288x384:1"]
    assert (mean, n, per_mac) == (pytest.approx(3.7), 2, pytest.approx(0.925)) and std == pytest.approx(
        0.1414, abs=1e-4
    )
    text = study.markdown(table, "speed_even")
    assert (
        "| 0.25 | tp_uniform (even widths, from the first step) | 2 | 0.250 | -15.00 ± 7.07 | 3.70× ± 0.14 (0.93) |"
        in text
    )
    assert "| 0.25 | group lasso, coupled | 1 | 0.250 | +10.00 | 3.30× (0.82) |" in text
    assert_png(study.plot(table, "288x384:1", tmp_path / "even.png"))
    assert "Welch" not in text  # one coupled seed: no test
    (runs / "coupled_m0.25_s1").mkdir()
    (runs / "coupled_m0.25_s1" / "results.json").write_text(json.dumps({"test/seg/miou": 0.6, "pruned/macs_ratio": 4}))
    two = study.markdown(study.rows(runs, [0.25], [0, 1], {"rows": rows}), "speed_even")
    assert "- budget 0.25: Welch p of the per-seed mean Δ, even vs coupled = 0.0" in two  # -10, -20 vs +10, +20


def test_snapping_rounds_live_widths_down_to_whole_blocks_dropping_the_weakest_groups() -> None:
    snap = load_script("snap_widths")
    assert [snap.snapped_width(k, 16) for k in (64, 63, 47, 16, 15, 3)] == [64, 48, 32, 16, 15, 3]
    net, x = _net()
    groups = find_coupled_groups(net, x[:1], shared="encoder", coupled_heads=True)
    g = max(groups, key=lambda g: g.num_groups)
    with torch.no_grad():  # 21 live channels in the widest space, channel c scaled by c + 1: distinct strengths
        for p in g.pieces:
            scale = torch.where(p.channel < 21, p.channel + 1.0, torch.zeros(()))
            shape = [-1 if d == p.dim else 1 for d in range(p.param.dim())]
            p.param.data.index_copy_(p.dim, p.index, p.param.index_select(p.dim, p.index) * scale.view(shape))
    before = coupled_norms(g)
    rows = dict((name, (n, live, kept)) for name, n, live, kept in snap.snap_down_([g], 16))
    after = coupled_norms(g)
    assert rows[g.name][1:] == (21, 16)
    assert int((after > 0).sum()) == 16
    dropped = set(((before > 0) & (after == 0)).nonzero().flatten().tolist())
    assert dropped == set(torch.argsort(torch.where(before > 0, before, torch.inf))[:5].tolist())
    assert torch.equal(after[after > 0], before[after > 0])  # the kept groups are untouched
