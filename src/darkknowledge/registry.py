"""Name → builder registries, filled at the point of definition (``@models.register("mlp")``).

Registries drive the CLI (``dk ls``), config lookup and the contract test suites. Names resolve
only through them: configs never import code.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from darkknowledge.errors import DKError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of builders of one kind (``methods``, ``models``, ``datasets``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f"did you mean {close[0]!r}?" if close else ""
            raise DKError(
                f"unknown {self.kind} {name!r}",
                f"{hint} choose one of: {', '.join(sorted(self._items))} (see `dk ls`)",
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
