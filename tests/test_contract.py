"""dvc.yaml, params.yaml and stages/*.py agree: every stage runs its own script with a key that exists,
declares params that exist, and depends only on repository files or other stages' outputs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from .conftest import REPO


@pytest.fixture(scope="module")
def stages():
    with Repo(str(REPO)) as repo:
        return list(repo.index.stages)


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def test_each_stage_runs_its_own_thin_script(stages):
    scripts = {p.stem for p in (REPO / "stages").glob("*.py")}
    used = set()
    for stage in stages:
        group, _, key = stage.name.partition("@")
        assert stage.cmd == f"python stages/{group}.py {key}", stage.name
        assert group in scripts, f"{stage.name}: stages/{group}.py missing"
        assert f"stages/{group}.py" in {str(d.def_path) for d in stage.deps}, f"{stage.name} must depend on its script"
        used.add(group)
    assert used == scripts, f"scripts no stage runs: {scripts - used}"


def test_stage_scripts_only_parse_the_key_and_call_the_library(stages):
    for script in (REPO / "stages").glob("*.py"):
        tree = ast.parse(script.read_text())
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert [i.module for i in imports] == ["retrievers.pipeline"], script.name
        assert {a.name for a in imports[0].names} == {script.stem, "stage_main"}, script.name
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body), script.name


def test_declared_params_exist(stages, params):
    for stage in stages:
        for dep in stage.deps:
            if getattr(dep, "params", None) is None:
                continue
            for name in dep.params:
                _lookup(params, name)  # KeyError names the missing param


def test_deps_are_repository_files_or_outputs_of_earlier_stages(stages):
    outputs = {str(o.def_path) for s in stages for o in s.outs}
    for stage in stages:
        for dep in stage.deps:
            if getattr(dep, "params", None) is not None:
                continue
            path = str(dep.def_path)
            assert (REPO / path).exists() or path in outputs, f"{stage.name}: dependency {path} comes from nowhere"


def test_stage_keys_cover_params(stages, params):
    names = {s.name for s in stages}
    for key in params["sources"]:
        assert f"download@{key}" in names
    for key in params["phases"]:
        assert f"train@{key}" in names
    for key in params["models"]:
        assert {f"evaluate@{key}", f"card@{key}", f"release@{key}"} <= names


def test_library_entry_points_exist():
    import retrievers.pipeline as pipeline

    for script in (REPO / "stages").glob("*.py"):
        assert callable(getattr(pipeline, script.stem)), script.stem
    assert Path(pipeline.__file__).name == "pipeline.py"
