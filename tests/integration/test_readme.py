"""The README's example agent compiles and runs as documented."""

from __future__ import annotations

import linecache
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_twenty_line_agent_runs_as_the_readme_says(sqlite_url: str, prefect_api: None) -> None:
    declaration = python_blocks()[0]
    code = [line for line in declaration.splitlines() if line.strip()]
    assert len(code) <= 26  # the README promises an agent in about 20 lines
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    # The steps' source (their prompt version) must be read from the snippet, not from the
    # README's first lines: register the snippet under a name of its own, as doctest does.
    filename = "<README.md: an agent in 20 lines>"
    lines = declaration.splitlines(keepends=True)
    linecache.cache[filename] = (len(declaration), None, lines, filename)
    exec(compile(declaration, filename, "exec", dont_inherit=True), namespace)
    from agents import decisions

    triage = namespace["triage"]
    # The README's later blocks use the agent, as a reader would type them after it.
    for number, block in enumerate(python_blocks()[1:], 2):
        name = f"<README.md: python block {number}>"
        linecache.cache[name] = (len(block), None, block.splitlines(keepends=True), name)
        exec(compile(block, name, "exec", dont_inherit=True), namespace)
    result = namespace.get("result") or triage.run(
        tenant="acme", subject="cust-42", raw={"body": "I was charged twice"}
    )
    assert (result.status, result.outputs["route"].category) == ("completed", "billing")
    assert result.outputs["send"].startswith("sent to billing (")
    again = triage.run(tenant="acme", subject="cust-42", raw={"body": "I was charged twice"})
    assert set(again.steps.values()) == {"cached"}
    # The step's tool: the bundled model server looks an order number up before it answers.
    looked = triage.run(tenant="acme", subject="cust-7", raw={"body": "where is order 48213?"})
    assert looked.status == "completed", looked.error
    (row,) = [d for d in decisions.query(tenant="acme") if d.subject == "cust-7"]
    assert [c["tool"] for c in row.tool_calls] == ["lookup_order"]
