"""Resources: what a step receives by naming a parameter `llm`, `memory` or `context`."""

from agents.resources.llm import LLM, Endpoint, LLMCall, resolve_endpoint

__all__ = ["LLM", "Endpoint", "LLMCall", "resolve_endpoint"]
