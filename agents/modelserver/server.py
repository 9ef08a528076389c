"""Running the offline model server: in a background thread (`ModelServer`) or blocking (`serve`).

This module owns the model server's life cycle. `ModelServer` serves it through a
`LoopbackServer` (`agents.testing.loopback`): it binds 127.0.0.1 itself (port 0 picks a free port,
known before uvicorn starts), runs uvicorn in a daemon thread, waits (bounded) until it accepts
connections, and stops it within a few seconds, ending pending waits first. Several can run in one
process; a stopped one can be started again (on the same port when it is still free). Embedded
servers leave the process's logging configuration alone; `serve` is for the CLI and logs like a
normal uvicorn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from agents.modelserver.app import build_app
from agents.modelserver.faults import Faults
from agents.modelserver.rules import Rules
from agents.modelserver.stats import Stats
from agents.testing.loopback import KEEP_ALIVE_S, LoopbackServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8089
_STOP_GRACE_S = 2.0

RulesSpec = Rules | str | Path | Iterable[Mapping[str, Any]] | Mapping[str, Any] | None


def load_rules(rules: RulesSpec) -> Rules:
    """Rules from a `Rules`, a JSON file path, their JSON form, or None (the bundled defaults).

    Example:
        >>> load_rules([{"when": {"contains": ["refund"]}, "set": {"category": "billing"}}]).rules
        (Rule(contains=('refund',), values={'category': 'billing'}, schemas=(), calls=()),)
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

    The thread, the socket and the readiness wait are a `LoopbackServer`'s; this class adds the
    model server's state (rules, faults, counters) and ends pending waits when it stops.

    Attributes:
        faults: The live fault settings (mutate them, or call `faults.update(...)`).
        stats: The live counters.
        rules: The steering rules (read at every `start`).

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
        self.rules = load_rules(rules)
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._loopback = LoopbackServer(
            self._build_app,
            host=host,
            port=port,
            label="The model server",
            thread_name="stalwart-modelserver",
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=_STOP_GRACE_S + 5.0,
            graceful_shutdown_s=int(_STOP_GRACE_S),
            keep_alive_s=KEEP_ALIVE_S,
        )

    # -- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound address."""
        return self._loopback.host

    @host.setter
    def host(self, value: str) -> None:
        self._loopback.host = value

    @property
    def startup_timeout_s(self) -> float:
        """How long `start` waits for the server to accept connections."""
        return self._loopback.startup_timeout_s

    @startup_timeout_s.setter
    def startup_timeout_s(self, value: float) -> None:
        self._loopback.startup_timeout_s = value

    @property
    def port(self) -> int:
        """The bound port (raises `RuntimeError` before the first start).

        Example:
            >>> ModelServer(port=8089).start().port  # doctest: +SKIP
            8089
        """
        port = self._loopback.port
        if port is None:
            raise RuntimeError("The model server has not been started yet.")
        return port

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
        return self._loopback.running

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
            self._closing.clear()
            try:
                self._loopback.start()
            except BaseException:
                self._closing.set()
                raise
            return self

    def stop(self) -> None:
        """Stop serving (pending waits end at once); a no-op when not running.

        Example:
            >>> ModelServer().stop()
        """
        with self._lock:
            self._closing.set()
            self._loopback.stop()

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
        port = self._loopback.port
        where = f"{self.host}:{port}" if port is not None else "not started"
        state = "running" if self.running else "stopped"
        return f"ModelServer({where}, {state})"

    # -- internals -----------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        return build_app(
            rules=self.rules, faults=self.faults, stats=self.stats, closing=self._closing
        )


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
