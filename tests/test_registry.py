"""One registry style for everything chosen by name, with the same one-line unknown-name error."""

from __future__ import annotations

import pytest

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.models.heads import DENSE_HEADS, ConvHead
from lightning_sparse_mtl.mtl.tasks import TASKS, build_task
from lightning_sparse_mtl.mtl.weighting import WEIGHTINGS, DWAWeighting
from lightning_sparse_mtl.registry import Registry


def test_register_get_and_names() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "b" in reg and list(reg) == ["a", "b"]
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(3)


@pytest.mark.parametrize(
    "registry, kind, valid",
    [
        (DENSE_HEADS, "head", "aspp, conv, skip"),
        (WEIGHTINGS, "weighting", "dwa, fixed, uncertainty"),
        (TASKS, "task", "depth, disparity, normal, seg"),
    ],
)
def test_unknown_name_is_one_line_listing_valid(registry: Registry, kind: str, valid: str) -> None:
    with pytest.raises(UserError) as err:
        registry.get("nope")
    assert str(err.value) == f"unknown {kind} 'nope'; valid: {valid}"


def test_registries_hold_the_real_classes() -> None:
    assert DENSE_HEADS.get("conv") is ConvHead and WEIGHTINGS.get("dwa") is DWAWeighting


def test_task_directions_come_from_the_metric_class() -> None:
    spec = build_task("normal")
    assert spec.higher_is_better["within_22.5"] is True and spec.higher_is_better["mean"] is False
    with pytest.raises(UserError, match="unknown task 'x'; valid: Male, depth"):
        build_task("x", attributes=["Male"])
