"""Where the Hydra configs live, and plain-dict copies of a resolved config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import Container, DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent.parent / "conf")

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
