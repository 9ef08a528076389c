"""Keep the bundled QA sample suites out of any pytest run started above this directory.

They are data for the qa-runs agent (some fail on purpose); the agent runs each one with its
own `pytest.ini` as rootdir, where this file is outside the conftest path and never loaded.
"""

collect_ignore_glob = ["*"]
