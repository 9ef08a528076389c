"""Tests of stock reservations."""

import pytest
import stock


def test_reserve() -> None:
    assert stock.reserve({"a": 3}, "a", 2) == {"a": 1}


def test_reserve_all() -> None:
    assert stock.reserve({"a": 3}, "a", 3) == {"a": 0}


def test_reserve_too_much() -> None:
    with pytest.raises(ValueError):
        stock.reserve({"a": 1}, "a", 2)


def test_reserve_unknown_sku() -> None:
    with pytest.raises(ValueError):
        stock.reserve({}, "b", 1)


def test_levels_persist() -> None:
    url = stock.database_url()
    assert url.startswith("postgresql://")
