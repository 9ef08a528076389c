"""How a Stalwart process streams Prefect its events, so that what its task runs emit reaches
the API server: Prefect's own websocket client, configured and confirmed.

Prefect 3 records task runs from the events their engine emits; `PrefectEventsClient` streams
them over one websocket per process and confirms them with a ping every 700 events; an event
not confirmed is resent after a reconnection. Under load two things lost them:

- The server reads a socket only as fast as it publishes (one event at a time), so a backlog
  builds in the sockets' buffers; the client's pong to the server's keepalive ping waits behind
  it, the server drops the connection after 20 s and the unread events with it. The client
  resends them only if it sends again: after a flow run's last event it does not, and the
  batch's last task runs never reach the UI (see `confirm_sent`).
- After a dropped connection the emit path and the time-based checkpoint (a task pinging every
  30 s) could reconnect at once and send the auth message twice on one socket; the server
  refused the second as an event and closed it.

`use_reliable_events()` gives this process's events worker the same client (through
`EventsWorker.set_client_override`, Prefect's own switch) with a checkpoint every 50 events, so
the backlog waits in this process's queue, not in the sockets; with the time-based checkpoint
off, so only the emit path reconnects; and with 300 reconnection attempts instead of 10. At the
end of each batch `confirm_sent()` waits until the server has read everything. The server drops
resent duplicates by event id. Prefect Cloud's client and a client someone else chose are left
alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

__all__ = ["RECONNECTION_ATTEMPTS", "confirm_sent", "use_reliable_events"]

logger = logging.getLogger(__name__)

#: How many times an emit reconnects before the events worker gives up. Prefect's default, 10,
#: lasts about 8 s (attempts after the third wait 1 s); this rides out about five minutes of
#: a restarting or overloaded server.
RECONNECTION_ATTEMPTS = 300
#: Events between checkpoints (Prefect's default: 700). Each checkpoint waits for the server
#: to answer a ping, which it reads only after every event sent before it: the backlog stays in
#: this process's queue, drained before it exits, instead of in the sockets' buffers, where the
#: server's keepalive, timing out on a pong stuck behind it, would discard it.
CHECKPOINT_EVERY = 50
#: Seconds between time-based checkpoints: never, so the emit path is the only one reconnecting.
NO_TIME_CHECKPOINT = float(365 * 24 * 3600)


def use_reliable_events() -> bool:
    """Stream this process's Prefect events through the set-up above from now on.

    Returns whether it is in force. Cheap and idempotent: called as each batch starts, before
    its first task run emits. Events emitted from then on go to an events worker with this
    client, bound to the API in force (`PREFECT_API_URL`, else the temporary server Prefect
    starts, as Prefect itself does); a worker already running keeps its own client.
    """
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import (
        EventsWorker,
        emit_events_to_cloud,
        should_emit_events_to_running_server,
    )

    chosen = EventsWorker._client_override
    if chosen is not None and not _is_ours(chosen):
        return False
    if emit_events_to_cloud():
        return False
    options: dict[str, object] = {
        "reconnection_attempts": RECONNECTION_ATTEMPTS,
        "checkpoint_every": CHECKPOINT_EVERY,
        "checkpoint_interval": NO_TIME_CHECKPOINT,
    }
    if should_emit_events_to_running_server():
        # Named, so that a process whose API changes (tests, a tool switching servers) gets a
        # worker for the new one instead of streaming to the old one: Prefect keys its events
        # worker by client type and options, and a client keeps the URL it was made with.
        from prefect.settings import PREFECT_API_URL

        options["api_url"] = PREFECT_API_URL.value()
    else:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # Prefect's temporary server: one per process
        server.start()
        options["api_url"] = server.api_url
    wanted = (PrefectEventsClient, tuple(options.items()))
    if chosen != wanted:
        EventsWorker.set_client_override(PrefectEventsClient, **options)
    return True


def _is_ours(chosen: tuple[type, tuple[tuple[str, object], ...]]) -> bool:
    return ("checkpoint_interval", NO_TIME_CHECKPOINT) in chosen[1]


#: How long the end of a batch waits for the API server to read its events (`confirm_sent`).
CONFIRM_TIMEOUT_S = 300.0


async def confirm_sent(timeout_s: float = CONFIRM_TIMEOUT_S) -> bool:
    """Wait until the API server has read every event this process has emitted so far.

    Why: the server reads a websocket only as fast as it publishes what it read (uvicorn pauses
    reading after each message until the app takes it). With a backlog in the sockets' buffers,
    the client's answer to the server's keepalive ping waits behind it; after 20 s the server
    gives up on the connection and the kernel discards what it had not read. The client resends
    its unconfirmed events when its next send fails, but after a batch's last event there is no
    next send: the process ends, and the batch's last task runs never reach the UI, with nothing
    logged. A ping answered by the server comes back only once it has read every frame sent
    before it, so the events worker's queue is emptied and then a checkpoint (ping, pong, the
    unconfirmed events cleared; on a dropped socket, reconnect and resend first) is made before
    the batch ends, tried again until it holds or `timeout_s` passes.

    Returns True when confirmed (or nothing was waiting), False on timeout or when this process
    does not stream through `use_reliable_events`' client. Never raises.
    """
    worker = _reliable_worker()
    if worker is None:
        return False
    deadline = time.monotonic() + timeout_s
    try:
        while worker._queue.unfinished_tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        client = getattr(worker, "_client", None)
        loop = worker._loop
        if client is None or loop is None:
            if worker._queue.unfinished_tasks:
                _warn_unconfirmed(timeout_s)
                return False
            return True
    except Exception:
        return False
    while True:  # a checkpoint that fails (the server dropped the socket) is tried again
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _warn_unconfirmed(timeout_s)
            return False
        try:
            done = asyncio.run_coroutine_threadsafe(_checkpoint(client), loop)
            await asyncio.wait_for(asyncio.wrap_future(done), remaining)
        except Exception:
            await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
            continue
        return True


def _warn_unconfirmed(timeout_s: float) -> None:
    logger.warning(
        "The Prefect API server did not confirm this process's task-run events within %.0f s: "
        "the last task runs of this batch may be missing from the UI",
        timeout_s,
    )


def _reliable_worker() -> Any:
    """The running events worker with the client `use_reliable_events` chose last (the API in
    force), if any: one streaming to an API this process used before is not this batch's."""
    from prefect.events.worker import EventsWorker

    chosen = EventsWorker._client_override
    if chosen is None or not _is_ours(chosen):
        return None
    instances: dict[int, Any] = EventsWorker._instances  # type: ignore[misc]
    for worker in list(instances.values()):
        if (
            isinstance(worker, EventsWorker)
            and not worker._stopped
            and worker._started
            and (worker.client_type, worker.client_options) == chosen
        ):
            return worker
    return None


async def _checkpoint(client: Any) -> None:
    """On the events worker's loop: confirm what was sent, reconnecting (which resends the
    unconfirmed events) when the socket is gone."""
    from websockets.exceptions import ConnectionClosed

    if not client._unconfirmed_events:
        return
    if client._websocket is None:
        await client._reconnect()
    try:
        await client._force_checkpoint()
    except ConnectionClosed:
        await client._reconnect()
        await client._force_checkpoint()
