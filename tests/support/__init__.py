"""What the tests share besides fixtures: helper agents run in subprocesses or loaded by the CLI
(`cli_agent`, `durable_agent`, `serve_agent`), the small models and agents many tests declare
(`models`), and PostgreSQL database helpers (`postgres`). Fixtures live in tests/conftest.py."""
