"""Fixtures shared by this project's tests."""

import os
import re
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def execution(request: pytest.FixtureRequest) -> int:
    """How many times this test has run in the current QA round (1 on the first run).

    The QA runner gives every round a fresh `QA_STATE_DIR`, so a timing-sensitive test can
    fail on its first execution and pass on the rerun, the same way every time.
    """
    state = Path(os.environ.get("QA_STATE_DIR") or Path(tempfile.gettempdir()) / "qa-state")
    state.mkdir(parents=True, exist_ok=True)
    counter = state / (re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.nodeid) + ".count")
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(count))
    return count
