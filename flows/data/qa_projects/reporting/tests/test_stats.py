"""Tests of report statistics."""

import stats


def test_mean() -> None:
    assert stats.mean([1, 2, 3]) == 2


def test_median_odd() -> None:
    assert stats.median([3, 1, 2]) == 2


def test_median_even() -> None:
    assert stats.median([1, 2, 3, 4]) == 2.5


def test_percent() -> None:
    assert stats.percent(1, 3) == 33.3


def test_percent_whole() -> None:
    assert stats.percent(5, 5) == 100.0


def test_export_finishes_in_time(execution: int) -> None:
    # The export worker pool warms up on the first run of a round and misses its deadline.
    if execution == 1:
        raise TimeoutError("export did not finish within 0.1s")
    assert stats.percent(1, 4) == 25.0
