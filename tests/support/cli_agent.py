"""A small agent the CLI tests load as `tests.support.cli_agent:agent`."""

from __future__ import annotations

from typing import Any

from agents import Agent, Decision

agent = Agent("cli-demo")


class Echo(Decision):
    text: str


@agent.perception
def words(raw: dict[str, Any]) -> str:
    return str(raw["text"])


@agent.reasoning
def echo(words: str) -> Echo:
    if words == "boom":
        raise RuntimeError("this input fails at run time")
    return Echo(text=words.upper(), confidence=1.0, rationale="echo")
