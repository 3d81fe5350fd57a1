"""Forwarding of names moved to another module of ``lib`` (PEP 562 module ``__getattr__``/``__dir__``).

A module whose names moved to a module that imports it back (``lib.groups`` -> ``lib.symmetry``, ...)
cannot import them at the top; it forwards them instead, importing the target on first use.
"""
from __future__ import annotations

import importlib
import sys


def forward_names(module: str, target: str, names) -> tuple:
    """``(__getattr__, __dir__)`` for ``module`` that look ``names`` up in ``target`` (e.g. ``"lib.symmetry"``)."""
    names = tuple(names)

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(target), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[module])) | set(names))

    return __getattr__, __dir__
