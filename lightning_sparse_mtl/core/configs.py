"""The Trainer schema the Hydra configs build on, plain-dict copies of a resolved config; CONFIG_DIR (config_dir)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import Container, DictConfig, OmegaConf

from lightning_sparse_mtl.core.config_dir import CONFIG_DIR, find_config_dir  # noqa: F401 - re-exported

# The parts of the train config that define the model and its training (what checkpoints store).
MODULE_KEYS = (
    "lambda",
    "seed",
    "tasks",
    "task_weights",
    "data",
    "model",
    "sparsity",
    "weighting",
    "optimizer",
    "scheduler",
)


def plain_config(cfg: Mapping | DictConfig, keys: tuple[str, ...] | None = None) -> dict:
    """A resolved, plain-dict copy of ``cfg`` (only ``keys`` when given; the ``hydra`` node is dropped)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    out = {}
    for key in keys or list(cfg.keys()):
        if key in cfg and key != "hydra":
            node = cfg._get_node(key)
            out[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, Container) else cfg[key]
    return out


# Set by the code (train's callbacks/loggers/run dir), so not config keys.
_TRAINER_ARGS_SET_BY_CODE = ("self", "logger", "callbacks", "default_root_dir")


def trainer_schema() -> type:
    """A dataclass with every ``lightning.Trainer`` argument and Lightning's own default, plus ``_target_``.

    Stored as the config ``trainer/lightning``, so ``conf/trainer/*.yaml`` state only what they change, every Trainer
    argument can be overridden as ``trainer.<arg>=...``, and a misspelt key is refused at composition.
    """
    import lightning as L

    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default="lightning.pytorch.Trainer"))]
    for name, param in inspect.signature(L.Trainer.__init__).parameters.items():
        if name in _TRAINER_ARGS_SET_BY_CODE or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default if isinstance(param.default, str | int | float | bool | type(None)) else None
        fields.append((name, Any, dataclasses.field(default=default)))
    return dataclasses.make_dataclass("TrainerConf", fields)


ConfigStore.instance().store(group="trainer", name="lightning", node=trainer_schema())
