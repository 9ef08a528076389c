"""`LoopbackServer`: an ASGI app served by uvicorn in a daemon thread on a loopback address.

This module owns the life cycle shared by the bundled model server and the simulated outside
systems of the reference agents: it binds the socket itself (port 0 picks a free port, known
before uvicorn starts), runs uvicorn with its own event loop in a daemon thread, returns from
`start` once the server accepts connections (bounded wait), and stops it within a few seconds.
A stopped server can be started again, on the same port when that port is still free. Embedded
servers leave the process's logging configuration alone.

Example:
    >>> import httpx
    >>> from starlette.applications import Starlette
    >>> from starlette.responses import PlainTextResponse
    >>> from starlette.routing import Route
    >>> async def hello(_: object) -> PlainTextResponse:
    ...     return PlainTextResponse("hello")
    >>> app = Starlette(routes=[Route("/", hello)])
    >>> with LoopbackServer(lambda: app, label="The hello server") as server:
    ...     httpx.get(server.url).text
    'hello'
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

__all__ = ["LoopbackServer", "LoopbackStartTimeout"]

KEEP_ALIVE_S = 75
"""Idle keep-alive, longer than clients keep pooled connections.

With uvicorn's 5 s default the server closes a pooled connection as a client reuses it, which
the client sees as a spurious connection error.
"""


class LoopbackStartTimeout(TimeoutError, RuntimeError):
    """The server did not accept connections in time; both a `TimeoutError` and a `RuntimeError`."""


class LoopbackServer:
    """An ASGI app served on a loopback address from a background thread.

    Use it as it is, hold one, or subclass it (the simulated systems of the reference agents do).

    Args:
        app_factory: Builds the app; called at every `start`.
        host: The address to bind (an IPv6 address when it contains `:`).
        port: The port to bind; 0 picks a free one.
        label: How errors name the server, e.g. `"The model server"`.
        thread_name: The server thread's name, followed by `-<port>`.
        startup_timeout_s: How long `start` waits for the server to accept connections.
        stop_timeout_s: How long `stop` waits for a graceful exit before forcing one
            (then 2 s more at most).
        graceful_shutdown_s: uvicorn's `timeout_graceful_shutdown`.
        keep_alive_s: uvicorn's `timeout_keep_alive`.

    Example:
        >>> server = LoopbackServer(lambda: app)  # the app is built at `start`
        >>> server.port is None, server.running
        (True, False)
    """

    def __init__(
        self,
        app_factory: Callable[[], ASGIApp],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        label: str = "The loopback server",
        thread_name: str = "loopback-server",
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        graceful_shutdown_s: int = 2,
        keep_alive_s: int = KEEP_ALIVE_S,
    ) -> None:
        self.app_factory = app_factory
        self.host = host
        self.label = label
        self.thread_name = thread_name
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.graceful_shutdown_s = graceful_shutdown_s
        self.keep_alive_s = keep_alive_s
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The bound port; None before the first `start` (kept after `stop`)."""
        return self._port

    @property
    def url(self) -> str:
        """`http://host:port` (raises `RuntimeError` before the first `start`)."""
        if self._port is None:
            raise RuntimeError(f"{self.label} has not been started.")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a daemon thread; return once connections are accepted (a no-op when running).

        Raises:
            RuntimeError: If uvicorn exited during startup.
            LoopbackStartTimeout: If it did not accept connections within `startup_timeout_s`.
        """
        with self._lock:
            if self.running:
                return self
            sock = self._bind()
            self._port = int(sock.getsockname()[1])
            config = uvicorn.Config(
                self.app_factory(),
                http="h11",
                ws="none",
                loop="asyncio",
                lifespan="off",
                log_config=None,
                log_level=None,
                timeout_graceful_shutdown=self.graceful_shutdown_s,
                timeout_keep_alive=self.keep_alive_s,
                backlog=2048,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                name=f"{self.thread_name}-{self._port}",
                daemon=True,
            )
            self._server, self._thread = server, thread
            thread.start()
            try:
                self._wait_until_ready(server, thread)
            except BaseException:
                self._shutdown_locked()
                sock.close()
                raise
            return self

    def stop(self) -> None:
        """Stop serving, within `stop_timeout_s` + 2 s; a no-op when not running."""
        with self._lock:
            self._shutdown_locked()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else "not started"
        return f"LoopbackServer({where}, {'running' if self.running else 'stopped'})"

    # -- internals -----------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        """Bind the requested port, or on a restart from port 0 the previous port if still free."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        candidates = [self._requested_port]
        if self._requested_port == 0 and self._port is not None:
            candidates = [self._port, 0]
        last_error: OSError | None = None
        for port in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, port))
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            sock.set_inheritable(True)
            return sock
        raise OSError(
            f"{self.label} cannot bind {self.host}:{candidates[-1]}: {last_error}"
        ) from last_error

    def _wait_until_ready(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if server.started and self._accepts_connections():
                return
            if not thread.is_alive():
                raise RuntimeError(f"{self.label} on {self.host}:{self._port} failed to start.")
            if time.monotonic() > deadline:
                raise LoopbackStartTimeout(
                    f"{self.label} on {self.host}:{self._port} did not accept connections "
                    f"within {self.startup_timeout_s} s."
                )
            time.sleep(0.01)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self._port or 0), timeout=1.0):
                return True
        except OSError:
            return False

    def _shutdown_locked(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=self.stop_timeout_s)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=2.0)
