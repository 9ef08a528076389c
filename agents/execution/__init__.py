"""Execution: an agent graph run as Prefect flows and tasks.

* `runner`: `AgentRunner`, a graph's flow and tasks, running batches (`runner_for`).
* `batch`: one flow run's inputs, the tenant's fair share, run records written in bulk.
* `walk`: one run's steps, one handler per outcome, against a `StepRunner`.
* `prefect`: the task and flow wiring, result storage, the Prefect `StepRunner`.
* `task`: a step's task body, actions through the action ledger.
* `inject`: the resources a step declares, resolved per call.
* `ladder`: fallback model, person, safe default; refused actions.
* `review`: human review asked durably (the request row; a deployment's suspended form).
* `shadow`: a candidate model deciding a share of live runs.
* `rows`: the step and decision rows a run writes.
* `call`: one step call's keys (`StepCall`) and report (`StepTrace`).
"""
