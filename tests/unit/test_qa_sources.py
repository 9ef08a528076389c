"""flows.qa.sources: what the qa-runs source tools read, and what they refuse to read."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from flows.qa import sources
from flows.qa.sources import SourceError, code_under_test, source_of_test
from flows.qa_runs import BUNDLED_PROJECTS


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "tests").mkdir(parents=True)
    (root / "src" / "shop").mkdir(parents=True)
    (root / "src" / "shop" / "__init__.py").write_text("")
    (root / "src" / "shop" / "cart.py").write_text(
        textwrap.dedent(
            """\
            import os


            def total(prices):
                return sum(prices)


            def currency():
                return os.environ["SHOP_CURRENCY"]


            class Cart:
                def add(self, price):
                    self.prices.append(price)
            """
        )
    )
    (root / "tests" / "test_cart.py").write_text(
        textwrap.dedent(
            """\
            import pytest
            from shop.cart import Cart, total as add_up


            class TestCart:
                @pytest.mark.parametrize("n", [1, 2])
                def test_total(self, n):
                    assert add_up([n, n]) == 2 * n + 1


            def test_new_cart():
                assert Cart()
            """
        )
    )
    (tmp_path / "secret.py").write_text("TOKEN = 'not for the model'\n")
    return root


def test_a_method_with_parameters_and_the_code_it_calls(project: Path) -> None:
    test_id = "tests/test_cart.py::TestCart::test_total[2]"
    assert source_of_test(project, test_id).splitlines() == [
        "# tests/test_cart.py, lines 6-8",
        '    @pytest.mark.parametrize("n", [1, 2])',
        "    def test_total(self, n):",
        "        assert add_up([n, n]) == 2 * n + 1",
    ]
    # Only what the test uses (an alias of a `from` import, under src/): not `currency`,
    # whose os.environ would read as an environment problem, nor pytest.
    code = code_under_test(project, test_id)
    assert code.splitlines()[:3] == [
        "# src/shop/cart.py: total, lines 4-5",
        "def total(prices):",
        "    return sum(prices)",
    ]
    assert "os.environ" not in code and "class Cart" not in code
    assert "class Cart:" in code_under_test(project, "tests/test_cart.py::test_new_cart")


@pytest.mark.parametrize(
    "test_id",
    [
        "../secret.py::TOKEN",
        "tests/../../secret.py::TOKEN",
        "/etc/hosts::x",
        "/etc/passwd::root",
    ],
)
def test_paths_outside_the_project_are_refused(project: Path, test_id: str) -> None:
    with pytest.raises(SourceError, match="is outside the project directory"):
        source_of_test(project, test_id)
    with pytest.raises(SourceError, match="is outside the project directory"):
        code_under_test(project, test_id)


def test_a_symlink_out_of_the_project_is_refused(project: Path) -> None:
    (project / "tests" / "test_link.py").symlink_to(project.parent / "secret.py")
    with pytest.raises(SourceError, match="is outside the project directory"):
        source_of_test(project, "tests/test_link.py::TOKEN")


def test_what_else_is_refused(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "pytest.ini").write_text("[pytest]\n")
    with pytest.raises(SourceError, match="is not a Python file"):
        source_of_test(project, "pytest.ini::x")
    with pytest.raises(SourceError, match="no such file"):
        source_of_test(project, "tests/test_nope.py::test_x")
    with pytest.raises(SourceError, match="no test 'test_nope'"):
        source_of_test(project, "tests/test_cart.py::test_nope")
    with pytest.raises(SourceError, match="is not a test id"):
        source_of_test(project, "tests/test_cart.py")
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 100)
    with pytest.raises(SourceError, match="more than 100 are not read"):
        source_of_test(project, "tests/test_cart.py::test_new_cart")


def test_results_are_capped(project: Path) -> None:
    body = "\n".join(f"    assert {i} == {i}" for i in range(2_000))
    (project / "tests" / "test_long.py").write_text(f"def test_long():\n{body}\n")
    assert os.path.getsize(project / "tests" / "test_long.py") < sources.MAX_FILE_BYTES
    text = source_of_test(project, "tests/test_long.py::test_long")
    assert len(text) == sources.MAX_SOURCE_CHARS


def test_every_bundled_failure_has_its_source_and_code() -> None:
    truth = json.loads((BUNDLED_PROJECTS / "ground_truth.json").read_text())["failures"]
    for project, failures in truth.items():
        for test_id in failures:
            name = test_id.split("::")[-1]
            assert f"def {name}(" in source_of_test(BUNDLED_PROJECTS / project, test_id)
            code = code_under_test(BUNDLED_PROJECTS / project, test_id)
            assert code.startswith("# ") or "uses no function" in code, (project, test_id)
