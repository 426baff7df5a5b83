"""The model kinds: one module per kind, the one place that knows how that kind is built, loaded, encoded,
evaluated, indexed and described on its card.

- :mod:`retrievers.models.colbert`: PyLate ColBERT (ModernBERT-XTR), PLAID index.
- :mod:`retrievers.models.splade`: sentence-transformers SparseEncoder (NeoBERT-SPLADE), Seismic index.
- :mod:`retrievers.models.neobert`: the native NeoBERT architecture the SPLADE model runs on.
- :mod:`retrievers.models.sparse_inference`: SPLADE encoding without the tokens x vocabulary logits.

Code outside this package picks the module once, from a model's ``kind`` (params.yaml ``models.<m>.kind``,
a bundle's release.json) or a phase's ``recipe``, and calls it; it never branches on the kind itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from retrievers.errors import CLIError, ConfigError

KINDS = ("colbert", "splade")
RECIPE_KIND = {"xtr-contrastive": "colbert", "xtr-distillation": "colbert", "splade": "splade"}
EVALUATOR_KIND = {"pylate-nanobeir": "colbert", "sparse-nanobeir": "splade"}


def kind_module(kind: str) -> ModuleType:
    """The module of a kind (``colbert`` or ``splade``)."""
    from retrievers.models import colbert, splade  # static imports: the DVC dependency contract test follows them

    modules = {"colbert": colbert, "splade": splade}
    if kind not in modules:
        raise ConfigError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return modules[kind]


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


class SavesAsStock:
    """Mixin of this package's subclasses of the libraries' model classes (``packed``, ``sparse_inference``): saved
    folders name the stock class (``model_type`` in config_sentence_transformers.json), so the stock loaders load
    them as themselves; folders the stock class saved load into the subclass the same way."""

    stock_name: str

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._model_config["model_type"] = self.stock_name

    def _get_model_type(self, *args, **kwargs) -> str:
        found = super()._get_model_type(*args, **kwargs)  # type: ignore[misc]  # a SentenceTransformer method
        return type(self).__name__ if found == self.stock_name else found
