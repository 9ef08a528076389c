"""Declaring an agent: `Agent` and its layer decorators, `Step`, step options, `Decision`.

Declaration collects plain typed functions and never runs them; `Agent.compile()` turns them
into an `agents.graph.AgentGraph`.
"""
