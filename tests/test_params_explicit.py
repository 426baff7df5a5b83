"""Every recipe value lives in params.yaml: no phase or model of the published recipes takes a value that changes
its result from a default in config.py (so a change to config.py's defaults cannot change a result unseen)."""

from __future__ import annotations

from pydantic import BaseModel

from retrievers.config import load_params
from retrievers.profile import profile_params

from .conftest import REPO

# Fields whose value does not change what is trained, evaluated or released.
NOT_RECIPE = {"args.save_total_limit", "reference.allow_patterns", "release.hub.dry_run", "release.hub.force"}


def _defaulted(obj: BaseModel, prefix: str = "") -> list[str]:
    out = []
    for name in type(obj).model_fields:
        value, path = getattr(obj, name), f"{prefix}{name}"
        if name not in obj.model_fields_set:
            out.append(path)
        elif isinstance(value, BaseModel):
            out += _defaulted(value, f"{path}.")
    return [p for p in out if p not in NOT_RECIPE]


def test_published_recipes_set_every_value_in_params_yaml():
    params = load_params(REPO / "params.yaml")
    defaulted = {f"phases.{k}": d for k, phase in params.phases.items() if (d := _defaulted(phase))}
    defaulted |= {f"models.{k}": d for k, m in params.models.items() if (d := _defaulted(m))}
    assert not defaulted, f"recipe values taken from config.py defaults; write them into params.yaml: {defaulted}"


def test_the_smoke_profile_still_validates():
    from retrievers.config import parse_params

    assert parse_params(profile_params(REPO, "smoke")).profile == "smoke"
