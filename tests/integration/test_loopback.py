"""`agents.testing.loopback.LoopbackServer`: a real server on 127.0.0.1, reached over HTTP."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agents.testing.loopback import LoopbackServer


def _app() -> Starlette:
    async def ping(_: Request) -> JSONResponse:
        return JSONResponse({"pong": True})

    return Starlette(routes=[Route("/ping", ping)])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_serves_on_a_free_port_and_closes_it_on_stop() -> None:
    server = LoopbackServer(_app, label="The test server", thread_name="test-loopback")
    assert server.port is None and not server.running
    with pytest.raises(RuntimeError, match="The test server has not been started"):
        _ = server.url

    with server:
        port = server.port
        assert port is not None and port > 0
        assert server.running
        assert server.url == f"http://127.0.0.1:{port}"
        response = httpx.get(f"{server.url}/ping", timeout=5.0)
        assert response.status_code == 200
        assert response.json() == {"pong": True}
        assert server.start() is server  # starting a running server is a no-op

    assert not server.running
    assert server.port == port  # the port stays known after stop
    assert not _port_open(port)
    server.stop()  # idempotent
