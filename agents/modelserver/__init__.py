"""The bundled offline model server: an OpenAI-compatible endpoint that needs no network.

This package owns Stalwart's offline default model endpoint, also used by tests. It speaks
`POST /v1/chat/completions` well enough for the real `openai` client and `instructor` (TOOLS,
JSON, JSON_SCHEMA and MD_JSON modes): answers are generated from the requested JSON schema,
deterministically from a digest of the request, steered by keyword rules, and broken on demand
by fault injection (latency, 429/500/any status, timeouts, dropped connections, malformed or
schema-invalid JSON). Offered a step's tools and a `final_result` answer tool, it calls the tools
its rules name before answering from their results.

Modules: `schema` (values from a JSON schema), `patterns` (strings matching a regex),
`rules` (steering), `faults` (fault settings), `stats` (counters), `completions` (the reply to
one request), `tools` (tool turns), `app` (the Starlette routes), `server` (running it).

Example:
    >>> import instructor, openai
    >>> from pydantic import BaseModel
    >>> class Answer(BaseModel):
    ...     confidence: float
    >>> with ModelServer(port=0) as server:  # doctest: +SKIP
    ...     client = instructor.from_openai(openai.OpenAI(base_url=server.url, api_key="x"))
    ...     client.create(model="stalwart-test", response_model=Answer,
    ...                   messages=[{"role": "user", "content": "hi"}]).confidence
    0.9
"""

from __future__ import annotations

from agents.modelserver.app import build_app
from agents.modelserver.faults import FAULT_KINDS, Faults
from agents.modelserver.rules import DEFAULT_RULES_PATH, Rule, Rules
from agents.modelserver.server import ModelServer, serve
from agents.modelserver.stats import Stats

__all__ = [
    "DEFAULT_RULES_PATH",
    "FAULT_KINDS",
    "Faults",
    "ModelServer",
    "Rule",
    "Rules",
    "Stats",
    "build_app",
    "serve",
]
