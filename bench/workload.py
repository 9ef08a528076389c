"""The benchmark workload shared by every mode of `bench_core.py`: inputs, types, prompt, SQL.

A run is four operations on one support ticket:

1. perceive: parse a raw dict into a pydantic `Ticket`;
2. decide: one structured model call (instructor + openai) filling a `TicketDecision`
   (category, confidence, rationale);
3. act: write one action row;
4. learn: upsert the customer's memory (ticket count, last category).

This module imports neither Prefect nor Stalwart (`agents`), so the bare-asyncio mode measures a
process without them. The Stalwart agent lives in `stalwart_agent.py`; its `TicketDecision`
subclasses `agents.Decision` with the same fields, so the model server sees the same schema.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel

AGENT_NAME = "bench-triage"
TENANT = "bench"
CUSTOMERS = 97
SYSTEM_PROMPT = "You triage customer support tickets. Pick the owning team."

Category = Literal["billing", "technical", "account", "shipping", "other"]

_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Invoice question", "My invoice shows a charge I don't recognise, please explain billing."),
    ("Export broken", "The CSV export is broken and the page shows an error."),
    ("Delete account", "I want to close my account and delete my profile."),
    ("Where is my parcel", "My package never arrived and the tracking has not moved."),
    ("Refund please", "I was charged twice for my subscription, I need a refund asap."),
    ("Cannot log in", "I am locked out after the 2fa code expired, please help me sign in."),
    ("App crash", "The app crashes with an exception when I open the settings page."),
    ("Question", "Something weird happens sometimes, not sure what the problem is."),
)


class Ticket(BaseModel):
    """What the agent sees: one parsed ticket."""

    id: str
    subject_line: str
    body: str
    customer: str


class TicketDecision(BaseModel):
    """The structured answer of the bare and plain-Prefect modes (fields as `agents.Decision`)."""

    confidence: float = Field(ge=0.0, le=1.0, description="How sure the decision is, from 0 to 1.")
    rationale: str = Field(description="A short reason for the decision, in one or two sentences.")
    category: Category = Field(description="The team that owns the problem.")


class Dispatch(BaseModel):
    """What the action did: the ticket went to a queue under an idempotency key."""

    ticket_id: str
    queue: str
    idempotency_key: str


def make_inputs(count: int, prefix: str = "t") -> list[dict[str, Any]]:
    """`count` deterministic ticket inputs (`raw` plus a `subject`, the customer id)."""
    items: list[dict[str, Any]] = []
    for i in range(count):
        subject_line, body = _TEMPLATES[i % len(_TEMPLATES)]
        customer = f"cust-{i % CUSTOMERS:03d}"
        raw = {
            "id": f"{prefix}-{i:06d}",
            "subject": subject_line,
            "body": f"{body} (ref {prefix}{i})",
            "customer": customer,
        }
        items.append({"raw": raw, "subject": customer})
    return items


def parse_ticket(raw: dict[str, Any]) -> Ticket:
    """Perceive: the raw dict as a `Ticket`."""
    return Ticket(
        id=str(raw["id"]),
        subject_line=str(raw.get("subject", "")),
        body=str(raw.get("body", "")),
        customer=str(raw.get("customer", "")),
    )


def user_prompt(ticket: Ticket) -> str:
    """The user message of the model call."""
    return f"Subject: {ticket.subject_line}\n\n{ticket.body}"


def action_key(ticket: Ticket) -> str:
    """A stable idempotency key for the action row of one ticket."""
    return hashlib.sha256(f"{TENANT}:{AGENT_NAME}:{ticket.id}:dispatch".encode()).hexdigest()


class ModelClock:
    """Sums the time spent inside the model call (to separate it from framework overhead)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def add(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self.total_s += elapsed
            self.calls += 1

    def reset(self) -> None:
        with self._lock:
            self.total_s = 0.0
            self.calls = 0


MODEL_CLOCK = ModelClock()
"""Time inside the step's model call (`llm.adecide` for Stalwart, instructor's `create` else)."""
REQUEST_CLOCK = ModelClock()
"""Time inside openai's chat-completion `create` alone (the HTTP request and its parsing)."""


# -- SQL for the modes without Stalwart ------------------------------------------------------


class BenchAction(SQLModel, table=True):
    """One action row per ticket (the bare and plain-Prefect modes' equivalent of the ledger)."""

    __tablename__ = "bench_action"

    idempotency_key: str = SQLField(primary_key=True, max_length=64)
    tenant: str = SQLField(max_length=200)
    ticket_id: str = SQLField(max_length=200)
    queue: str = SQLField(max_length=50)
    created_at: datetime = SQLField(sa_type=sa.DateTime(timezone=True))


class BenchMemory(SQLModel, table=True):
    """Per-customer memory: ticket count and last category, versioned like Stalwart's."""

    __tablename__ = "bench_memory"
    __table_args__ = (sa.UniqueConstraint("tenant", "subject", "key", name="uq_bench_memory"),)

    id: int | None = SQLField(default=None, primary_key=True)
    tenant: str = SQLField(max_length=200)
    subject: str = SQLField(max_length=500)
    key: str = SQLField(max_length=500)
    tickets: int = 0
    last_category: str | None = SQLField(default=None, max_length=50)
    version: int = 1
    updated_at: datetime = SQLField(sa_type=sa.DateTime(timezone=True))


def make_engine(url: str) -> Engine:
    """An engine tuned like Stalwart's (`agents/store/engine.py`): SQLite in WAL with
    synchronous=NORMAL and a busy timeout, PostgreSQL pooled."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30.0}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
    SQLModel.metadata.create_all(engine, tables=[BenchAction.__table__, BenchMemory.__table__])  # type: ignore[attr-defined]
    return engine


def insert_action(engine: Engine, ticket: Ticket, decision: TicketDecision) -> str:
    """Act: insert the action row (one transaction); return its key."""
    key = action_key(ticket)
    with Session(engine) as s:
        s.add(
            BenchAction(
                idempotency_key=key,
                tenant=TENANT,
                ticket_id=ticket.id,
                queue=decision.category,
                created_at=datetime.now(UTC),
            )
        )
        s.commit()
    return key


def upsert_memory(engine: Engine, ticket: Ticket, decision: TicketDecision) -> None:
    """Learn: bump the customer's ticket count and last category (one atomic upsert)."""
    now = datetime.now(UTC)
    values = {
        "tenant": TENANT,
        "subject": ticket.customer,
        "key": "history",
        "tickets": 1,
        "last_category": decision.category,
        "version": 1,
        "updated_at": now,
    }
    table = BenchMemory.__table__  # type: ignore[attr-defined]
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["tenant", "subject", "key"],
        set_={
            "tickets": table.c.tickets + 1,
            "last_category": decision.category,
            "version": table.c.version + 1,
            "updated_at": now,
        },
    )
    with engine.begin() as conn:
        conn.execute(statement)


def count_rows(engine: Engine) -> tuple[int, int]:
    """(action rows, sum of memory ticket counts): the checks a mode reports."""
    with engine.connect() as conn:
        actions = conn.execute(sa.text("SELECT COUNT(*) FROM bench_action")).scalar_one()
        tickets = conn.execute(
            sa.text("SELECT COALESCE(SUM(tickets), 0) FROM bench_memory")
        ).scalar_one()
    return int(actions), int(tickets)
