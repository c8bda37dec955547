"""A pruned architecture as plain data: the channel sizes of every conv / linear / norm layer.

``architecture_of(net)`` records ``{module name: {attribute: int}}`` (``in_channels``, ``out_channels``,
``groups``, ``num_features``, ``in_features``, ``out_features``); ``apply_architecture(net, arch, state_dict)``
resizes a freshly built dense net of the same config to it (parameters and buffers take the shapes of
``state_dict``), so a pruned model is saved as a state dict + config + this dict and loads with
``torch.load(weights_only=True)``, independent of where the classes live.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase)


def architecture_of(net: nn.Module) -> dict[str, dict[str, int]]:
    """``{name: {attr: int}}`` for every conv, linear and batch/instance-norm layer of ``net``."""
    return {
        name: {a: int(getattr(m, a)) for a in _ATTRS if isinstance(getattr(m, a, None), int)}
        for name, m in net.named_modules()
        if isinstance(m, _LAYERS)
    }


@torch.no_grad()
def apply_architecture(
    net: nn.Module, arch: Mapping[str, Mapping[str, int]], state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Resize ``net`` IN PLACE to ``arch`` and load ``state_dict`` (strict); returns ``net``.

    Raises ``ValueError`` naming the first layer that ``net`` lacks.
    """
    modules = dict(net.named_modules())
    for name, attrs in arch.items():
        if name not in modules:
            raise ValueError(f"the model built from the config has no layer {name!r}")
        m = modules[name]
        for a, v in attrs.items():
            setattr(m, a, int(v))
        for pname, p in list(m.named_parameters(recurse=False)):
            key = f"{name}.{pname}"
            if key in state_dict and state_dict[key].shape != p.shape:
                setattr(m, pname, nn.Parameter(torch.empty_like(state_dict[key]), requires_grad=p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            key = f"{name}.{bname}"
            if b is not None and key in state_dict and state_dict[key].shape != b.shape:
                setattr(m, bname, torch.empty_like(state_dict[key]))
    net.load_state_dict(state_dict, strict=True)
    return net
