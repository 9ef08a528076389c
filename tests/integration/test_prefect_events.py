"""Prefect's events client, reconnecting after dropped connections, against a loopback
websocket server that speaks the API's events protocol (auth first, then one event per
message, a socket closed on anything else, as `/api/events/in` does)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agents.execution.events import NO_TIME_CHECKPOINT, RECONNECTION_ATTEMPTS, use_reliable_events


class EventsIn:
    """`/api/events/in` in miniature: which events arrived, and whether a socket got an auth
    message where an event belonged (the server closes such a socket and drops what follows)."""

    def __init__(self) -> None:
        self.received: set[str] = set()
        self.auth_as_event = 0
        self.sockets: set[ServerConnection] = set()

    async def handle(self, socket: ServerConnection) -> None:
        self.sockets.add(socket)
        try:
            first = json.loads(await socket.recv())
            assert first["type"] == "auth"
            await socket.send(json.dumps({"type": "auth_success"}))
            async for raw in socket:
                message = json.loads(raw)
                if "event" not in message:
                    self.auth_as_event += 1
                    await socket.close(1011, "not an event")
                    return
                self.received.add(message["id"])
        except Exception:
            pass
        finally:
            self.sockets.discard(socket)

    async def drop_all(self) -> None:
        for socket in list(self.sockets):
            await socket.close(1001, "going away")


async def _emit_through_drops(events: int = 300) -> tuple[EventsIn, list[str]]:
    """Emit `events` with the time-based checkpoint off while the server drops
    every connection every 25 events; the server and the ids emitted."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    server = EventsIn()
    async with serve(server.handle, "127.0.0.1", 0, subprotocols=["prefect"]) as listening:  # type: ignore[list-item]
        port = listening.sockets[0].getsockname()[1]
        client = PrefectEventsClient(
            api_url=f"http://127.0.0.1:{port}/api",
            reconnection_attempts=RECONNECTION_ATTEMPTS,
            checkpoint_interval=NO_TIME_CHECKPOINT,
        )
        sent: list[str] = []
        async with client:
            for i in range(events):
                event = Event(event="stalwart.test", resource={"prefect.resource.id": "x"})
                sent.append(str(event.id))
                # A failed emit stays unconfirmed in the client: resent on its next reconnection.
                with contextlib.suppress(Exception):
                    await client.emit(event)
                if i % 25 == 10:
                    await server.drop_all()
                await asyncio.sleep(0.01)
            # Confirm everything: one more emit after a last drop resends the unconfirmed.
            await server.drop_all()
            await client.emit(Event(event="stalwart.test", resource={"prefect.resource.id": "x"}))
            await asyncio.sleep(0.3)
        server.received.intersection_update(sent)
    return server, sent


@pytest.fixture
def no_override() -> Iterator[None]:
    from prefect.events.worker import EventsWorker

    before = EventsWorker._client_override
    EventsWorker.set_client_override(None)
    try:
        yield
    finally:
        EventsWorker._client_override = before


def test_without_the_time_based_checkpoint_every_event_arrives_through_drops() -> None:
    """The emit path alone reconnects and resends what was not confirmed: nothing is lost and
    no auth message is ever sent where an event belongs."""
    server, sent = asyncio.run(_emit_through_drops())
    assert server.auth_as_event == 0
    assert len(server.received) == len(sent)


@pytest.mark.usefixtures("no_override")
def test_stalwart_processes_use_that_client_and_leave_a_foreign_one_alone() -> None:
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert use_reliable_events()
        chosen = EventsWorker._client_override
        assert chosen is not None and chosen[0] is PrefectEventsClient
        options = dict(chosen[1])
        assert options["checkpoint_interval"] == NO_TIME_CHECKPOINT
        assert options["reconnection_attempts"] == RECONNECTION_ATTEMPTS > 10
        assert use_reliable_events()  # idempotent
        assert EventsWorker._client_override == chosen

        class Elsewhere(PrefectEventsClient):
            pass

        EventsWorker.set_client_override(Elsewhere)
        assert not use_reliable_events()
        assert EventsWorker._client_override == (Elsewhere, ())


class SlowEventsIn(EventsIn):
    """A server that reads each event only once it has published the one before, as
    `/api/events/in` does under load (the rest waits in the sockets' buffers), and that drops
    its first connection after reading `drop_after` events, discarding what it had not read, as
    uvicorn does when a keepalive pong stuck behind such a backlog comes too late."""

    def __init__(self, per_event_s: float, drop_after: int) -> None:
        super().__init__()
        self.per_event_s = per_event_s
        self.drop_after = drop_after
        self.connections = 0

    async def handle(self, socket: ServerConnection) -> None:
        self.connections += 1
        first_connection = self.connections == 1
        first = json.loads(await socket.recv())
        assert first["type"] == "auth"
        await socket.send(json.dumps({"type": "auth_success"}))
        read = 0
        with contextlib.suppress(Exception):
            async for raw in socket:
                self.received.add(json.loads(raw)["id"])
                read += 1
                if first_connection and read == self.drop_after:
                    socket.transport.abort()  # unread bytes are gone with the connection
                    return
                await asyncio.sleep(self.per_event_s)


class NeverReads(EventsIn):
    """A server that takes the connection and never reads an event (nor the client's ping)."""

    async def handle(self, socket: ServerConnection) -> None:
        first = json.loads(await socket.recv())
        assert first["type"] == "auth"
        await socket.send(json.dumps({"type": "auth_success"}))
        await socket.wait_closed()


@contextlib.contextmanager
def _serving(server: EventsIn) -> Iterator[str]:
    """`server` on a loopback port in a thread of its own; its API URL."""
    import threading

    ready: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = []
    started = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        async with serve(
            server.handle,
            "127.0.0.1",
            0,
            subprotocols=["prefect"],  # type: ignore[list-item]
            max_queue=1,  # read no further ahead than the app takes
            ping_interval=None,
        ) as listening:
            ready.append((asyncio.get_running_loop(), stop, listening.sockets[0].getsockname()[1]))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    loop, stop, port = ready[0]
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def _emit_and_end(api_url: str, events: int, *, reliable: bool) -> list[str]:
    """Emit `events` as a flow-run process does, then end it (its events worker drained):
    through `use_reliable_events`' client, confirming as a batch does, or through Prefect's
    client as it comes. The ids emitted."""
    from prefect.events import emit_event
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from agents.execution.events import confirm_sent

    ids: list[str] = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        EventsWorker.set_client_override(None)
        if reliable:
            assert use_reliable_events()
        else:
            EventsWorker.set_client_override(PrefectEventsClient)
        for i in range(events):
            event = emit_event(
                event="stalwart.test",
                resource={"prefect.resource.id": f"stalwart.test.{i}"},
                payload={"padding": "x" * 2000},
            )
            assert event is not None
            ids.append(str(event.id))
        if reliable:
            assert asyncio.run(confirm_sent(timeout_s=120))
        EventsWorker.drain_all()
    return ids


@pytest.mark.usefixtures("no_override")
def test_a_batch_ends_only_once_the_server_has_read_its_events() -> None:
    """A server with a backlog drops the connection and what it had not read; Prefect's client
    resends it only on its next send, and after a flow run's last event there is none.
    Streaming and ending as a Stalwart batch does loses nothing."""
    lossy = SlowEventsIn(per_event_s=0.02, drop_after=100)
    with _serving(lossy) as api_url:
        sent = _emit_and_end(api_url, 300, reliable=False)
    assert len(lossy.received & set(sent)) < len(sent)  # the failure this guards against

    confirmed = SlowEventsIn(per_event_s=0.02, drop_after=100)
    with _serving(confirmed) as api_url:
        sent = _emit_and_end(api_url, 300, reliable=True)
    assert confirmed.received >= set(sent)


@pytest.mark.usefixtures("no_override")
def test_a_batch_whose_events_are_not_confirmed_in_time_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that never gets through its backlog: the end of the batch gives up after its
    timeout with a warning, instead of returning as if the events had arrived."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from agents.execution.events import confirm_sent

    stuck = NeverReads()
    with _serving(stuck) as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        EventsWorker.set_client_override(None)
        assert use_reliable_events()
        for i in range(5):
            emit_event(event="stalwart.test", resource={"prefect.resource.id": f"stalwart.s.{i}"})
        with caplog.at_level(logging.WARNING, logger="agents.execution.events"):
            started = time.monotonic()
            assert asyncio.run(confirm_sent(timeout_s=1.5)) is False
        assert time.monotonic() - started < 10
        assert "did not confirm" in caplog.text
        EventsWorker.set_client_override(None)


@pytest.mark.usefixtures("no_override")
def test_a_process_whose_api_changes_streams_to_the_new_one() -> None:
    """Prefect keys its events worker by client type and options, and a client keeps the URL it
    was made with: without the URL among the options, a process that moved to another API kept
    streaming to the old one, and the end of each batch waited its full timeout for a server
    that was gone."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from agents.execution.events import confirm_sent

    def batch(api_url: str, prefix: str) -> set[str]:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            assert use_reliable_events()
            ids = set()
            for i in range(20):
                event = emit_event(
                    event="stalwart.test", resource={"prefect.resource.id": f"{prefix}.{i}"}
                )
                assert event is not None
                ids.add(str(event.id))
            assert asyncio.run(confirm_sent(timeout_s=20))
            return ids

    first, second = EventsIn(), EventsIn()
    with _serving(first) as first_url:
        sent_first = batch(first_url, "first")
    with _serving(second) as second_url:  # the first server is gone
        started = time.monotonic()
        sent_second = batch(second_url, "second")
        assert time.monotonic() - started < 15
    EventsWorker.drain_all()
    assert first.received >= sent_first
    assert second.received >= sent_second
    assert not second.received & sent_first
