"""retrievers: reproducible training, evaluation and release of ModernBERT-XTR and NeoBERT-SPLADE."""

__version__ = "0.1.0"
