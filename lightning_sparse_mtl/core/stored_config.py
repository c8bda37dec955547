"""What a config may name for instantiation: the ``_target_``s our own ``conf/`` tree uses, and torch's optimizers
and lr schedulers. A config read from a file (a checkpoint's hyper-parameters, ``pruned.pt``) is checked against
them before anything in it is instantiated; on the command line, objects nested inside ``optimizer``, ``scheduler``,
``callbacks`` and ``logger`` entries are checked before the first of them is built.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_sparse_mtl.core.config_dir import CONFIG_DIR
from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.safe_load import TRUST_HINT

# Set by the code, not by a YAML file of conf/ (core/configs.py: the Trainer schema's default).
CODE_TARGETS = ("lightning.pytorch.Trainer",)
_TARGET_LINE = re.compile(r"""^\s*_target_:\s*["']?([\w.]+)["']?""", re.MULTILINE)


@functools.cache
def known_targets(config_dir: str = CONFIG_DIR) -> frozenset[str]:
    """Every ``_target_`` that a YAML file of ``config_dir`` names, plus :data:`CODE_TARGETS`."""
    found = set(CODE_TARGETS)
    for yaml_file in Path(config_dir).rglob("*.yaml"):
        found.update(_TARGET_LINE.findall(yaml_file.read_text(encoding="utf-8", errors="replace")))
    return frozenset(found)


def _torch_family(target: str) -> bool:
    """``torch.optim.<Optimizer>`` or ``torch.optim.lr_scheduler.<scheduler>``: looked up by attribute, never
    imported by a name from the config."""
    import torch

    module, _, name = target.rpartition(".")
    if module == "torch.optim":
        obj = getattr(torch.optim, name, None)
        return isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
    if module == "torch.optim.lr_scheduler":
        sched = torch.optim.lr_scheduler
        obj = getattr(sched, name, None)
        return isinstance(obj, type) and issubclass(obj, sched.LRScheduler | sched.ReduceLROnPlateau)
    return False


def is_known_target(target: Any) -> bool:
    return isinstance(target, str) and (target in known_targets() or _torch_family(target))


def targets_in(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted place, _target_ value)`` of every object a config node describes, outermost first."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield where or "<root>", node["_target_"]
        for key, value in node.items():
            if key != "_target_":
                yield from targets_in(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from targets_in(value, f"{where}[{i}]")


def interpolations_in(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted place, string)`` of every string holding an OmegaConf interpolation (``${...}``)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from interpolations_in(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from interpolations_in(value, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield where or "<root>", node


def check_stored_config(cfg: Any, source: str | os.PathLike, trust: bool = False) -> None:
    """Refuse (one line naming ``source`` and the object) a config read from a file that names anything but a
    known target; ``trust`` (``trust_checkpoint=true``) lets it through."""
    if trust:
        return
    for where, text in interpolations_in(cfg):  # a saved config is resolved: "${...}" could only be planted
        raise UserError(f"{source} stores a config whose {where} is the interpolation {text!r}, which a saved "
                        f"config never holds (it is resolved when saved); {TRUST_HINT}")  # fmt: skip
    for where, target in targets_in(cfg):
        if not is_known_target(target):
            raise UserError(
                f"{source} stores a config whose {where}._target_ is {target!r}, which no config of "
                f"lightning-sparse-mtl uses (instantiating it would run code the file names); {TRUST_HINT}"
            )


def _unresolved(node: Any) -> Any:
    """Plain containers, interpolations left as written (callbacks interpolate ``${hydra:runtime.output_dir}``)."""
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig | ListConfig) else node


def check_nested_targets(cfg: Any, groups: tuple[str, ...] = ("optimizer", "scheduler")) -> None:
    """Command line: ``optimizer``/``scheduler`` hold plain values (their own ``_target_`` only); an entry of
    ``callbacks``/``logger`` may nest only known targets. Checked before anything is instantiated."""
    cfg = {g: _unresolved(cfg.get(g)) for g in (*groups, "callbacks", "logger")} if isinstance(cfg, Mapping) else {}
    for group in groups:
        node = cfg.get(group)
        for where, target in targets_in(node, group):
            if where != group:
                raise UserError(f"{where}._target_={target}: {group} takes plain values, not objects; "
                                f"remove {where}")  # fmt: skip
    for group in ("callbacks", "logger"):
        entries = cfg.get(group)
        for name, entry in entries.items() if isinstance(entries, Mapping) else ():
            for where, target in targets_in(entry, f"{group}.{name}"):
                if where != f"{group}.{name}" and not is_known_target(target):
                    raise UserError(f"{where}._target_={target}: an object nested in a {group} entry must be one "
                                    f"this package's configs use; remove {where}")  # fmt: skip
