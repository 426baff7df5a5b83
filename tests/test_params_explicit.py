"""Every recipe value lives in params.yaml: config.py gives no default to a field that can change a trained model,
a metric or the data read, so a change to config.py cannot change a result unseen (and a recipe that leaves a
value out fails at load)."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from retrievers.config import Params, load_params, parse_params
from retrievers.profile import profile_params

from .conftest import REPO

# The defaults config.py may keep, each because it cannot change what is trained, evaluated or released.
NOT_RECIPE = {
    "HubRepo.allow_patterns": "which files of the pinned revision are fetched; data/<key>'s DVC hash covers it",
    "LocalFolder.sha256": "a check that the folder is the one DVC saw",
    "Source.hub": "one of hub / local / members is set (validated); the others are absent",
    "Source.local": "as Source.hub",
    "Source.members": "as Source.hub",
    "ReleaseConfig.hub": "publication of the verified bundle, not its content",
    "HubPushConfig.push": "as ReleaseConfig.hub",
    "HubPushConfig.tag": "as ReleaseConfig.hub",
    "HubPushConfig.dry_run": "as ReleaseConfig.hub",
    "HubPushConfig.force": "as ReleaseConfig.hub",
    "TrainerArgs.save_total_limit": "how many trainer checkpoints stay on disk",
    "Params.tracking": "MLflow experiment names",
    "TrackingConfig.experiment_prefix": "MLflow experiment names",
}


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]  # unions, dict/list, Literal


def defaulted_fields(root: type[BaseModel]) -> set[str]:
    """'Class.field' for every field with a default in ``root`` and the models its fields hold, recursively."""
    seen: set[type[BaseModel]] = set()
    found: set[str] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.is_required():
                found.add(f"{model.__name__}.{name}")
            todo += _models_in(field.annotation)
    return found


def test_config_gives_no_default_to_a_recipe_value():
    extra = sorted(defaulted_fields(Params) - set(NOT_RECIPE))
    assert not extra, f"config.py defaults recipe values; make them required and write them into params.yaml: {extra}"
    assert set(NOT_RECIPE) <= defaulted_fields(Params), "an allow-list entry names no defaulted field: drop it"


def test_the_walk_finds_defaults_in_nested_and_union_models():
    class Inner(BaseModel):
        kept: int = 1

    class Other(BaseModel):
        needed: int

    class Outer(BaseModel):
        by_name: dict[str, Inner | Other]
        listed: list[Other] | None = None

    assert defaulted_fields(Outer) == {"Inner.kept", "Outer.listed"}


def test_params_yaml_and_the_smoke_profile_validate():
    assert load_params(REPO / "params.yaml").profile == "published"
    assert parse_params(profile_params(REPO, "smoke")).profile == "smoke"
