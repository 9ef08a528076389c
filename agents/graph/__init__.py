"""The agent graph between declaration and execution: built once, immutable, pure.

`build_graph` validates a declaration and returns an `AgentGraph`: its steps in order, the edges
(parameter names), the run inputs and injected parameters of each step, its options and allowed
actions. It renders itself (`text`, `mermaid`) and checks run inputs. `without_tools` gives the
same agent with no tools on its reasoning steps. Nothing here imports execution or Prefect.
"""

from agents.graph.build import build_graph, without_tools
from agents.graph.graph import META_KEYS, AgentGraph, StepNode

__all__ = ["META_KEYS", "AgentGraph", "StepNode", "build_graph", "without_tools"]
