"""The layers hold: ground < library < training < commands, no import cycle, late imports only in the commands.

The checker (tests/helpers/import_graph.py) reads every module with ``ast``: top-level and function-level imports,
``import a.b.c``, ``from a.b import c`` and relative ``from . import x``. The tests at the end feed it the two
cycles the package once had and check it names them.
"""

from __future__ import annotations

from pathlib import Path

from helpers.import_graph import (
    PACKAGE,
    Edge,
    cycle_problems,
    graph_of,
    import_edges,
    imports_of,
    package_sources,
    problems,
)

import lightning_sparse_mtl

PACKAGE_DIR = Path(lightning_sparse_mtl.__file__).parent
ENTRY_POINTS = ("train", "prune", "evaluate", "report")
P = PACKAGE + "."


def _src(*lines: str) -> tuple[str, bool]:
    return "\n".join(lines) + "\n", False


def test_the_package_keeps_its_layers() -> None:
    sources = package_sources(PACKAGE_DIR)
    assert len(sources) > 80  # really scanned the package
    found = problems(sources)
    assert not found, "the import structure breaks the layers (docs/architecture.md):\n" + "\n".join(found)


def test_the_scan_sees_late_and_top_level_imports() -> None:
    edges = import_edges(package_sources(PACKAGE_DIR))
    pairs = {(e.source, e.target, e.late) for e in edges}
    assert (P + "runs.checkpoints", P + "models.build", True) in pairs  # late: the prune command starts fast
    assert (P + "runs.run_dir", P + "runs.validate_train", True) in pairs  # a command's late import


def test_entry_points_do_not_import_each_other() -> None:
    graph = graph_of(import_edges(package_sources(PACKAGE_DIR)))
    for entry in ENTRY_POINTS:
        others = {P + e for e in ENTRY_POINTS if e != entry}
        assert not graph.get(P + entry, set()) & others, entry


def test_imports_of_reads_every_form() -> None:
    known = {PACKAGE, P + "a", P + "a.b", P + "a.c", P + "d", P + "d.e"}
    text = "\n".join([
        f"import {PACKAGE}.a.b",
        "from . import c",
        "from ..d import e",
        "import torch.nn",
        "def f():",
        f"    from {PACKAGE}.d.e import thing",
        "class K:",
        f"    from {PACKAGE} import d",
    ])  # fmt: skip
    edges = imports_of(P + "a.x", text, False, known)
    assert edges == [
        Edge(P + "a.x", P + "a.b", 1, False),
        Edge(P + "a.x", P + "a.c", 2, False),
        Edge(P + "a.x", P + "d.e", 3, False),
        Edge(P + "a.x", P + "d.e", 6, True),
        Edge(P + "a.x", P + "d", 8, False),
    ]
    # in a package's __init__, "." is the package itself
    assert imports_of(P + "a", "from . import b\n", True, known) == [Edge(P + "a", P + "a.b", 1, False)]


def test_a_climbing_import_and_a_late_one_are_reported() -> None:
    sources = {
        P + "core.errors": _src(f"from {PACKAGE}.models.net import Net"),
        P + "models.net": _src("def f():", f"    from {PACKAGE}.core.errors import UserError"),
        P + "runs.cli": _src("def main():", f"    from {PACKAGE}.models.net import Net"),
    }
    found = problems(sources)
    assert found == [
        f"{P}core.errors:1: {P}core.errors (ground) imports {P}models.net (library): a module imports only its own "
        "layer and those below (ground < library < training < commands)",
        f"{P}models.net:2: function-level import of {P}core.errors in {P}models.net (library): only the commands "
        "layer may import late (for start-up time); import it at the top",
        f"import cycle: {P}core.errors -> {P}models.net -> {P}core.errors (modules in the cycle: {P}core.errors, "
        f"{P}models.net)",
    ]  # runs.cli's late import of the library is allowed


def test_a_module_in_no_layer_is_reported() -> None:
    assert problems({P + "newpkg.thing": _src()}) == [
        f"{P}newpkg.thing is in no layer: place its package in LAYER_OF (tests/helpers/import_graph.py) and in "
        "docs/architecture.md"
    ]


# The two cycles the package had before the layers (issue 24), as graphs and as the code that made them.
DEPLOY_CYCLE = (
    f"import cycle: {P}deploy.compact -> {P}runs.checkpoints -> {P}training.module -> {P}deploy.compact "
    f"(modules in the cycle: {P}deploy.compact, {P}runs.checkpoints, {P}training.module)"
)
MEDIA_CYCLE = (
    f"import cycle: {P}reporting.media -> {P}reporting.prediction_figure -> {P}reporting.media "
    f"(modules in the cycle: {P}reporting.media, {P}reporting.prediction_figure)"
)


def test_the_old_cycles_as_graphs_are_reported() -> None:
    graph = {
        P + "deploy.compact": {P + "runs.checkpoints", P + "sparsity.pruning"},
        P + "runs.checkpoints": {P + "training.module", P + "core.errors"},
        P + "training.module": {P + "deploy.compact"},
        P + "reporting.media": {P + "reporting.prediction_figure"},
        P + "reporting.prediction_figure": {P + "reporting.media"},
    }
    assert cycle_problems(graph) == [DEPLOY_CYCLE, MEDIA_CYCLE]


def test_the_old_cycles_as_code_are_reported() -> None:
    """The imports as they were: a top-level one and late ones that closed the cycles."""
    sources = {
        P + "deploy.compact": _src(f"from {PACKAGE}.runs.checkpoints import save_pruned"),
        P + "runs.checkpoints": _src("def _module_from_config(cfg, path):",
                                     f"    from {PACKAGE}.training.module import SparseMTLModule"),
        P + "training.module": _src("class SparseMTLModule:", "    def __init__(self, cfg):",
                                    f"        from {PACKAGE}.deploy.compact import input_size_of"),
        P + "reporting.media": _src("class PredictionImages:", "    def render(self):",
                                    f"        from {PACKAGE}.reporting.prediction_figure import prediction_figure"),
        P + "reporting.prediction_figure": _src(f"from {PACKAGE}.reporting.media import image_to_rgb, overlay"),
    }  # fmt: skip
    found = problems(sources)
    assert DEPLOY_CYCLE in found and MEDIA_CYCLE in found
    assert (
        f"{P}deploy.compact:1: {P}deploy.compact (library) imports {P}runs.checkpoints (commands): a module "
        "imports only its own layer and those below (ground < library < training < commands)" in found
    )
    assert any(p.startswith(f"{P}reporting.media:3: function-level import") for p in found)
