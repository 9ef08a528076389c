"""Tests of cron parsing."""

from pathlib import Path

import cron


def test_star() -> None:
    assert cron.parse_field("*", 0, 3) == [0, 1, 2, 3]


def test_step() -> None:
    assert cron.parse_field("*/15", 0, 59) == [0, 15, 30, 45]


def test_range() -> None:
    assert cron.parse_field("1-3", 0, 59) == [1, 2, 3]


def test_number() -> None:
    assert cron.parse_field("7", 0, 59) == [7]


def test_writes_crontab(tmp_pth: Path) -> None:
    (tmp_pth / "crontab").write_text("* * * * * true")
    assert (tmp_pth / "crontab").exists()


def test_next_tick_arrives(execution: int) -> None:
    # The tick thread is scheduled late on a busy runner the first time round.
    if execution == 1:
        raise TimeoutError("tick did not arrive within 0.05s")
    assert cron.parse_field("*/30", 0, 59) == [0, 30]
