"""The Prefect wiring: one task per step (its name, retries, timeout, tags and result storage);
the flow that runs a batch; and the step runner the walk uses to run step calls as task runs
(through `agents.execution.task_engine`)."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from prefect import Flow, Task
from prefect.cache_policies import NO_CACHE
from prefect.results import ResultRecord, ResultStore
from prefect.states import Failed, Pending, State
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from agents.declare.decision import Decision
from agents.digest import digest
from agents.execution.call import RunScope, StepCall, StepTrace
from agents.execution.review import Reviewer
from agents.execution.shadow import live_shadow
from agents.execution.task import execute, twin_conflict
from agents.execution.task_engine import run_task
from agents.execution.walk import Attempt
from agents.observe import flow_failure_hook
from agents.policy.retry import retry_unless_user_error
from agents.redact import scrub_error
from agents.store.decisions import alogged_decision
from agents.store.results import SQLResultStorage

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import FlowStateHook

    from agents.execution.ladder import ReviewPending, Verdict
    from agents.graph import AgentGraph, StepNode
    from agents.result import RunResult
    from agents.store.tables import DecisionRecord


def caches(node: StepNode) -> bool:
    """Whether the step's results persist: when it caches, and always for an action."""
    return node.step.options.cache or node.step.layer == "action"


def make_task(node: StepNode) -> Task[Any, Any]:
    """The Prefect task of one step, named `<agent>.<step>`: the declaration its task runs are
    recorded under. `PrefectStepRunner` runs it through Stalwart's task engine, which reads its
    retries, delays, retry condition, timeout and tags, and persists its result itself (the
    runner's result store, under `StepCall.cache_key`)."""
    step = node.step

    async def run_step(
        call: StepCall, args: dict[str, Any], trace: StepTrace, scope: RunScope
    ) -> Any:
        return await execute(node, call, args, trace, scope)

    run_step.__name__ = step.name
    run_step.__qualname__ = step.qualified_name
    run_step.__doc__ = step.fn.__doc__
    retries = step.options.retries
    return Task(
        fn=run_step,
        name=step.qualified_name,
        task_run_name="{call.label}",
        retries=retries,
        retry_delay_seconds=exponential_backoff(step.options.retry_delay) if retries else 0,
        retry_jitter_factor=0.5 if retries else None,
        retry_condition_fn=retry_unless_user_error,
        timeout_seconds=step.options.timeout,
        cache_policy=NO_CACHE,
        # No default tags: Prefect 3.9 makes one concurrency-slot API call per tagged task run
        # (tag-based limits), which costs more than the step itself.
        tags=set(step.options.tags),
    )


#: The body of an agent's flow: (inputs, tenant, concurrency, review) to the results, or to the
#: final state holding them (`agents.execution.batch.run_flow_body`).
FlowBody = Callable[[list[dict[str, Any]], str, int, str | None], Coroutine[Any, Any, Any]]


def make_flow(
    graph: AgentGraph,
    body: FlowBody,
) -> Flow[Any, Any]:
    """The agent's flow: one flow run runs a batch of inputs (`inputs`, `tenant`,
    `concurrency`); `review` is set on a review's own flow run (it records the form's answer,
    then continues the run).

    Its final state counts failed and degraded inputs (`agents.execution.batch.final_state`).
    An exception that escapes the body ends the flow run `Failed` with the exception as its
    data, returned rather than raised: Prefect pickles a raised flow exception into the flow's
    result storage whatever `persist_result` says (`~/.prefect/storage` by default), and
    nothing of a run may land in local files. Calling the flow still raises it."""
    return _agent_flow(graph, body, quoted=False, flow_run_name=flow_run_name)


def make_batch_flow(
    graph: AgentGraph,
    body: FlowBody,
    storage: SQLResultStorage,
) -> Flow[Any, Any]:
    """The agent's flow as `AgentRunner` runs its own batches: the same Prefect flow (name,
    parameters, final states, failure hook) with three differences that spare Prefect's engine
    work the runner does not need, each an API call or a walk per batch:

    * no `flow_run_name`: `create_flow_run` names the flow run when it creates it (the engine
      would rename it with one more call, reading the server's default result storage first);
    * `storage` as its result storage: else the engine reads the server's default twice per flow
      run, each a blocking request on the event loop (nothing is persisted: `persist_result`
      stays False);
    * its result is `quote`d: the engine walks a returned value looking for futures (about
      0.6 ms per `RunResult`), and the runner unwraps it (`unquoted`)."""
    return _agent_flow(graph, body, quoted=True, result_storage=storage)


def _agent_flow(
    graph: AgentGraph, body: FlowBody, *, quoted: bool, **options: Any
) -> Flow[Any, Any]:
    """An agent's Prefect flow (its name, no persisted result, unvalidated parameters, the
    failure hook) running `body`, with `options`."""
    return Flow(
        fn=_flow_fn(graph, body, quoted=quoted),
        name=graph.name,
        persist_result=False,
        validate_parameters=False,
        on_failure=[only_exceptions(flow_failure_hook(graph.name))],
        **options,
    )


def _flow_fn(
    graph: AgentGraph,
    body: FlowBody,
    *,
    quoted: bool,
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def agent_flow(
        inputs: list[dict[str, Any]],
        tenant: str = "default",
        concurrency: int = 16,
        review: str | None = None,
    ) -> list[RunResult] | State[Any]:
        try:
            results: list[RunResult] | State[Any] = await body(inputs, tenant, concurrency, review)
        except Exception as exc:
            from prefect.logging import get_run_logger

            # Prefect logs the traceback of a raised exception; a returned one is logged here.
            get_run_logger().error("Encountered exception during execution", exc_info=exc)
            message = f"Flow run encountered an exception: {scrub_error(exc)}"
            return Failed(data=exc, message=message)
        if not quoted:
            return results
        if isinstance(results, State):
            results.data = quote(results.data)
            return results
        return quote(results)  # type: ignore[return-value]

    agent_flow.__doc__ = graph.description or f"Stalwart agent {graph.name!r}."
    return agent_flow


def unquoted(data: Any) -> Any:
    """A flow run's result as its body returned it (`make_batch_flow` quotes it)."""
    return data.unwrap() if isinstance(data, quote) else data


#: How long creating a batch's flow run rides out a busy API server's 503 answers with short
#: waits (0.05 s, doubling to 0.25 s) before leaving the retries to Prefect's client (2 s, 4 s).
BUSY_SERVER_PATIENCE_S = 30.0


#: Flow ids by API and flow name. Prefect's client posts the flow before each flow run it
#: creates (one more request per batch, slow while the server is busy); its id does not change.
_flow_ids: dict[tuple[str, str], UUID] = {}


async def create_flow_run(
    flow: Flow[Any, Any],
    parameters: dict[str, Any],
    *,
    name: str | None = None,
    patience_s: float = BUSY_SERVER_PATIENCE_S,
) -> FlowRun:
    """Create a top-level flow run of `flow` named `name` as Prefect's flow engine would
    (Pending, with the current tags); on a loopback API, retry its `503 Service Unavailable`
    after short waits.

    Why: a temporary API server (SQLite) answers 503 to a request that reads then writes while
    its task-run recorder and event persister commit, as they do for seconds after a large
    batch (SQLite's `SQLITE_BUSY_SNAPSHOT`, which Prefect's server maps to "retry"). Prefect's
    client waits 2 s, then 4 s, then 8 s before trying again (not configurable), so the next
    batch of a process started its flow run up to 15 s late (docs/measurements.md). A 503 means
    nothing was created, so trying again cannot make a second flow run. A remote API keeps
    Prefect's client as it is (its proxies and TLS settings live in its transport)."""
    from prefect import get_client
    from prefect.client.schemas.actions import FlowRunCreate
    from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
    from prefect.context import TagsContext
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL
    from prefect.states import to_state_create

    url = PREFECT_API_URL.value()
    settings = None
    if _is_loopback(url):
        tls = _tls_context()
        settings = {"transport": _PatientTransport(patience_s, tls), "verify": tls}
    serialized = flow.serialize_parameters(parameters)
    async with get_client(httpx_settings=settings) as client:

        async def post(flow_id: UUID) -> FlowRun:
            create = FlowRunCreate(
                flow_id=flow_id,
                flow_version=flow.version,
                name=name,
                parameters=serialized,
                tags=list(TagsContext.get().current_tags),
                state=to_state_create(Pending()),
                empirical_policy=FlowRunPolicy(
                    retries=flow.retries, retry_delay=int(flow.retry_delay_seconds or 0)
                ),
            )
            body = create.model_dump(mode="json", exclude_unset=True)
            response = await client.request("POST", "/flow_runs/", json=body)
            flow_run = FlowRun.model_validate(response.json())
            flow_run.parameters = serialized
            return flow_run

        key = (str(client.api_url), flow.name)
        remembered = _flow_ids.get(key)
        if remembered is not None:
            try:
                return await post(remembered)
            except PrefectHTTPStatusError as exc:
                # An id the server does not know (its database was replaced): ask again.
                if exc.response.status_code not in (404, 409, 422):
                    raise
        _flow_ids[key] = await client.create_flow(flow)
        return await post(_flow_ids[key])


def _is_loopback(api_url: str | None) -> bool:
    """Whether a Prefect API URL names this machine (an unset URL: the temporary server)."""
    from urllib.parse import urlparse

    return not api_url or urlparse(api_url).hostname in ("127.0.0.1", "localhost", "::1")


def _tls_context() -> ssl.SSLContext:
    """The TLS context Prefect's client would make for the API, made once per process and
    settings: each one loads the certificate bundle, about 20 ms, twice per batch here."""
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    return _tls_context_for(
        bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()), PREFECT_API_SSL_CERT_FILE.value()
    )


@functools.cache
def _tls_context_for(insecure: bool, cert_file: str | None) -> ssl.SSLContext:
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    import certifi

    return ssl.create_default_context(cafile=cert_file or certifi.where())


class _PatientTransport(httpx.AsyncBaseTransport):
    """Sends a request again after 0.05 s, doubling to 0.25 s, while the server answers 503,
    for up to `patience_s`; then hands the last answer to the client (which retries as it does).

    Why so soon: the 503 comes back at once (SQLite's busy snapshot: another writer committed
    between the request's read and its write), and after a large batch the server's event
    persister commits about once a second for seconds. Waits that grew to 1 s let a flow run's
    creation lose that race six times in a row (4 s); a quick retry costs the server little."""

    def __init__(self, patience_s: float, tls: ssl.SSLContext) -> None:
        self.patience_s = patience_s
        self._inner = httpx.AsyncHTTPTransport(retries=3, verify=tls)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.patience_s
        wait = 0.05
        while True:
            response = await self._inner.handle_async_request(request)
            if response.status_code != 503 or time.monotonic() + wait > deadline:
                return response
            await response.aclose()
            await asyncio.sleep(wait * random.uniform(0.5, 1.5))
            wait = min(wait * 2, 0.25)

    async def aclose(self) -> None:
        await self._inner.aclose()


def only_exceptions(hook: FlowStateHook[..., Any]) -> FlowStateHook[..., Any]:
    """`hook`, called only for a flow run that ended on an exception: a batch that failed
    because some inputs did (`Failed` counting them) was reported step by step already."""

    def on_failure(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
        try:
            data = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
        except Exception:
            data = None  # unreadable: report it, better twice than never
        if isinstance(unquoted(data), list):
            return
        hook(flow, flow_run, state)

    on_failure.__name__ = on_failure.__qualname__ = getattr(hook, "__name__", "on_failure")
    return on_failure


def flow_run_name() -> str:
    """`<agent>/<subject or run key>` for a batch of one, else `<agent>/batch-<n>`."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return batch_run_name(flow_run.flow_name or "agent", params.get("inputs") or [])


def batch_run_name(agent: str, inputs: Any) -> str:
    """The name of a flow run of `agent` over `inputs` (see `flow_run_name`).

    Example:
        >>> batch_run_name("triage", [{"subject": "cust-7"}]), batch_run_name("triage", [{}, {}])
        ('triage/cust-7', 'triage/batch-2')
    """
    if not isinstance(inputs, list):  # refused by the flow itself, with a better message
        return f"{agent}/batch"
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        label = inputs[0].get("subject") or inputs[0].get("run_key")
        return f"{agent}/{label}" if label else f"{agent}/run"
    return f"{agent}/batch-{len(inputs)}"


def stored_form(node: StepNode, value: Any) -> Any:
    """What a step's persisted result holds: for a step declared to return a Pydantic model,
    the model's fields (`model_dump`), else the value itself.

    A model instance is pickled with its class, and a class Python cannot import by name is
    pickled whole: instructor hands back instances of such a class (a subclass it makes of the
    declared model), and rebuilding one on every read cost a rerun ~9 ms per reasoning step.
    The fields pickle by reference and are validated back into the declared model."""
    if _is_model(node.returns) and isinstance(value, BaseModel):
        return node.adapter.dump_python(value)
    return value


def read_form(node: StepNode, stored: Any) -> Any:
    """The step's value from what `stored_form` persisted (older records hold the value)."""
    if _is_model(node.returns) and isinstance(stored, dict):
        return node.adapter.validate_python(stored)
    return stored


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# -- the step runner --------------------------------------------------------------------------


class PrefectStepRunner:
    """Runs a batch's step calls as Prefect task runs, reading persisted results first."""

    def __init__(
        self,
        graph: AgentGraph,
        tasks: Mapping[str, Task[Any, Any]],
        storage: SQLResultStorage,
        reviewer: Reviewer,
    ) -> None:
        self.graph = graph
        self.tasks = tasks
        self.storage = storage
        self.store = ResultStore(result_storage=storage)
        self.reviewer = reviewer

    async def attempt(
        self,
        node: StepNode,
        call: StepCall,
        args: dict[str, Any],
        scope: RunScope,
        *,
        lookup: bool = True,
    ) -> Attempt:
        trace = StepTrace()
        t0 = time.perf_counter()
        found, value = await self._stored(node, call) if lookup else (False, None)
        if found:
            # Done before: take the persisted result without a task run (a rerun of a finished
            # batch then costs a read per step instead of Prefect's task engine).
            # No task ran, so only a twin execution's claim on the action can conflict.
            is_action = node.step.layer == "action"
            conflict = await twin_conflict(call, scope) if is_action else None
            elapsed = (time.perf_counter() - t0) * 1000
            if conflict is not None:
                return Attempt(
                    outcome="conflict", conflict=conflict, trace=trace, elapsed_ms=elapsed
                )
            return Attempt(
                outcome="completed", value=value, cached=True, trace=trace, elapsed_ms=elapsed
            )
        run = await run_task(
            self.tasks[node.name],
            partial(execute, node, call, args, trace, scope),
            name=call.label,
            parameters={"call": call, "args": args},
            result_store=self.store,
            persist_key=call.cache_key if caches(node) else None,
            stored_form=partial(stored_form, node),
        )
        common: dict[str, Any] = {
            "trace": trace,
            "elapsed_ms": (time.perf_counter() - t0) * 1000,
            "task_run_id": str(run.task_run_id),
        }
        if trace.conflict is not None:
            return Attempt(outcome="conflict", conflict=trace.conflict, **common)
        if run.error is not None:
            return Attempt(outcome="failed", error=run.error, **common)
        return Attempt(outcome="completed", value=run.value, **common)

    async def _stored(self, node: StepNode, call: StepCall) -> tuple[bool, Any]:
        """The persisted result of this exact step call, if a previous run stored one."""
        if not caches(node):
            return False, None
        try:
            # Read from the storage itself: `ResultStore.aread` adds a lock holder's name (a
            # gethostname call), a lock check and an in-memory cache that no batch reads twice,
            # a tenth of a rerun's CPU together.
            content = await self.storage.aread_path(call.cache_key)
            record: ResultRecord[Any] = ResultRecord.deserialize(
                content, backup_serializer=self.store.serializer
            )
            return True, read_form(node, record.result)
        except Exception:  # missing (the usual first-run case) or unreadable: run the task
            return False, None

    async def review(
        self,
        node: StepNode,
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        run_input: Mapping[str, Any],
    ) -> Verdict | ReviewPending | None:
        review = node.step.options.review
        assert review is not None  # the ladder asks only when the step has a review
        return await self.reviewer.ask(node.name, proposed, args, result, run_input, review)

    async def shadow(
        self, node: StepNode, call: StepCall, args: dict[str, Any], result: RunResult
    ) -> DecisionRecord | None:
        return await live_shadow(node, call, args, result)

    async def logged_decision(
        self, node: StepNode, result: RunResult, args: dict[str, Any]
    ) -> DecisionRecord | None:
        found: DecisionRecord | None = await alogged_decision(
            tenant=result.tenant,
            agent=self.graph.name,
            step=node.name,
            run_key=result.run_key,
            input_digest=digest(args, 64),
        )
        return found
