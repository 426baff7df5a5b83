"""DVC can trust the stages' deps: for each dvc.yaml stage, the src/retrievers modules its entry point imports
(transitively, read from the source with ast) must be covered by the stage's declared deps.

The entry point of ``<group>@<key>`` is ``stages/<group>.py``, which calls ``retrievers.pipeline.<group>``
through ``stage_main``. Of pipeline.py itself only the module-level imports, ``stage_main`` and the stage
function (with the pipeline helpers it calls) count; every other module counts whole, imports inside its
functions included (a module runs what it imports lazily when the stage calls it, so this errs on the side of
declaring too much). Importing ``a.b.c`` imports the packages ``a`` and ``a.b`` too. ``retrievers/__init__.py``
imports ``retrievers.models.neobert`` when transformers is imported (a post-import hook), so a module that
imports transformers, sentence_transformers or pylate imports that module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
from dvc.repo import Repo

from .conftest import REPO

SRC = REPO / "src"
PACKAGE = "retrievers"
HOOKED = ("transformers", "sentence_transformers", "pylate")  # importing these runs retrievers' post-import hook
HOOK_TARGET = "retrievers.models.neobert"


def _module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imported(nodes, current: str) -> set[str]:
    """retrievers.* modules named by the import statements among ``nodes`` (and their parent packages)."""
    found: set[str] = set()
    for node in nodes:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = current.split(".")[: -node.level] if _module_file(current).name != "__init__.py" else (
                    current.split(".")[: len(current.split(".")) - node.level + 1])
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in HOOKED:
                name = HOOK_TARGET
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                if _module_file(".".join(parts[:end])) is not None:
                    found.add(".".join(parts[:end]))
    return found


@cache
def _imports_of_module(module: str) -> frozenset[str]:
    tree = ast.parse(_module_file(module).read_text())
    # The package's own imports are its post-import hook's (see HOOK_TARGET): only module-level ones count.
    nodes = tree.body if module == PACKAGE else ast.walk(tree)
    return frozenset(_imported(nodes, module) - {module})


def _closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += _imports_of_module(module)
    return seen


def _pipeline_entry(group: str) -> set[str]:
    """What running retrievers.pipeline.<group> through stage_main imports directly."""
    tree = ast.parse(_module_file(f"{PACKAGE}.pipeline").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    wanted, todo = {"stage_main"}, [group]  # stage_main's own names are the stage functions: not followed
    while todo:  # the stage function and the pipeline helpers it calls, transitively
        name = todo.pop()
        if name in wanted or name not in functions:
            continue
        wanted.add(name)
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name)]
    nodes = top + [n for name in wanted for n in ast.walk(functions[name])]
    return _imported(nodes, f"{PACKAGE}.pipeline") | {PACKAGE, f"{PACKAGE}.pipeline"}


def stage_modules(group: str) -> set[str]:
    """Every src/retrievers module that ``python stages/<group>.py <key>`` imports, as repository paths."""
    modules = set()
    for module in _pipeline_entry(group):
        modules |= {module} if module == f"{PACKAGE}.pipeline" else _closure({module})
    return {_module_file(m).relative_to(REPO).as_posix() for m in modules}


def uncovered(group: str, deps: list[str]) -> list[str]:
    """The modules of a stage that none of its deps (files or folders) covers."""
    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)

    return sorted(path for path in stage_modules(group) if not covered(path))


@pytest.fixture(scope="module")
def stages():
    with Repo(str(REPO)) as repo:
        return [(s.name.partition("@")[0], s.name, [str(d.def_path) for d in s.deps if getattr(d, "params", None)
                                                    is None]) for s in repo.index.stages]


def test_every_stage_declares_the_modules_its_entry_point_imports(stages):
    missing = {name: gap for group, name, deps in stages if (gap := uncovered(group, deps))}
    assert not missing, f"dvc.yaml deps do not cover the imported modules: {missing}"


def test_the_check_fails_when_an_imported_module_is_not_declared(stages):
    group, name, deps = next(s for s in stages if s[0] == "evaluate")
    assert "src/retrievers/evaluate.py" in deps
    assert uncovered(group, [d for d in deps if d != "src/retrievers/evaluate.py"]) == ["src/retrievers/evaluate.py"]
    # and a module reached only through another one: models/colbert.py imports train/xtr.py lazily
    assert "src/retrievers/train/xtr.py" in stage_modules("evaluate")


def test_the_import_graph_follows_lazy_and_package_imports():
    train = stage_modules("train")
    assert {"src/retrievers/train/splade.py", "src/retrievers/models/neobert.py", "src/retrievers/losses.py",
            "src/retrievers/config.py", "src/retrievers/__init__.py"} <= train
    assert "src/retrievers/release.py" not in train and "src/retrievers/cards/__init__.py" not in train
