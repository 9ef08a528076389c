"""How a Stalwart process streams Prefect its events: Prefect's own websocket client, set up so
that a dropped connection cannot make it send an auth message where an event belongs.

Prefect 3 records task runs from the events their engine emits; `PrefectEventsClient` streams
them over one websocket per process. When that connection drops on a busy server, two parts of
the client can reconnect at once: the next emit, and the time-based checkpoint (a task that
pings every 30 s and reconnects when the socket is gone). Both send the auth message on the
socket the second connect left in place; the server reads the second one as an event, refuses
it and closes the socket, discarding what was sent after it, and emits that fail all their
reconnections are only resent if the process emits again. Seen on the fault suite's W1 stack:
the server logged the refused auth message, and the flow-run process that sent it logged
`Service 'EventsWorker' failed to process item` for two task-run events.

`use_reliable_events()` gives this process's events worker the same client with the time-based
checkpoint off (only the emit path reconnects, so the two cannot race) and more reconnection
attempts, through `EventsWorker.set_client_override`, Prefect's own switch. Events still go
out one by one as they happen and are confirmed every `checkpoint_every` events and on each
reconnection, which resends what was not confirmed (the server drops duplicates by event id).
Prefect Cloud's client and a client someone else chose are left alone.
"""

from __future__ import annotations

__all__ = ["RECONNECTION_ATTEMPTS", "use_reliable_events"]

#: How many times an emit reconnects before the events worker gives up. Prefect's default, 10,
#: lasts about 8 s (attempts after the third wait 1 s); this rides out about five minutes of
#: a restarting or overloaded server.
RECONNECTION_ATTEMPTS = 300
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
        "checkpoint_interval": NO_TIME_CHECKPOINT,
    }
    if not should_emit_events_to_running_server():
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
