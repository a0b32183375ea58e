"""What the stages and commands share, one job a module (docs/internals.md#the-module-map).
Nothing here is run directly, except ``python -m pipeline.lib.params`` (the docs' params
table) and ``pipeline.lib.sources`` (scripts/get-data.sh).

The modules that import TensorFlow (``HEAVY``) are bound lazily by ``from pipeline.lib import
...``: a stand-in that imports the real module at its first attribute, so a stage that stops on
a missing input or a bad param answers before paying TensorFlow's few seconds of import.
``import pipeline.lib.models`` imports at once, as usual (PEP 562's module ``__getattr__``).
"""
from __future__ import annotations

import importlib
from types import ModuleType

HEAVY = ("augmentation", "distribution", "explain", "formats", "inference", "keras_files", "models",
         "runtime", "shards", "training")


class _Later:
    """A heavy submodule, imported at its first attribute read or write."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", f"{__name__}.{name}")

    def _module(self) -> ModuleType:
        return importlib.import_module(object.__getattribute__(self, "_name"))

    def __getattr__(self, attribute: str):
        return getattr(self._module(), attribute)

    def __setattr__(self, attribute: str, value) -> None:  # e.g. a test's monkeypatch
        setattr(self._module(), attribute, value)

    def __delattr__(self, attribute: str) -> None:
        delattr(self._module(), attribute)

    def __repr__(self) -> str:
        return f"<{object.__getattribute__(self, '_name')}, imported at first use>"


def __getattr__(name: str):
    if name in HEAVY:  # once imported, the submodule itself is the package's attribute
        return _Later(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
