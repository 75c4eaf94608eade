"""A named registry with a decorator that refuses duplicates (the torchvision/timm pattern)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from autoprune.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects. ``kind`` names what is registered, for error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``. Registering a name twice is an error."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The entry for ``name``; a :class:`UserError` listing the choices if unknown."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
