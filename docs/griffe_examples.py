"""griffe extension for the API reference: reads a docstring's `Example:` section as `Examples:`.

Stalwart's docstrings head their doctests `Example:` (singular), which griffe's Google-style
parser takes for an admonition of Markdown text, so `>>> ...` lines and their output would render
as nested block quotes and reference links. As an examples section they render as Python console
code. `mkdocs.yml` loads this file through mkdocstrings' `extensions` option.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

SINGULAR = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


class ExampleSections(griffe.Extension):
    """Renames every `Example:` section heading to `Examples:` before griffe parses it."""

    def on_object(self, *, obj: griffe.Object, **_: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = SINGULAR.sub(r"\1Examples:", obj.docstring.value)
