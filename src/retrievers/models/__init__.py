"""The model kinds: one module per kind, the one place that knows how that kind is built, loaded, encoded,
evaluated, indexed and described on its card.

- :mod:`retrievers.models.colbert`: PyLate ColBERT (ModernBERT-XTR), PLAID index.
- :mod:`retrievers.models.splade`: sentence-transformers SparseEncoder (NeoBERT-SPLADE), Seismic index.
- :mod:`retrievers.models.neobert`: the native NeoBERT architecture the SPLADE model runs on.

Code outside this package picks the module once, from a model's ``kind`` (params.yaml ``models.<m>.kind``,
a bundle's release.json) or a phase's ``recipe``, and calls it; it never branches on the kind itself.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from retrievers.errors import CLIError

KINDS = ("colbert", "splade")
RECIPE_KIND = {"xtr-contrastive": "colbert", "xtr-distillation": "colbert", "splade": "splade"}
EVALUATOR_KIND = {"pylate-nanobeir": "colbert", "sparse-nanobeir": "splade"}


def kind_module(kind: str) -> ModuleType:
    """The module of a kind (``colbert`` or ``splade``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return importlib.import_module(f"retrievers.models.{kind}")


def for_model(config) -> ModuleType:
    """The kind module of a ``models.<m>`` entry of params.yaml."""
    return kind_module(config.kind)


def for_phase(phase) -> ModuleType:
    """The kind module of a ``phases.<p>`` entry of params.yaml (from its recipe)."""
    return kind_module(RECIPE_KIND[phase.recipe])


def for_evaluation(evaluation) -> ModuleType:
    """The kind module whose evaluator a ``models.<m>.evaluation`` entry names."""
    return kind_module(EVALUATOR_KIND[evaluation.evaluator])


def folder_kind(folder: Path) -> str:
    """The kind of a model folder: from the bundle's release.json, or else its sentence-transformers modules."""
    release = folder / "release.json"
    if release.exists():
        return json.loads(release.read_text())["kind"]
    modules = folder / "modules.json"
    if not modules.exists():
        raise CLIError(f"{folder} is not a retriever model folder (no release.json or modules.json)")
    text = modules.read_text()
    return next((kind for kind in KINDS if kind_module(kind).recognises(text)), "colbert")


def for_folder(folder: Path) -> ModuleType:
    return kind_module(folder_kind(folder))
