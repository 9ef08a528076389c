"""Running the offline model server: in a background thread (`ModelServer`) or blocking (`serve`).

This module owns the server's life cycle. `ModelServer` binds 127.0.0.1 itself (port 0 picks a
free port, known before uvicorn starts), runs uvicorn in a daemon thread with its own event loop,
waits (bounded) until it accepts connections, and stops it within a few seconds. Several can run
in one process; a stopped one can be started again (on the same port when it is still free).
Embedded servers leave the process's logging configuration alone; `serve` is for the CLI and
logs like a normal uvicorn.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from agents.modelserver.app import build_app
from agents.modelserver.faults import Faults
from agents.modelserver.rules import Rules
from agents.modelserver.stats import Stats

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8089
KEEP_ALIVE_S = 75
_STOP_GRACE_S = 2.0

RulesSpec = Rules | str | Path | Iterable[Mapping[str, Any]] | Mapping[str, Any] | None


def load_rules(rules: RulesSpec) -> Rules:
    """Rules from a `Rules`, a JSON file path, their JSON form, or None (the bundled defaults).

    Example:
        >>> load_rules([{"when": {"contains": ["refund"]}, "set": {"category": "billing"}}])
        Rules(rules=(Rule(contains=('refund',), values={'category': 'billing'}, schemas=()),))
    """
    if rules is None:
        return Rules.default()
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, str | Path):
        return Rules.from_file(rules)
    return Rules.from_list(rules)


class ModelServer:
    """An OpenAI-compatible offline model server running in a background thread.

    Attributes:
        host: The bound address.
        faults: The live fault settings (mutate them, or call `faults.update(...)`).
        stats: The live counters.
        rules: The steering rules.

    Example:
        >>> import openai
        >>> with ModelServer(port=0) as server:  # doctest: +SKIP
        ...     client = openai.OpenAI(base_url=server.url, api_key="test")
        ...     server.faults.fail_next.append("429")
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        rules: RulesSpec = None,
        faults: Faults | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.rules = load_rules(rules)
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.startup_timeout_s = startup_timeout_s
        self._requested_port = port
        self._port: int | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (raises `RuntimeError` before the first start).

        Example:
            >>> ModelServer(port=8089).start().port  # doctest: +SKIP
            8089
        """
        if self._port is None:
            raise RuntimeError("The model server has not been started yet.")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://host:port`, without the `/v1` suffix.

        Example:
            >>> server.base_url  # doctest: +SKIP
            'http://127.0.0.1:41234'
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in `/v1`.

        Example:
            >>> server.url  # doctest: +SKIP
            'http://127.0.0.1:41234/v1'
        """
        return f"{self.base_url}/v1"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving.

        Example:
            >>> ModelServer().running
            False
        """
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Start serving in a background thread; return once connections are accepted.

        Raises:
            RuntimeError: If uvicorn exited during startup.
            TimeoutError: If it did not accept connections within `startup_timeout_s`.

        Example:
            >>> server = ModelServer().start()  # doctest: +SKIP
            >>> server.stop()  # doctest: +SKIP
        """
        with self._lock:
            if self.running:
                return self
            sock = self._bind()
            self._port = int(sock.getsockname()[1])
            self._closing.clear()
            app = build_app(
                rules=self.rules, faults=self.faults, stats=self.stats, closing=self._closing
            )
            config = uvicorn.Config(
                app,
                http="h11",
                ws="none",
                loop="asyncio",
                lifespan="off",
                log_config=None,
                log_level=None,
                timeout_graceful_shutdown=int(_STOP_GRACE_S),
                # Longer than clients keep idle connections: with uvicorn's 5 s default the server
                # closes a pooled connection as a client reuses it, a spurious connection error.
                timeout_keep_alive=KEEP_ALIVE_S,
                backlog=2048,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                name=f"stalwart-modelserver-{self._port}",
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
        """Stop serving (pending waits end at once); a no-op when not running.

        Example:
            >>> ModelServer().stop()
        """
        with self._lock:
            self._shutdown_locked()

    def reset(self) -> None:
        """Clear the fault settings and the counters.

        Example:
            >>> ModelServer().reset()
        """
        self.faults.reset()
        self.stats.reset()

    def __enter__(self) -> ModelServer:
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
        state = "running" if self.running else "stopped"
        return f"ModelServer({where}, {state})"

    # -- internals -----------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
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
            f"The model server cannot bind {self.host}:{candidates[-1]}: {last_error}"
        ) from last_error

    def _wait_until_ready(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if server.started and self._accepts_connections():
                return
            if not thread.is_alive():
                raise RuntimeError(f"The model server on {self.host}:{self._port} failed to start.")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"The model server on {self.host}:{self._port} did not accept connections "
                    f"within {self.startup_timeout_s} s."
                )
            time.sleep(0.01)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _shutdown_locked(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        self._closing.set()
        server.should_exit = True
        thread.join(timeout=_STOP_GRACE_S + 5.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=2.0)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    rules_path: str | Path | None = None,
    *,
    log_level: str = "info",
) -> None:
    """Run the offline model server in the foreground until interrupted (for the CLI).

    Args:
        host: Address to bind.
        port: Port to bind.
        rules_path: A steering-rules JSON file; the bundled triage-demo rules when None.
        log_level: uvicorn's log level.

    Example:
        >>> serve(port=8089)  # doctest: +SKIP
    """
    rules = Rules.from_file(rules_path) if rules_path is not None else Rules.default()
    uvicorn.run(
        build_app(rules=rules),
        host=host,
        port=port,
        http="h11",
        ws="none",
        lifespan="off",
        log_level=log_level,
        timeout_keep_alive=KEEP_ALIVE_S,
        backlog=2048,
        timeout_graceful_shutdown=int(_STOP_GRACE_S),
    )
