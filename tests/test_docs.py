"""The documentation: runnable code blocks run, the README stays short, pages and the site stay consistent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers.docs import ROOT, Block, runnable_blocks

README_MAX_LINES = 250


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.name)
def test_runnable_block_runs(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block marked ``<!-- runnable -->`` runs on its own, in a fresh namespace, from the repository root."""
    monkeypatch.chdir(ROOT)
    code = "\n" * (block.line - 1) + block.code  # tracebacks point at the line in the Markdown file
    exec(compile(code, str(block.path), "exec"), {"__name__": "__docs__"})


def test_readme_and_docs_have_runnable_blocks() -> None:
    names = {b.path.name for b in runnable_blocks()}
    assert {"README.md", "method.md"} <= names


def test_readme_is_short_and_links_into_the_docs() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for page in re.findall(r"\]\((docs/[^)#]+\.md)", text):
        assert (ROOT / page).is_file(), page
    assert "make train" in text and "make test" in text and "docs/" in text


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml nav"


def test_method_page_keeps_the_groupings_section() -> None:
    assert "\n## Groupings: input vs coupled\n" in (ROOT / "docs" / "method.md").read_text()


def test_site_builds_strict(tmp_path) -> None:
    """What `make docs` does (warnings are errors: broken links or anchors, a missing API object)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    mkdocs = shutil.which("mkdocs", path=str(ROOT / ".venv" / "bin")) or shutil.which("mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    args = [*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("lightning_sparse_mtl.sparsity.GroupSparsity")
