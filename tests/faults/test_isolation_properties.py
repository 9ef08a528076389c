"""Scenario 7 (short): tenant isolation as properties. For generated pairs of tenants (case
variants, surrounding whitespace, SQL wildcards `%` and `_`, prefixes of each other, unicode
look-alikes and normalisation variants, or unrelated names) and generated subjects, keys and
values: what is written for A is never seen, reused or changed through any public read path as B.

The writes, the read paths and the name strategies live in `bench/faults/s7_tenant_isolation.py`
(the full version runs many more examples); each example marks A's rows with a fresh token, so
rows left by earlier examples can neither mask nor fake a leak.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bench.faults.s7_tenant_isolation import (
    check_cli,
    check_isolation,
    keys,
    plant,
    subjects,
    tenant_pairs,
    values,
)

pytestmark = pytest.mark.faults

SETTINGS = settings(
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(SETTINGS, max_examples=60)
@given(tenant_pairs(), subjects(), keys(), values())
def test_sqlite_no_read_path_crosses_tenants(
    sqlite_url: str, pair: tuple[str, str], subject: str, key: str, value: Any
) -> None:
    a, b = pair
    check_isolation(a, b, subject, key, value, sqlite_url)


@settings(SETTINGS, max_examples=12)
@given(tenant_pairs(), subjects())
def test_cli_reads_one_tenant_only(sqlite_url: str, pair: tuple[str, str], subject: str) -> None:
    a, b = pair
    planted = plant(a, subject, "k", 1, sqlite_url)
    check_cli(a, b, subject, planted.token)


@pytest.mark.postgres
@settings(SETTINGS, max_examples=25)
@given(tenant_pairs(), subjects(), keys(), values())
def test_postgres_no_read_path_crosses_tenants(
    postgres_url: str, pair: tuple[str, str], subject: str, key: str, value: Any
) -> None:
    a, b = pair
    check_isolation(a, b, subject, key, value, postgres_url)


@settings(SETTINGS, max_examples=500)
@given(tenant_pairs())
def test_generated_pairs_are_distinct_tenants_stalwart_accepts(pair: tuple[str, str]) -> None:
    # A blank name is refused before any query (`require_tenant`): as a "pair" it would turn a
    # run of the properties into a ValueError instead of a check (the full s7 once drew "\r").
    a, b = pair
    assert a != b and a.strip() and b.strip()
