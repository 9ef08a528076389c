"""The small models many tests declare their agents with, defined once.

`Ticket` is a perception step's output, `Routing` a reasoning step's decision over the five
support categories (the bundled model server steers it by schema name), `Verdict` a yes/no
decision. Files whose models differ (other fields, or a same-named class with other fields, as
test_declare's and test_runtime's `Routing(queue=...)`) keep their own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from agents import Decision


class Ticket(BaseModel):
    text: str


class Routing(Decision):
    category: Literal["billing", "technical", "account", "shipping", "other"]


class Verdict(Decision):
    """A yes/no decision."""

    ok: bool
