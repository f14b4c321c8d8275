"""The layout's rules, checked over the code itself.

Imports run one way: ``ner_core`` <- ``storage`` <- ``flows`` <- ``app``; ``ui`` uses ``storage`` and
``ner_core``; nothing imports ``app``, ``ui`` or ``bench``. Inside ``ner_core`` the rooms run one way too
(:data:`ROOMS`), and no module anywhere is part of an import circle. Every import statement counts, also
those inside functions (a lazy import is still a dependency). Only ``ner_core/artifacts/`` spells a
model-directory file name. Functions stay short enough to hold in mind.
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
#: ner_core's rooms, lowest first, and what each may import besides the shared vocabulary (the top-level
#: modules of ner_core: documents, schemes, config, metrics, settings, ...), which imports no room
ROOMS = {
    "data": set(),
    "runtime": set(),
    "model": {"runtime"},
    "artifacts": {"runtime", "model"},
    "inference": {"data", "runtime", "model", "artifacts"},
    "training": {"data", "runtime", "model", "artifacts", "inference"},
}


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


# ---------------------------------------------------------------------------------------------- modules
def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``module``) imports, at any depth; ``from a import
    b`` counts ``a.b`` when that is a module, else ``a``."""

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in known:
                return ".".join(parts[:i])
        return None

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        found.update(m for m in map(resolve, names) if m and m != module)
    return found


def import_graph(packages=PACKAGES) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in _sources(packages)}
    known = set(paths)
    return {
        m: imported_modules(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", known)
        for m, p in paths.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of more than one module, and
    modules that import themselves (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle_and_only_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_module_scanner_resolves_relative_and_from_imports():
    known = {"pkg", "pkg.sub", "pkg.sub.mod", "pkg.other"}
    src = "from . import mod\nfrom ..other import x\ndef f():\n    import pkg.sub.mod\n"
    # importing pkg.sub.mod runs pkg/sub/__init__.py first: the package counts too
    assert imported_modules(src, "pkg.sub.here", False, known) == {"pkg.sub", "pkg.sub.mod", "pkg.other"}


def test_no_import_circle_anywhere():
    """Also inside a package: a circle makes import order matter and hides which layer a module is in."""
    found = circles(import_graph())
    assert not found, f"import circles: {found}"


def test_ner_core_rooms_import_one_way():
    bad = []
    for module, deps in import_graph(("ner_core",)).items():
        parts = module.split(".")
        room = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else None
        for dep in deps:
            dparts = dep.split(".")
            dep_room = dparts[1] if len(dparts) > 1 and dparts[1] in ROOMS else None
            if dep_room is None or dep_room == room:
                continue
            if room is None or dep_room not in ROOMS[room]:
                bad.append(f"{module} imports {dep}")
    assert not bad, f"ner_core rooms may import only lower rooms ({ROOMS}): {bad}"


def model_dir_file_names(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every string constant in ``source`` that is a model-directory file name or a path
    ending in one (prose that mentions one, in a docstring, does not count)."""
    from ner_core.artifacts.layout import FILE_NAMES

    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and any(node.value == n or node.value.endswith("/" + n) for n in FILE_NAMES)
    )


def test_the_file_name_scanner_sees_names_and_paths_but_not_prose():
    lines = [
        'a = "meta.json"',
        'b = f"{d}/labels.json"',
        '"""the labels.json of a model"""',
        'c = "d/x.json"',
        'd = "d/model.safetensors"',
    ]
    assert [line for line, _ in model_dir_file_names("\n".join(lines))] == [1, 2, 5]


def test_only_artifacts_spells_a_model_directory_file_name():
    """``ner_core/artifacts/layout.py`` names them; everything else asks it (or modeldir's readers)."""
    artifacts = REPO / "ner_core" / "artifacts"
    bad = [
        f"{path.relative_to(REPO)}:{line} {text!r}"
        for path in _sources()
        if artifacts not in path.parents
        for line, text in model_dir_file_names(path.read_text(encoding="utf-8"))
    ]
    assert not bad, f"model-directory file names spelled outside ner_core/artifacts: {bad}"
