"""The schema of each config group that is not an object config (runs/schema.py), and the one check of them all.

Run first in ``validate_train_config``: a value of the wrong type in ``model``, ``sparsity``, ``weighting``,
``method``, ``trainer``, ``optimizer`` or ``scheduler`` is one line naming its key before any group's own checks
(ranges, names, combinations) read it. Object configs under ``data``, ``callbacks`` and ``logger`` are checked with
their unknown keys (``validate_objects.check_object_kwargs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_sparse_mtl.core.validate import get, locate_class
from lightning_sparse_mtl.runs.schema import check_types, hints_of, object_schema

# sparsity.* keys of the target controller (sparsity/target.py pops them before GroupSparsity sees the rest)
TARGET_TYPES: dict[str, tuple[Any, Any]] = {
    "target": (float | None, None), "target_macs": (float | None, None), "target_epoch": (float | None, None),
    "target_every": (int | None, None), "target_lambda_init": (float | None, None),
    "max_layer_sparsity": (float | None, 0.9),
}  # fmt: skip


def model_schema() -> dict[str, tuple[Any, Any]]:
    from lightning_sparse_mtl.models.net import MultiTaskNet

    return hints_of(MultiTaskNet, skip=("tasks",))


def sparsity_schema() -> dict[str, tuple[Any, Any]]:
    from lightning_sparse_mtl.sparsity.controller import GroupSparsity

    internal = ("groups", "sparsity_weight", "prefix", "example_inputs", "shared", "module")
    return {**hints_of(GroupSparsity.from_module, skip=internal), **hints_of(GroupSparsity, skip=internal),
            "groups": (str, "input"), "module": (str, "encoder"), **TARGET_TYPES}  # fmt: skip


def weighting_schema(name: Any) -> dict[str, tuple[Any, Any]]:
    """``name`` and, for a known weighting, its class's options."""
    from lightning_sparse_mtl.mtl.weighting import WEIGHTINGS

    schema: dict[str, tuple[Any, Any]] = {"name": (str, "fixed")}
    if isinstance(name, str) and name in WEIGHTINGS.names():
        schema.update(hints_of(WEIGHTINGS.get(name), skip=("tasks", "weights")))
    return schema


def method_schema() -> dict[str, tuple[Any, Any]]:
    from lightning_sparse_mtl.peers.settings import PeerSettings

    return {**hints_of(PeerSettings, skip=("target_macs",)), "name": (str, "group_lasso")}


def check_group_types(cfg: Any) -> None:
    """A value of the wrong type in any of these groups: one line naming its key (see module doc)."""
    from lightning.pytorch import Trainer

    weighting = get(cfg, "weighting")
    name = weighting.get("name") if isinstance(weighting, Mapping) else None
    schemas = {"model": model_schema(), "sparsity": sparsity_schema(), "method": method_schema(),
               "trainer": object_schema(Trainer), "weighting": weighting_schema(name)}  # fmt: skip
    for group, schema in schemas.items():
        check_types(group, get(cfg, group), schema)
    for group in ("optimizer", "scheduler"):
        node = get(cfg, group)
        if isinstance(node, Mapping) and node.get("_target_") is not None:
            check_types(group, {"_target_": node["_target_"]}, object_schema(None))
            schema = object_schema(locate_class(group, node["_target_"]))
            schema.pop("params" if group == "optimizer" else "optimizer", None)
            check_types(group, node, {**schema, "interval": (str, "epoch")} if group == "scheduler" else schema)
