"""The guides' examples run as written, and the documentation site builds with no warning.

The convention (docs/getting-started.md, "Examples in these pages are tests"): every `python`
block of a page runs, in order, in one namespace per page; a fragment is marked
`<!-- not-run: reason -->` on the line before its fence.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.guides import DOCS, ROOT, code_blocks, markers, pages, run_page

RUNNABLE = [p for p in pages() if any(b.not_run is None for b in code_blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[p.relative_to(DOCS).as_posix() for p in RUNNABLE])
def test_the_guide_examples_run(
    page: Path,
    tmp_path: Path,
    sqlite_url: str,
    prefect_api: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STALWART_DATA_DIR", str(tmp_path / "data"))
    from agents.settings import reload_settings

    reload_settings()
    assert run_page(page) == sum(b.not_run is None for b in code_blocks(page))


def test_every_not_run_marker_sits_on_a_python_block_and_says_why() -> None:
    """A marker that drifted away from its block would silently run (or skip) the wrong code."""
    for page in pages():
        marked = {b.line - 1 for b in code_blocks(page) if b.not_run is not None}
        stray = sorted(set(markers(page)) - marked)
        assert not stray, f"{page.relative_to(ROOT)}: not-run markers off a python block: {stray}"


def test_the_guides_hold_runnable_examples() -> None:
    """The mechanism runs something: each page that teaches code keeps runnable examples."""
    names = {p.relative_to(DOCS).as_posix() for p in RUNNABLE}
    assert {"getting-started.md", "governed-reasoning.md", "decision-log.md"} <= names


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or a bad docstring fails."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    configuration = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    from agents.settings import Settings

    # The settings table is generated from the model (docs/hooks.py): every field is on the page.
    for name in Settings.model_fields:
        variable = "SENTRY_DSN" if name == "sentry_dsn" else f"STALWART_{name.upper()}"
        assert variable in configuration, variable
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for public in (
        "agents.declare.agent.Agent",
        "agents.declare.options.Review",
        "agents.declare.options.Calibration",
        "agents.declare.options.Shadow",
        "agents.declare.decision.Decision",
        "agents.result.RunResult",
        "agents.reviews.answer",
        "agents.blocks.ModelEndpoint",
        "agents.settings.Settings",
    ):
        assert f'id="{public}"' in api, public


def test_every_block_field_is_documented() -> None:
    from agents.blocks import ModelEndpoint, SentryConfig, StateDatabase

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for block in (ModelEndpoint, SentryConfig, StateDatabase):
        assert f"`{block.__name__}`" in page
        for field in block.model_fields:
            assert f"`{field}`" in page, f"{block.__name__}.{field}"
