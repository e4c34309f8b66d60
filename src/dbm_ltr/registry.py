"""Named factories, so that a config file can name a model, loss, method, data set or
transform, and a user can add their own (``register`` works as a decorator)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Registry", "keyword_defaults"]


def keyword_defaults(factory: Callable[..., Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The parameters of ``factory`` that have a default, with it (``self``/``cls``, ``*args``,
    ``**kwargs`` and the names in ``exclude`` left out): what a config may set."""
    skip = set(exclude)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.default is not p.empty and p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


class Registry(dict):
    """A ``dict`` of name -> factory with checked registration and helpful lookup errors.

    Example:
        >>> trunks = Registry("model")
        >>> @trunks.register("tiny")
        ... def tiny(): return "a model"
        >>> trunks.lookup("tiny")()
        'a model'
        >>> trunks.lookup("huge")
        Traceback (most recent call last):
        ValueError: unknown model 'huge'; available: tiny
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str, factory: Callable[..., Any] | None = None):
        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
            if name in self:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            if not callable(f):
                raise TypeError(f"{self.kind} factory for {name!r} is not callable: {f!r}")
            self[name] = f
            return f

        return add(factory) if factory is not None else add

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str) -> Callable[..., Any]:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self[name]
