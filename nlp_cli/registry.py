"""A registry of named things (losses, noise models, purifiers) with did-you-mean lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from nlp_cli.errors import UsageError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Specs by name, in registration order; an unknown name is one UsageError line."""

    def __init__(self, kind: str, unknown: str | None = None) -> None:
        self.kind = kind  # in "… is registered twice"
        self.unknown = unknown or kind  # in "unknown … 'x'"
        self._specs: dict[str, T] = {}

    def add(self, name: str, spec: T) -> None:
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._specs[name] = spec

    def names(self) -> list[str]:
        return list(self._specs)

    def mapping(self) -> dict[str, T]:
        """The live name → spec dict (for lookups by more than the exact name)."""
        return self._specs

    def get(self, name: str) -> T:
        try:
            return self._specs[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.unknown} {name!r}{did_you_mean(name, self.names())}: "
                f"choose from {', '.join(self._specs)}"
            ) from None


def first_doc_line(fn: Callable) -> str:
    """The first line of a function's docstring ('' without one)."""
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
