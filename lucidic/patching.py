"""Patching library methods so that it can be undone exactly: what provider
plugins use to implement instrument()/uninstrument(). Imported by plugins
only, so ``import lucidic`` does not load wrapt."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import wrapt

#: (module, class, method, wrapt wrapper(wrapped, instance, args, kwargs))
Patch = tuple[str, str, str, Callable[..., Any]]


class MethodPatches:
    """A set of wrapt patches on methods of library classes.

    ``apply()`` is all or nothing: if one patch fails, those already made are
    undone before the error propagates. ``restore()`` puts back the very
    function objects that were there, in reverse order. Methods a library
    version does not have are skipped (older releases lack newer endpoints).
    """

    def __init__(self) -> None:
        self._originals: list[tuple[type, str, Any]] = []

    def apply(self, patches: Iterable[Patch]) -> None:
        applied: list[tuple[type, str, Any]] = []
        try:
            for module_name, class_name, method, wrapper in patches:
                owner = getattr(importlib.import_module(module_name), class_name, None)
                if owner is None or method not in vars(owner):
                    continue
                original = vars(owner)[method]
                wrapt.wrap_function_wrapper(owner, method, wrapper)
                applied.append((owner, method, original))
        except BaseException:
            _restore(applied)
            raise
        self._originals.extend(applied)

    def restore(self) -> None:
        _restore(self._originals)
        self._originals = []


def _restore(originals: list[tuple[type, str, Any]]) -> None:
    for owner, method, original in reversed(originals):
        setattr(owner, method, original)
