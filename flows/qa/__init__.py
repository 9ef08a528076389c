"""Helpers of the qa-runs agent: the pytest plugin, the subprocess runner, the reports.

Kept import-light on purpose: pytest loads `flows.qa.shard_plugin` inside every test
subprocess, and importing this package must not pull in Prefect or Stalwart there.
"""
