"""How fast Prefect's API records what a batch did: the server settings Stalwart runs under.

Prefect 3 records task runs from events: the client streams each task run's state changes to
the API server, whose task-run recorder and event persister write them to its database. Their
defaults write one task-run event per transaction and events 20 at a time, every 5 s. Under an
agent batch (thousands of task runs a minute) that is the bottleneck: on the ephemeral server
(SQLite) a 300-run batch was recorded a minute after the call returned, and the next flow run
of the same process waited that minute to start (issue 19). Batched writes keep up with the
batch.

`prepare_temporary_server()` sets `TEMPORARY_SERVER_SETTINGS` as defaults of this process's
environment before Prefect starts its temporary (ephemeral) API server, which inherits the
environment. A dedicated `prefect server` needs `SERVER_SETTINGS` in *its* environment
(docs/deployment.md); the test servers of `agents.testing.prefect_server` get them too. A value
already set wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Server-side settings (they only matter in the API server's process).
SERVER_SETTINGS: Mapping[str, str] = {
    # Up to 500 task-run events per transaction, at least once a second (default: 1 per
    # write, every 5 s).
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # The events feed of the UI, the same way (default: 20 per write, every 5 s).
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    # No per-message compression on the events websocket (uvicorn's option, read by
    # `python -m uvicorn`, which starts the temporary server): each event deflated by the client
    # and inflated by the server cost both processes CPU and saved nothing on a local socket.
    "UVICORN_WS_PER_MESSAGE_DEFLATE": "false",
    # Offline machines otherwise log a telemetry error per run.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


#: The temporary server's settings: `SERVER_SETTINGS`, with task runs recorded every half
#: second. The interval bounds how long a batch's last task runs wait to be recorded after the
#: batch returns; on SQLite a flush costs little, while a dedicated server on PostgreSQL with
#: Redis messaging recorded fewer task runs a second with it (docs/measurements.md).
TEMPORARY_SERVER_SETTINGS: Mapping[str, str] = {
    **SERVER_SETTINGS,
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "0.5",
}


def prepare_temporary_server() -> None:
    """Make `TEMPORARY_SERVER_SETTINGS` the defaults of a temporary API server this process
    starts.

    Idempotent and cheap; a variable the user has set is left as it is. It has no effect on a
    temporary server that is already running, nor on a dedicated server (`PREFECT_API_URL`).
    """
    for name, value in TEMPORARY_SERVER_SETTINGS.items():
        os.environ.setdefault(name, value)
