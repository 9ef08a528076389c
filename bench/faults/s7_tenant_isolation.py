"""Scenario 7: tenant isolation, as properties over generated tenants, subjects, keys and values.

    python bench/faults/s7_tenant_isolation.py [--short] [--runs N]

For each generated pair of tenants (B a confusable variant of A: case, surrounding whitespace,
SQL wildcards `%`/`_`, a prefix or extension, unicode normalisation, or unrelated), write a run,
a step, a decision, a completed action and a memory item for A (marked with a fresh token), then
read through every public path as B: Memory (get, items), queries.runs/steps/memory/actions,
decisions.query/get/set_outcome/export_jsonl, the ledger's idempotency keys, and (for a share of
the examples) the CLI's runs, memory and decisions. A must still read its own rows, unchanged.

runs = examples tried (SQLite + PostgreSQL), completed = examples where every path held,
failures = the first cross-tenant reads found (hypothesis shrinks them to a minimal pair).
`tests/faults/test_isolation_properties.py` runs the same checks with fewer examples.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hypothesis import strategies as st
from typer.testing import CliRunner

from agents import Memory, decisions
from agents.cli import app
from agents.store import ledger, queries
from agents.store.decisions import record_decisions
from agents.store.tables import AgentRun, DecisionRecord, StepRun
from bench.faults.harness import scenario_main
from bench.faults.report import ScenarioResult

NAME = "7 tenant isolation"

AGENT = "iso-props"
_runner = CliRunner()

#: Characters of generated names: no NUL (PostgreSQL text cannot hold it) and no lone surrogates.
_name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
#: Tenant names Stalwart accepts: a blank one (`"\r"`) is refused before any query runs.
_base_names = st.one_of(
    st.text(_name_chars, min_size=1, max_size=12).filter(str.strip),
    st.sampled_from(["acme", "Acme", "tenant-a", "t", "%", "_", "a%", "a_c", "é", "ß", "İ"]),
)


def _variant(name: str, how: str, extra: str) -> str:
    """A tenant name that is easy to confuse with `name`.

    Example:
        >>> _variant("acme", "wildcard", ""), _variant("Acme", "lower", "")
        ('_cme', 'acme')
    """
    if how == "upper":
        return name.upper()
    if how == "lower":
        return name.lower()
    if how == "swapcase":
        return name.swapcase()
    if how == "space":
        return f" {name}" if extra == "" else f"{name}{extra[:1] or ' '} "
    if how == "prefix":
        return name[:-1] or name + "x"
    if how == "extend":
        return name + (extra or "x")
    if how == "wildcard":
        return ("%" if len(name) % 2 else "_") + name[1:]
    if how == "like_all":
        return "%"
    if how == "nfd":
        return unicodedata.normalize("NFD", name)
    if how == "nfkc":
        return unicodedata.normalize("NFKC", name)
    return extra or "other"


@st.composite
def tenant_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """(A, B): B is a confusable variant of A, never equal to it; neither is blank.

    Example:
        >>> a, b = tenant_pairs().example()  # doctest: +SKIP
        >>> a != b  # doctest: +SKIP
        True
    """
    a = draw(_base_names)
    how = draw(
        st.sampled_from(
            [
                "upper",
                "lower",
                "swapcase",
                "space",
                "prefix",
                "extend",
                "wildcard",
                "like_all",
                "nfd",
                "nfkc",
                "other",
            ]
        )
    )
    b = _variant(a, how, draw(st.text(_name_chars, max_size=3)))
    if b == a or not b.strip():  # "\rx" -> prefix "\r": blank, refused as a tenant
        b = a + "_"
    if draw(st.booleans()):
        a, b = b, a  # either may be the longer, upper-case or wildcard one
    return a, b


@dataclass
class Planted:
    """What was written for tenant A in one example."""

    token: str
    run_id: str
    decision_id: str
    action_key: str


def plant(tenant: str, subject: str, key: str, value: Any, url: str) -> Planted:
    """Write a run, a step, a decision, a completed action and a memory item for `tenant`.

    Example:
        >>> plant("acme", "c1", "k", 1, "sqlite:///state.db").token  # doctest: +SKIP
        '3f2a...'
    """
    token = uuid.uuid4().hex
    run_key = f"rk-{token[:8]}"
    run = AgentRun(
        tenant=tenant,
        agent=AGENT,
        subject=subject,
        run_key=run_key,
        status="completed",
        inputs_digest=token[:32],
        error=f"marker {token}",
    )
    queries.record_run_start(run, url=url)
    queries.record_steps(
        [
            StepRun(
                tenant=tenant,
                agent=AGENT,
                agent_run_id=run.id,
                step="decide",
                layer="reasoning",
                status="completed",
                error=f"marker {token}",
            )
        ],
        url=url,
    )
    decision = DecisionRecord(
        tenant=tenant,
        agent=AGENT,
        step="decide",
        agent_run_id=run.id,
        subject=subject,
        run_key=run_key,
        input_digest=token[:32],
        output={"token": token, "value": value},
        confidence=0.9,
        rationale=f"marker {token}",
    )
    record_decisions([decision], url=url)
    action_key = ledger.idempotency_key(tenant, AGENT, subject, run_key, "act")
    ledger.claim(
        action_key,
        tenant=tenant,
        agent=AGENT,
        subject=subject,
        run_key=run_key,
        step="act",
        agent_run_id=run.id,
        url=url,
    )
    ledger.complete(action_key, {"token": token}, url=url)
    memory = Memory(tenant=tenant, agent=AGENT, subject=subject, url=url)
    memory.set(key, {"token": token, "value": value})
    return Planted(token, run.id, decision.id, action_key)


def _leaks(token: str, rows: Any) -> bool:
    return token in json.dumps(rows, default=str, ensure_ascii=False)


def _cli(*args: str) -> str:
    result = _runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return result.output


def check_isolation(a: str, b: str, subject: str, key: str, value: Any, url: str) -> None:
    """Write for A, then read everything as B: none of A's rows; A still reads its own.

    Raises AssertionError naming the path that crossed tenants.

    Example:
        >>> check_isolation("acme", "Acme", "c1", "k", 1, "sqlite:///state.db")  # doctest: +SKIP
    """
    planted = plant(a, subject, key, value, url)
    token = planted.token

    # Memory: the same agent, subject and key.
    b_memory = Memory(tenant=b, agent=AGENT, subject=subject, url=url)
    assert b_memory.get(key) is None or not _leaks(token, b_memory.get(key))
    assert not _leaks(token, b_memory.items())
    assert not _leaks(token, [r.model_dump() for r in queries.memory(tenant=b, url=url)])
    assert not _leaks(
        token,
        [r.model_dump() for r in queries.memory(tenant=b, agent=AGENT, subject=subject, url=url)],
    )
    # Runs, steps and actions.
    assert planted.run_id not in {r.id for r in queries.runs(tenant=b, url=url)}
    assert planted.run_id not in {r.id for r in queries.runs(tenant=b, agent=AGENT, url=url)}
    assert queries.steps(tenant=b, agent_run_id=planted.run_id, url=url) == []
    assert planted.action_key not in {
        r.idempotency_key for r in queries.actions(tenant=b, agent=AGENT, url=url)
    }
    assert ledger.idempotency_key(b, AGENT, subject, "rk", "act") != ledger.idempotency_key(
        a, AGENT, subject, "rk", "act"
    )
    # The decision log.
    b_decisions = decisions.query(tenant=b, agent=AGENT, url=url)
    assert planted.decision_id not in {d.id for d in b_decisions}
    assert decisions.get(planted.decision_id, tenant=b, url=url) is None
    assert not decisions.set_outcome(planted.decision_id, tenant=b, outcome="hijacked", url=url)
    exported = io.StringIO()
    decisions.export_jsonl(decisions.query(tenant=b, url=url), exported)
    assert token not in exported.getvalue()

    # Positive control: A reads its own data through the same paths.
    own = decisions.get(planted.decision_id, tenant=a, url=url)
    assert own is not None and own.outcome is None  # B's set_outcome changed nothing
    assert Memory(tenant=a, agent=AGENT, subject=subject, url=url).get(key)["token"] == token
    assert planted.run_id in {r.id for r in queries.runs(tenant=a, agent=AGENT, url=url)}


def check_cli(a: str, b: str, subject: str, token_of_a: str) -> None:
    """The CLI's read commands as B print nothing of A's (the database in force is read).

    Example:
        >>> check_cli("acme", "ACME", "c1", planted.token)  # doctest: +SKIP
    """
    for args in (
        ("runs", "--tenant", b, "--agent", AGENT),
        ("memory", "--tenant", b, "--subject", subject),
        ("decisions", "--tenant", b, "--agent", AGENT),
    ):
        assert token_of_a not in _cli(*args), args


def subjects() -> st.SearchStrategy[str]:
    """Generated subjects (any text but NUL and lone surrogates)."""
    return st.text(_name_chars, min_size=1, max_size=10)


def keys() -> st.SearchStrategy[str]:
    """Generated memory keys."""
    return st.text(_name_chars, min_size=1, max_size=10)


def values() -> st.SearchStrategy[Any]:
    """Generated JSON values."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**6), 10**6)
        | st.text(_name_chars, max_size=10),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids),
        max_leaves=6,
    )


def _pass(url: str, examples: int, cli_every: int) -> tuple[int, int, list[str]]:
    """Run the property `examples` times against `url`: (tried, held, failures)."""
    from hypothesis import HealthCheck, given, settings

    tried = held = 0
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(tenant_pairs(), subjects(), keys(), values())
    def prop(pair: tuple[str, str], subject: str, key: str, value: Any) -> None:
        nonlocal tried, held
        tried += 1
        a, b = pair
        check_isolation(a, b, subject, key, value, url)
        if tried % cli_every == 0:
            check_cli(a, b, subject, plant(a, subject, key, value, url).token)
        held += 1

    try:
        prop()
    except AssertionError as exc:  # hypothesis re-raises the shrunk counterexample
        failures.append(f"{url.split(':')[0]}: {str(exc).splitlines()[0][:300]}")
    return tried, held, failures


def run(short: bool = False, *, runs: int | None = None) -> ScenarioResult:
    """The properties on SQLite and PostgreSQL (short: 100 + 30 examples; full: 2000 + 300).

    Example:
        >>> run(short=True).failures  # doctest: +SKIP
        []
    """
    import psycopg

    from agents.settings import reload_settings
    from agents.store import upgrade
    from agents.store.engine import dispose_engines

    sqlite_examples = runs or (100 if short else 2000)
    pg_examples = max(10, sqlite_examples // (3 if short else 7))
    started = time.perf_counter()
    tried = held = 0
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="s7-") as tmp:
        os.environ.setdefault("STALWART_DATA_DIR", f"{tmp}/data")
        url = f"sqlite:///{tmp}/state.db"
        os.environ["STALWART_DATABASE_URL"] = url  # the CLI reads the database in force
        reload_settings()
        upgrade(url)
        t, h, f = _pass(url, sqlite_examples, cli_every=10)
        tried, held, failures = tried + t, held + h, failures + f
        admin = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
        name = f"stalwart_s7_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        pg = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
        try:
            upgrade(pg)
            os.environ["STALWART_DATABASE_URL"] = pg
            reload_settings()
            t, h, f = _pass(pg, pg_examples, cli_every=10)
            tried, held, failures = tried + t, held + h, failures + f
        finally:
            os.environ.pop("STALWART_DATABASE_URL", None)
            reload_settings()
            dispose_engines()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return ScenarioResult(
        NAME,
        runs=tried,
        completed=held,
        lost=0,
        duplicate_actions=0,
        notes=(
            f"{sqlite_examples} SQLite + {pg_examples} PostgreSQL examples, 15 read paths each "
            f"(CLI on every 10th); {time.perf_counter() - started:.0f} s"
        ),
        failures=failures,
    )


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
