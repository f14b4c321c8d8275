"""Old import paths that keep working: thin PEP 562 ``__getattr__`` re-exports.

Names users import from the flat library of earlier versions (``ner_core.predict.Tagger``,
``ner_core.modeldir.load_model_dir``, ``ner_core.model.NERModel``, ``ner_core.training.train``, ...) are
looked up in their new rooms on first use: imported lazily (so no import circle and no eager import comes
back) and announced once per name with a :class:`FutureWarning` that names the new path.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved"]

_WARNED: set[str] = set()


def moved(old_module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old_module`` that finds each of ``names`` (name -> new module) in its
    new module, warning once per name; any other name raises :class:`AttributeError`."""

    def __getattr__(name: str) -> Any:
        new_module = names.get(name)
        if new_module is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(new_module), name)
        where = f"{old_module}.{name}"
        if where not in _WARNED:
            _WARNED.add(where)
            warnings.warn(
                f"{where} moved to {new_module}.{name}; the old path keeps working but will go",
                FutureWarning,
                stacklevel=2,
            )
        return value

    return __getattr__
