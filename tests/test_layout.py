"""The layout's rules, checked over the code itself.

Imports run one way: ``ner_core`` <- ``storage`` <- ``flows`` <- ``app``; ``ui`` uses ``storage`` and
``ner_core``; nothing imports ``app``, ``ui`` or ``bench``. Every import statement counts, also those
inside functions (a lazy import is still a dependency). Functions stay short enough to hold in mind.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ner_core", "storage", "flows", "app", "ui", "bench")
# what each package may import from the others (the standard library and third parties are not checked)
ALLOWED = {
    "ner_core": set(),
    "storage": {"ner_core"},
    "flows": {"ner_core", "storage"},
    "app": {"ner_core", "storage", "flows"},
    "ui": {"ner_core", "storage"},
    "bench": {"ner_core", "storage", "flows"},
}
MAX_FUNCTION_LINES = 80


def _sources(packages=PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def imported_packages(source: str, module: str) -> set[tuple[int, str]]:
    """``(line, top-level package)`` of every import in ``source`` (``module`` is its dotted name, for
    relative imports), at any depth."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = module.split(".")[: -node.level]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.add((node.lineno, name.split(".")[0]))
    return found


def test_import_scanner_sees_imports_inside_functions_and_relative_ones():
    src = "import os\ndef f():\n    from storage import db\n    from .sibling import x\n"
    assert imported_packages(src, "flows.steps") == {(1, "os"), (3, "storage"), (4, "flows")}


def test_every_package_exists_and_has_code():
    for pkg in PACKAGES:
        assert list((REPO / pkg).rglob("*.py")), f"{pkg}/ has no Python files"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package):
    bad = []
    for path in _sources([package]):
        rel = path.relative_to(REPO)
        module = ".".join(rel.with_suffix("").parts)
        for line, top in imported_packages(path.read_text(encoding="utf-8"), module):
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                bad.append(f"{rel}:{line} imports {top}")
    assert not bad, f"{package} may import only {sorted(ALLOWED[package]) or 'none of the others'}: {bad}"


def test_no_function_is_longer_than_a_reader_can_hold():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - start + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_package_is_shipped():
    """pyproject lists its packages by name: a package left out installs editable (make setup) but is
    missing from a wheel."""
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for pkg in ("ner_core", "storage", "flows", "app", "ui")
        for init in (REPO / pkg).rglob("__init__.py")
    }
    assert found == listed
