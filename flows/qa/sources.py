"""Read-only views of a project's sources for the qa-runs model's tools: a failing test's
function, and the project functions that test calls.

This module owns reading safely: every path is resolved (symlinks included) and must stay
inside the project directory, only `.py` files are read, each at most `MAX_FILE_BYTES`, and
what comes back is capped at `MAX_SOURCE_CHARS`. Anything else raises `SourceError`, an
`InputError`, so a refused read is reported to the model and never retried. Finding the
project directory (and exposing these as tools) is left to `flows.qa_runs`.

Example:
    >>> from flows.qa_runs import BUNDLED_PROJECTS
    >>> billing = BUNDLED_PROJECTS / "billing-api"
    >>> print(source_of_test(billing, "tests/test_money.py::test_round_half_up"))
    # tests/test_money.py, lines 18-19
    def test_round_half_up() -> None:
        assert money.round_half_up(0.125, 2) == 0.13
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from agents.errors import InputError

__all__ = ["MAX_FILE_BYTES", "MAX_SOURCE_CHARS", "SourceError", "code_under_test", "source_of_test"]

#: A file larger than this is not read (a test module or module under test is far smaller).
MAX_FILE_BYTES = 256_000
#: What a tool returns is cut to this many characters.
MAX_SOURCE_CHARS = 3_000

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class SourceError(InputError):
    """A source that may not or cannot be read: outside the project, not Python, too large,
    or no such test. A bad argument, not a transient failure: never retried."""


def inside(root: Path, relative: str) -> Path:
    """`relative` resolved under `root`; raises `SourceError` when it leaves the project.

    Example:
        >>> inside(Path("/srv/p"), "../../etc/passwd")
        Traceback (most recent call last):
        ...
        flows.qa.sources.SourceError: '../../etc/passwd' is outside the project directory
    """
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise SourceError(f"{relative!r} is outside the project directory")
    return path


def read_source(root: Path, relative: str) -> str:
    """The text of the Python file `relative` of the project at `root`, size-capped.

    Example:
        >>> read_source(Path("/srv/p"), "/etc/passwd")
        Traceback (most recent call last):
        ...
        flows.qa.sources.SourceError: '/etc/passwd' is outside the project directory
    """
    path = inside(root, relative)
    if path.suffix != ".py":
        raise SourceError(f"{relative!r} is not a Python file")
    if not path.is_file():
        raise SourceError(f"{relative!r}: no such file in the project")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SourceError(f"{relative!r} is {size} bytes, more than {MAX_FILE_BYTES} are not read")
    return path.read_text(encoding="utf-8", errors="replace")


def split_test_id(test_id: str) -> tuple[str, list[str]]:
    """A pytest node id as its file and the names inside it (parameters dropped).

    Example:
        >>> split_test_id("tests/test_a.py::TestCart::test_total[2-3]")
        ('tests/test_a.py', ['TestCart', 'test_total'])
    """
    file, _, rest = test_id.strip().partition("::")
    names = [name for name in rest.split("::") if name]
    if not file or not names:
        raise SourceError(f"{test_id!r} is not a test id like 'tests/test_a.py::test_x'")
    names[-1] = names[-1].split("[", 1)[0]
    return file, names


@dataclass(frozen=True)
class _Module:
    """A parsed project file: where it is, its lines and its syntax tree."""

    relative: str
    lines: list[str]
    tree: ast.Module

    @classmethod
    def read(cls, root: Path, relative: str) -> _Module:
        text = read_source(root, relative)
        try:
            tree = ast.parse(text)
        except SyntaxError as exc:
            raise SourceError(
                f"{relative!r} does not parse: {exc.msg} (line {exc.lineno})"
            ) from exc
        return cls(relative, text.splitlines(), tree)

    def find(self, names: list[str]) -> Definition | None:
        """The definition at the path `names` (a class's method: `["TestX", "test_y"]`)."""
        body: list[ast.stmt] = self.tree.body
        found: Definition | None = None
        for name in names:
            found = next(
                (node for node in body if isinstance(node, DEFINITIONS) and node.name == name),
                None,
            )
            if found is None:
                return None
            body = found.body
        return found

    def segment(self, node: Definition, label: str = "") -> str:
        """The definition's source (decorators included) under a `# file, lines a-b` header."""
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        end = node.end_lineno or node.lineno
        header = f"# {self.relative}{label}, lines {start}-{end}"
        return "\n".join([header, *self.lines[start - 1 : end]])


def source_of_test(root: Path, test_id: str) -> str:
    """The source of the test function `test_id` (a pytest node id) of the project at `root`.

    Example:
        >>> from flows.qa_runs import BUNDLED_PROJECTS
        >>> source_of_test(BUNDLED_PROJECTS / "billing-api", "tests/test_money.py::test_nope")
        Traceback (most recent call last):
        ...
        flows.qa.sources.SourceError: no test 'test_nope' in tests/test_money.py
    """
    file, names = split_test_id(test_id)
    module = _Module.read(root, file)
    node = module.find(names)
    if node is None:
        raise SourceError(f"no test {'::'.join(names)!r} in {file}")
    return module.segment(node)[:MAX_SOURCE_CHARS]


def code_under_test(root: Path, test_id: str) -> str:
    """The project functions (and classes) the test `test_id` uses, from the modules its file
    imports; modules outside the project (the standard library, packages) are left out.

    Example:
        >>> from flows.qa_runs import BUNDLED_PROJECTS
        >>> reporting = BUNDLED_PROJECTS / "reporting"
        >>> print(code_under_test(reporting, "tests/test_stats.py::test_mean"))
        # stats.py: mean, lines 4-5
        def mean(values: list[float]) -> float:
            return sum(values) / len(values)
    """
    file, names = split_test_id(test_id)
    test_module = _Module.read(root, file)
    test = test_module.find(names)
    if test is None:
        raise SourceError(f"no test {'::'.join(names)!r} in {file}")
    imported = _imports(test_module.tree, file)
    parts: list[str] = []
    seen: set[tuple[str, str]] = set()
    for module_name, attribute in _used(test, imported):
        if (module_name, attribute) in seen:
            continue
        seen.add((module_name, attribute))
        relative = _module_file(root, module_name)
        if relative is None:
            continue  # not the project's own code
        module = _Module.read(root, relative)
        node = module.find([attribute])
        if node is not None:
            parts.append(module.segment(node, f": {attribute}"))
    if not parts:
        return f"The test {test_id} uses no function of the project's own modules."
    return "\n\n".join(parts)[:MAX_SOURCE_CHARS]


def _imports(tree: ast.Module, file: str) -> dict[str, tuple[str, str | None]]:
    """Top-level imports of a test file: local name to (module, attribute or None)."""
    found: dict[str, tuple[str, str | None]] = {}
    package = Path(file).parent
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    found[top] = (top, None)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the test file's package
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.parent
                prefix = ".".join(p for p in parent.parts if p not in ("", "."))
                base = ".".join(p for p in (prefix, base) if p)
            for alias in node.names:
                if alias.name != "*":
                    found[alias.asname or alias.name] = (base, alias.name)
    return found


def _used(test: Definition, imported: dict[str, tuple[str, str | None]]) -> list[tuple[str, str]]:
    """(module, name) of every imported project name the test refers to, in source order."""
    used: list[tuple[str, str]] = []
    for node in ast.walk(test):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module, attribute = imported.get(node.value.id, ("", ""))
            if module and attribute is None:
                used.append((module, node.attr))
        elif isinstance(node, ast.Name) and node.id in imported:
            module, attribute = imported[node.id]
            if attribute is not None:
                used.append((module, attribute))
    return list(dict.fromkeys(used))


def _module_file(root: Path, module: str) -> str | None:
    """The project file of `module` (`a.b` → `a/b.py` or `a/b/__init__.py`, or under `src/`)."""
    if not module:
        return None
    stem = module.replace(".", "/")
    for candidate in (
        f"{stem}.py",
        f"{stem}/__init__.py",
        f"src/{stem}.py",
        f"src/{stem}/__init__.py",
    ):
        try:
            if inside(root, candidate).is_file():
                return candidate
        except SourceError:
            continue
    return None
