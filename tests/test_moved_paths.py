"""Import paths that moved keep working: each old path warns (naming the new one) and gives the same objects."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import lightning_sparse_mtl.core.errors as core_errors

P = "lightning_sparse_mtl."
MOVED = {f"runs.{name}": f"core.{name}" for name in (
    "errors", "atomic_io", "results", "provenance", "config_dir", "configs", "safe_load", "validate", "stored_config",
)}  # fmt: skip


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_is_the_new_module(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    new = importlib.import_module(P + MOVED[old])
    monkeypatch.delitem(sys.modules, P + old, raising=False)  # import it afresh; restored afterwards
    with pytest.warns(DeprecationWarning, match=rf"{P}{old} moved to {P}{MOVED[old]}; import it from there"):
        module = importlib.import_module(P + old)
    assert module is new
    public = [n for n in vars(new) if not n.startswith("__")]
    assert public and all(getattr(module, n) is getattr(new, n) for n in public)


def test_from_imports_of_an_old_path_give_the_same_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, P + "runs.errors", raising=False)
    scope: dict = {}
    with pytest.warns(DeprecationWarning):
        exec("from lightning_sparse_mtl.runs.errors import UserError, unknown_name", scope)
    assert scope["UserError"] is core_errors.UserError and scope["unknown_name"] is core_errors.unknown_name
    from lightning_sparse_mtl.runs import errors  # the package attribute is the new module too

    assert errors is core_errors


def test_names_that_moved_out_of_a_module_stay_importable_there() -> None:
    from lightning_sparse_mtl.data.datamodule import input_size_of
    from lightning_sparse_mtl.deploy import compact, pruned_file
    from lightning_sparse_mtl.models.build import build_net
    from lightning_sparse_mtl.reporting import colorize, media
    from lightning_sparse_mtl.runs import checkpoints, validate_train
    from lightning_sparse_mtl.training import module

    assert module.build_net is build_net and compact.input_size_of is input_size_of
    assert checkpoints.save_pruned is pruned_file.save_pruned and checkpoints.PRUNED_FORMAT == pruned_file.PRUNED_FORMAT
    assert media.image_to_rgb is colorize.image_to_rgb and media.render_grid is colorize.render_grid
    from lightning_sparse_mtl.core import optim_checks

    assert validate_train.check_optimizer_objects is optim_checks.check_optimizer_objects


def test_the_package_itself_imports_no_deprecated_path() -> None:
    from helpers.import_graph import import_edges, package_sources

    package = importlib.import_module("lightning_sparse_mtl")
    sources = package_sources(Path(package.__file__).parent)
    stale = [f"{e.source}:{e.line}: {e.target}" for e in import_edges(sources) if e.target[len(P) :] in MOVED]
    assert not stale, "import the new path (tests/test_moved_paths.py MOVED):\n" + "\n".join(stale)
