"""Deprecated module paths of smart_hf 0.1 (a flat package), kept importable.

``import smart_hf.masking`` (and every other module that moved in the 0.2 layout) still works: the name resolves to
a module object that forwards every attribute to the new module, and a `DeprecationWarning` names the new path.
One finder on ``sys.meta_path`` serves them all, so no stub files clutter the package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module -> new module (see docs/architecture.md)
MOVED = {
    "smart_hf.topk": "smart_hf.core.topk",
    "smart_hf.schedule": "smart_hf.core.schedule",
    "smart_hf.budget": "smart_hf.core.budget",
    "smart_hf.granularity": "smart_hf.core.granularity",
    "smart_hf.masking": "smart_hf.state",
    "smart_hf.slimming": "smart_hf.slim",
    "smart_hf.slim_ffn": "smart_hf.slim.ffn",
    "smart_hf.slim_heads": "smart_hf.slim.heads",
    "smart_hf.slim_cnn": "smart_hf.slim.cnn",
    "smart_hf.slim_surgery": "smart_hf.slim.surgery",
    "smart_hf.export": "smart_hf.artifact.export",
    "smart_hf.hub": "smart_hf.artifact.hub",
    "smart_hf.atomic": "smart_hf.artifact.atomic",
    "smart_hf.invariants": "smart_hf.artifact.invariants",
    "smart_hf.sparse": "smart_hf.artifact.kernels",
    "smart_hf.plots": "smart_hf.artifact.plots",
    "smart_hf.training_args": "smart_hf.training.training_args",
    "smart_hf.callbacks": "smart_hf.training.callbacks",
    "smart_hf.trainer": "smart_hf.training.trainer",
    "smart_hf.run": "smart_hf.cli.train",
    "smart_hf.data": "smart_hf.cli.data",
    "smart_hf.metrics": "smart_hf.cli.metrics",
}


class _ForwardingModule(types.ModuleType):
    """Stands in for an old module path; every attribute comes from the module that replaced it."""

    def __init__(self, name: str, target: str):
        super().__init__(name)
        self.__dict__["_smart_target"] = target

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self.__dict__["_smart_target"]), attr)

    def __dir__(self):
        return dir(importlib.import_module(self.__dict__["_smart_target"]))


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (or from smart_hf) -- the old path will be removed.",
            DeprecationWarning,
            stacklevel=3,
        )
        return _ForwardingModule(spec.name, new)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
