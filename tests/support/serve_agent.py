"""Serve the ticket-triage agent with `agent.serve()`, no work pool or worker.

Run by `tests/e2e/test_deployments.py` as `python tests/support/serve_agent.py NAME`. The guard
matters: `Flow.serve` runs each flow run in a child process that imports this file again.
"""

import sys

from flows.ticket_triage import triage

if __name__ == "__main__":
    triage.serve(sys.argv[1], tenant="served", limit=4)
