"""One way to choose things by name: a :class:`Registry` per kind (heads, weightings, tasks, prox operators, ...).

HEADS = Registry("head")

@HEADS.register("conv")
class ConvHead(nn.Module): ...

HEADS.get("conv")     # -> ConvHead;  HEADS.get("x") -> UserError "unknown head 'x'; valid: aspp, conv, skip"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lightning_sparse_mtl.core.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object for one ``kind``; unknown names give the one-line "unknown <kind> 'x'; valid: ..." error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name`` (a name may be registered once)."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: object) -> T:
        if not isinstance(name, str) or name not in self._items:
            raise unknown_name(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
