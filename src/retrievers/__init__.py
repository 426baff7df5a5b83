"""retrievers: reproducible training, evaluation and release of ModernBERT-XTR and NeoBERT-SPLADE."""

from retrievers.neobert import register as _register_neobert

__version__ = "0.1.0"

_register_neobert()  # native NeoBERT for AutoConfig/AutoModel/AutoModelForMaskedLM (model_type "neobert")
