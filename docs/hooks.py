"""mkdocs hook: writes the settings table of docs/configuration.md from `agents.settings.Settings`.

The page holds the marker `<!-- settings-table -->`; the built site shows one row per field of
`Settings` (its environment variable, description and default), so the table cannot drift from
the code. `mkdocs.yml` names this file under `hooks`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agents.settings import Settings

MARKER = "<!-- settings-table -->"


def environment_variable(name: str, field: FieldInfo) -> str:
    """The variable a field is read from: its alias when it has one, else STALWART_<NAME>."""
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"STALWART_{name.upper()}"


def default_text(name: str, field: FieldInfo) -> str:
    """A field's default as a reader wants it: durations as `90d`, the data directory by name."""
    if name == "data_dir":
        return "the per-user data directory (platformdirs)"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None or value == {}:
        return "unset"
    if isinstance(value, timedelta) and value.days and not value.seconds:
        return f"`{value.days}d`"
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table of every `Settings` field, in declaration order."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        variable = environment_variable(name, field)
        rows.append(f"| `{variable}` | {meaning} | {default_text(name, field)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs event: put the settings table where the page asks for it."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, settings_table())
