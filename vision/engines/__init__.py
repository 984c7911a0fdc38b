"""The engines, one package each, on one contract (:mod:`vision.engines.contract`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """A package's ``__all__`` and module ``__getattr__`` that import each name from its submodule on first
    use (``exports``: submodule -> names), so that a light submodule (a config) loads without the heavy ones."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def attribute(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)

    return list(module_of), attribute
