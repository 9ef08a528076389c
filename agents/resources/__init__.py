"""Resources: what a step receives by naming a parameter `llm`, `memory` or `context`."""

from agents.resources.llm import LLM, LLMCall

__all__ = ["LLM", "LLMCall"]
