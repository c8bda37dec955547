"""Module paths that moved keep working: the old module is an alias of the new one, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_module(old: str, new: str) -> None:
    """Make module ``old`` (call this from its body) the module ``new``: same objects, private names included;
    the import warns with the path to use instead."""
    warnings.warn(
        f"{old} moved to {new}; import it from there (the old path will be removed)", DeprecationWarning, stacklevel=3
    )
    sys.modules[old] = importlib.import_module(new)
