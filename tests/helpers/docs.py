"""The runnable code blocks of README.md and docs/*.md (convention: docs/contributing.md "Runnable code blocks")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
# the marker line, then (blank lines allowed) a ```python fence (a title or other attributes may follow), its body
BLOCK = re.compile(r"^<!-- runnable -->[ \t]*\n(?:[ \t]*\n)*```python[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the code's first line
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def runnable_blocks(paths: list[Path] | None = None) -> list[Block]:
    """Every marked block; a marker that is not followed by a python block is an error (a typo must not hide one)."""
    blocks = []
    for path in paths or doc_files():
        text = path.read_text()
        found = list(BLOCK.finditer(text))
        markers = len(re.findall(rf"^{re.escape(MARKER)}[ \t]*$", text, flags=re.M))
        if markers != len(found):
            raise AssertionError(f"{path}: {markers} '{MARKER}' markers but {len(found)} python blocks after them")
        for m in found:
            blocks.append(Block(path, text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return blocks
