"""Channel groups of the shared encoder: one group per *input* channel ``W[:, c]`` of each layer weight.

Grouped layers: plain (``groups=1``) ``Conv2d`` (weight (O, I, kh, kw), group size O*kh*kw) and
``nn.Linear`` (weight (O, I), group size O: transformer encoders such as ``mit_b*``; ``linear=False``
leaves them out). Not grouped, with the reason :func:`ungrouped_layers` gives: the *image conv(s)*
(layers whose input is computed from the image by parameter-free ops only, found by tracing one forward,
whatever their channel count), grouped and depthwise convs (a slice ``W[:, c]`` of a grouped weight is
not one whole input channel), and layers matched by ``exclude``. A parameter shared by several modules
is one group (listed once, under its first name).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError

PROBE_SHAPE = (1, 3, 32, 32)


@dataclass(frozen=True)
class ConvGroup:
    """The input-channel groups of one layer: ``weight`` (O, I, *k) holds I groups ``W[:, c]`` of p_g = O*prod(k).

    Conv weights are 4-D (O, I, kh, kw); Linear weights are 2-D (O, I). Norms reduce over every dim but 1.
    """

    name: str
    weight: nn.Parameter

    @property
    def num_groups(self) -> int:
        return self.weight.shape[1]

    @property
    def group_size(self) -> int:
        return self.weight.numel() // max(self.weight.shape[1], 1)

    @property
    def sqrt_p(self) -> float:
        return math.sqrt(self.group_size)

    def sizes(self) -> torch.Tensor:
        """(I,) number of weights in each group (all equal: p_g)."""
        return torch.full((self.num_groups,), float(self.group_size), dtype=torch.float64)

    def sqrt_sizes(self) -> torch.Tensor:
        """(I,) float32 sqrt(p_g): the seed's group weight."""
        return torch.full((self.num_groups,), self.sqrt_p, dtype=torch.float32)

    @property
    def numel(self) -> int:
        return self.weight.numel()

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.weight]

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def version(self) -> tuple[int, ...]:
        return (self.weight._version,)


def group_norms(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (O, I, *k) -> (I,) Euclidean norm of every input-channel slice ``W[:, c]``."""
    return torch.linalg.vector_norm(weight, dim=[d for d in range(weight.dim()) if d != 1])


def _reads_params(fn: Any, params: set[int], memo: dict) -> bool:
    """Whether the autograd graph below ``fn`` reaches a parameter (breadth first: parameters sit near the top).

    ``memo`` caches nodes known to reach none (a fully explored sub-graph) and start nodes known to reach one.
    """
    if fn in memo:
        return memo[fn]
    queue, seen = deque([fn]), {fn}
    while queue:
        node = queue.popleft()
        if memo.get(node) or id(getattr(node, "variable", None)) in params:
            memo[fn] = True
            return True
        for f, _ in node.next_functions:
            if f is not None and f not in seen and memo.get(f) is not False:
                seen.add(f)
                queue.append(f)
    memo.update(dict.fromkeys(seen, False))
    return False


def _is_float(x: Any) -> bool:
    return torch.is_tensor(x) and x.is_floating_point()


def image_layers(module: nn.Module, example_inputs: Any = None) -> set[nn.Module]:
    """Conv/Linear layers of ``module`` that read the image: their input is computed from ``example_inputs``
    by parameter-free ops only (padding, normalisation by buffers, ...). Default probe: a (1, 3, 32, 32)
    tensor, then (1, 3, 224, 224) for models that need their native size.

    One forward in ``eval()`` mode (no running-statistics update); modes and ``requires_grad`` flags are restored.
    """
    if example_inputs is not None:
        return _trace_image_layers(module, example_inputs)
    ref = next(module.parameters(), torch.zeros(()))
    dtype = ref.dtype if ref.is_floating_point() else None
    try:
        return _trace_image_layers(module, torch.randn(PROBE_SHAPE, device=ref.device, dtype=dtype))
    except UserError:
        return _trace_image_layers(module, torch.randn(1, 3, 224, 224, device=ref.device, dtype=dtype))


@torch.no_grad()
def _trace_image_layers(module: nn.Module, example_inputs: Any) -> set[nn.Module]:
    params = list(module.parameters())
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    inputs = tuple(x.detach().requires_grad_(True) if _is_float(x) else x for x in inputs)
    ids = {id(p) for p in params}
    memo: dict = {}
    found: set[nn.Module] = set()

    def pre_hook(layer: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not torch.is_tensor(x):
            return
        if x.grad_fn is None:
            if any(x is i for i in inputs):
                found.add(layer)
        elif not _reads_params(x.grad_fn, ids, memo):
            found.add(layer)

    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_pre_hook(pre_hook) for m in layers]
    flags = [(p, p.requires_grad) for p in params]
    was_training = module.training
    shape = tuple(inputs[0].shape) if inputs and torch.is_tensor(inputs[0]) else "given"
    try:
        for p in params:
            p.requires_grad_(True)
        module.eval()
        with torch.enable_grad():
            module(*inputs)
    except Exception as err:
        raise UserError(
            f"cannot run the encoder on a {shape} probe to find the conv that reads the image "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); pass example_inputs or "
            "exclude_image_conv=False"
        ) from err
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(was_training)
    return found


def _candidates(module: nn.Module, linear: bool) -> list[tuple[str, nn.Module, str | None]]:
    """(name, layer, reason it is not grouped or None) for every Conv2d (and Linear) of ``module``."""
    out = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d):
            why = None
            if layer.groups > 1:
                why = "depthwise conv" if layer.groups == layer.in_channels else "grouped conv"
            out.append((name, layer, why))
        elif isinstance(layer, nn.Linear):
            out.append((name, layer, None if linear else "linear layer (grouping linear layers is off)"))
    return out


def _select(
    module: nn.Module, exclude_image_conv: bool, exclude: Sequence[str], prefix: str, linear: bool, example_inputs: Any
) -> tuple[list[ConvGroup], dict[str, str]]:
    patterns = [re.compile(p) for p in exclude]
    image = image_layers(module, example_inputs) if exclude_image_conv else set()
    groups, skipped, seen = [], {}, {}
    for name, layer, why in _candidates(module, linear):
        full = f"{prefix}{name}"
        if why is None and layer in image:
            why = "reads the image"
        if why is None and any(p.search(full) for p in patterns):
            why = "excluded by pattern"
        if why is None and id(layer.weight) in seen:
            why = f"shares its weight with {seen[id(layer.weight)]} (one group)"
        if why is not None:
            skipped[full] = why
            continue
        seen[id(layer.weight)] = full
        groups.append(ConvGroup(full, layer.weight))
    return groups, skipped


def find_conv_groups(
    module: nn.Module,
    exclude_image_conv: bool = True,
    exclude: Sequence[str] = (),
    prefix: str = "",
    linear: bool = True,
    example_inputs: Any = None,
) -> list[ConvGroup]:
    """The channel groups of ``module``: every plain Conv2d and (``linear=True``) every Linear.

    ``exclude_image_conv`` drops the layers that read the image (found by one traced forward on
    ``example_inputs``, default a (1, 3, 32, 32) tensor); ``exclude`` holds regexes matched (``re.search``)
    against the layer name (``prefix`` + module path). Grouped/depthwise convs are skipped; a weight shared by
    several layers gives one group.
    """
    return _select(module, exclude_image_conv, exclude, prefix, linear, example_inputs)[0]


def ungrouped_layers(
    module: nn.Module,
    exclude_image_conv: bool = True,
    exclude: Sequence[str] = (),
    prefix: str = "",
    linear: bool = True,
    example_inputs: Any = None,
) -> dict[str, str]:
    """``{layer name: reason}`` for the Conv2d/Linear layers :func:`find_conv_groups` leaves out (same arguments)."""
    return _select(module, exclude_image_conv, exclude, prefix, linear, example_inputs)[1]
