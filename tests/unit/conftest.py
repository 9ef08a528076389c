"""The unit tier's guard: no Prefect API (not even the ephemeral one), no HTTP server, no database
server. Every unit test runs with

* outbound network connections refused (only AF_UNIX sockets connect: asyncio's self-pipe, ...),
  so a test that reaches a server fails loudly with `UnitTierViolation` (threads that were
  running before the test, such as another tier's servers in a full run, are left alone);
* PREFECT_API_URL pointing at a closed loopback port, so Prefect never starts its ephemeral API
  server for a unit test (it would only do so with no API URL set);
* the fixtures that start or need servers replaced by ones that fail with the reason.

SQLite (in memory or in a file) is fine. A test that needs more belongs in tests/integration.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

UNREACHABLE_API = "http://127.0.0.1:9/api"


class UnitTierViolation(RuntimeError):
    """A unit test tried to reach a server; it belongs in tests/integration or tests/e2e."""


def _refuse(what: str, background: frozenset[int | None]) -> Any:
    def connect(self: socket.socket, address: Any, *args: Any, **kwargs: Any) -> Any:
        if self.family == socket.AF_UNIX or threading.get_ident() in background:
            return real[what](self, address, *args, **kwargs)
        raise UnitTierViolation(f"unit tests make no network connections (to {address!r})")

    return connect


real = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex}


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Threads alive before the test (another tier's servers and Prefect's workers, when the
    # whole suite runs in one session) keep their connections; the test and its threads do not.
    main = threading.main_thread()
    background = frozenset(t.ident for t in threading.enumerate() if t is not main)
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect", background))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect_ex", background))
    monkeypatch.setenv("PREFECT_API_URL", UNREACHABLE_API)
    with temporary_settings(updates={PREFECT_API_URL: UNREACHABLE_API}):
        yield


def _not_in_unit_tier(name: str) -> Any:
    @pytest.fixture(name=name)
    def refuse() -> None:
        raise UnitTierViolation(
            f"fixture {name!r} starts or needs a server: move the test to tests/integration"
        )

    return refuse


prefect_api = _not_in_unit_tier("prefect_api")
prefect_server = _not_in_unit_tier("prefect_server")
on_prefect_server = _not_in_unit_tier("on_prefect_server")
model_server = _not_in_unit_tier("model_server")
postgres_server_url = _not_in_unit_tier("postgres_server_url")
postgres_url = _not_in_unit_tier("postgres_url")
state_db = _not_in_unit_tier("state_db")
db_url = _not_in_unit_tier("db_url")
fresh_db_url = _not_in_unit_tier("fresh_db_url")
fresh_pg_url = _not_in_unit_tier("fresh_pg_url")
