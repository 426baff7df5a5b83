"""retrievers: reproducible training, evaluation and release of ModernBERT-XTR and NeoBERT-SPLADE."""

import wrapt

__version__ = "0.1.0"


def _load_neobert(_transformers: object) -> None:
    import retrievers.models.neobert  # noqa: F401  (registers itself with the Auto classes on import)


# Native NeoBERT for AutoConfig/AutoModel/AutoModelForMaskedLM (model_type "neobert"), registered as soon as
# transformers is imported (at once if it already is). Deferred so that `import retrievers` stays cheap for
# the stages and commands that never load a model.
wrapt.register_post_import_hook(_load_neobert, "transformers")
