"""The peers table (reporting/arms.py): Δ against the dense mean, Welch p, the markdown and the figure."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from lightning_sparse_mtl.reporting.arms import arm_markdown, arm_table, dense_mean, plot_arms, run_delta, welch_p


def _run(miou: float, err: float, macs_fraction: float | None = None, lat: float = 2.0) -> dict:
    run = {"test/seg/miou": miou, "test/depth/abs_err": err, "params": 100}
    if macs_fraction is not None:
        run.update({"pruned/macs": macs_fraction * 1000, "dense/macs": 1000, "pruned/params": 40,
                    "pruned/onnxruntime/latency_b8_ms": lat, "dense/onnxruntime/latency_b8_ms": 8.0,
                    "pruned/onnxruntime/speedup_b8": 8.0 / lat})  # fmt: skip
    return run


DENSE = [_run(0.5, 2.2), _run(0.7, 1.8)]  # mean: miou 0.6, abs_err 2.0


def test_delta_against_the_dense_mean_closed_form() -> None:
    assert dense_mean(DENSE) == pytest.approx({"test/seg/miou": 0.6, "test/depth/abs_err": 2.0})
    # miou +10 %, abs_err 1.8 vs 2.0 is 10 % lower = +10 %: mean +10 %
    assert run_delta(_run(0.66, 1.8), dense_mean(DENSE)) == pytest.approx(10.0)
    assert run_delta(_run(0.54, 2.2), dense_mean(DENSE)) == pytest.approx(-10.0)


def test_welch_p_matches_the_textbook_formula() -> None:
    a, b = [1.0, 2.0, 4.0], [3.0, 5.0, 6.0, 9.0]
    ma, mb = sum(a) / 3, sum(b) / 4
    va = sum((x - ma) ** 2 for x in a) / 2 / 3
    vb = sum((x - mb) ** 2 for x in b) / 3 / 4
    t = (ma - mb) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert math.isnan(welch_p([1.0], b))


def test_arm_table_rows_and_family_comparison(tmp_path) -> None:
    arms = {
        "group_lasso_coupled": [_run(0.66, 1.8, 0.25, 1.0), _run(0.63, 1.9, 0.24, 1.2)],
        "tp_magnitude": [_run(0.54, 2.2, 0.26, 2.0), _run(0.57, 2.1, 0.25, 2.2)],
        "tp_group_norm": [],  # not run yet: left out
    }
    table = arm_table(arms, DENSE).set_index("arm")
    assert list(table.index) == ["dense", "group_lasso_coupled", "tp_magnitude"]
    ours = table.loc["group_lasso_coupled"]
    assert ours["n"] == 2 and ours["macs_fraction_mean"] == pytest.approx(0.245)
    assert ours["mean_delta_%_mean"] == pytest.approx((10.0 + 5.0) / 2)  # 0.63: +5 %, 1.9: +5 %
    assert ours["speedup_b8_mean"] == pytest.approx((8.0 + 8.0 / 1.2) / 2)
    peer_deltas = [-10.0, (-5.0 - 5.0) / 2]
    assert ours["other_family_best"] == "tp_magnitude"
    assert ours["p_vs_other_family"] == pytest.approx(welch_p([10.0, 5.0], peer_deltas))
    assert table.loc["tp_magnitude", "other_family_best"] == "group_lasso_coupled"
    assert table.loc["dense", "macs_fraction_mean"] == 1.0
    assert table.loc["dense", "latency_b8_ms_mean"] == pytest.approx(8.0)  # the dense timing every run measured
    text = arm_markdown(table.reset_index())
    assert text.count("\n") == 2 + 3 and "| group_lasso_coupled | 2 | 0.245 ± 0.0071 |" in text
    assert plot_arms(table.reset_index(), tmp_path / "p.png").stat().st_size > 1000


def test_a_mean_zero_up_to_rounding_prints_as_zero() -> None:
    from lightning_sparse_mtl.reporting.arms import _pm

    assert _pm({"x_mean": -7.77e-16, "x_std": 0.23}, "x") == "0 ± 0.23"
    assert _pm({"x_mean": 1.5, "x_std": float("nan")}, "x") == "1.5"
    assert _pm({"x_mean": 7.02, "x_std": 1.1e-15}, "x") == "7.02 ± 0"
