"""The `python` code blocks of the documentation pages (docs/), and running them as tests.

A page's blocks run in order in one namespace, so a block may use what an earlier block of the
same page defined. A block that cannot run on its own is marked on the line before its fence:

    <!-- not-run: the reason -->

Fences may be indented (a block inside a list item); the indentation is removed before running.
Each block is registered in `linecache` under a name of its own, so a step declared in it has a
source (its prompt version) as if it came from a file.
"""

from __future__ import annotations

import linecache
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
NOT_RUN = re.compile(r"^\s*<!-- not-run: (?P<reason>\S.*?) -->\s*$")
FENCE = re.compile(
    r"^(?P<indent>[ ]*)```python[ ]*\n(?P<code>.*?)^(?P=indent)```[ ]*$", flags=re.M | re.S
)


@dataclass(frozen=True)
class CodeBlock:
    page: str  # relative to docs/
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason, when the block is marked not-run


def code_blocks(page: Path) -> list[CodeBlock]:
    """Every `python` block of `page`, in order, with its not-run reason if it has one."""
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = NOT_RUN.match(lines[line - 2]) if line >= 2 else None
        blocks.append(
            CodeBlock(
                page=page.relative_to(DOCS).as_posix(),
                line=line,
                code=textwrap.dedent(match.group("code")),
                not_run=before.group("reason") if before else None,
            )
        )
    return blocks


def pages() -> list[Path]:
    """Every Markdown page of the site, sorted."""
    return sorted(DOCS.rglob("*.md"))


def markers(page: Path) -> list[int]:
    """Line numbers (1-based) of every not-run marker of `page`."""
    return [
        n
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if "not-run" in line and "<!--" in line
    ]


def run_page(page: Path) -> int:
    """Run the page's blocks that are not marked not-run, in order; return how many ran."""
    namespace: dict[str, Any] = {"__name__": f"guide_{page.stem.replace('-', '_')}"}
    ran = 0
    for block in code_blocks(page):
        if block.not_run is not None:
            continue
        filename = f"<docs/{block.page}:{block.line}>"
        linecache.cache[filename] = (
            len(block.code),
            None,
            block.code.splitlines(keepends=True),
            filename,
        )
        exec(compile(block.code, filename, "exec", dont_inherit=True), namespace)
        ran += 1
    return ran
