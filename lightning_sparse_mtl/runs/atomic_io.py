"""Deprecated path: moved to :mod:`lightning_sparse_mtl.core.atomic_io` (the ground layer); this alias warns."""

from lightning_sparse_mtl.core.moved import alias_module

alias_module(__name__, "lightning_sparse_mtl.core.atomic_io")
