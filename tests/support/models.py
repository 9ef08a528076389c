"""The small models many tests declare their agents with, defined once.

`Ticket` is a perception step's output, `Routing` a reasoning step's decision over the five
support categories (the bundled model server steers it by schema name), `Verdict` a yes/no
decision. Files whose models differ (other fields, or a same-named class with other fields, as
test_declare's and test_runtime's `Routing(queue=...)`) keep their own.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, Field

from agents import Decision


class Ticket(BaseModel):
    text: str


class Routing(Decision):
    category: Literal["billing", "technical", "account", "shipping", "other"]


class Verdict(Decision):
    """A yes/no decision."""

    ok: bool


# -- a rich schema for the bundled model server's generator ---------------------------------


class Priority(enum.StrEnum):
    low = "low"
    normal = "normal"
    high = "high"


class Contact(BaseModel):
    name: str
    email: str | None = None
    tier: Literal["free", "pro", "enterprise"]


class Triage(BaseModel):
    category: Literal["billing", "technical", "account", "shipping", "other"]
    priority: Priority
    confidence: float = Field(ge=0, le=1)
    rationale: str
    contact: Contact
    tags: list[str]
    follow_up_days: int | None = None
    score: int = Field(ge=1, le=5)
    summary: str = Field(min_length=3, max_length=40)
