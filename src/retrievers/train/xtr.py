"""The two XTR phases on a PyLate ColBERT: contrastive on triplets, then distillation from teacher scores."""

from __future__ import annotations

from pathlib import Path

from retrievers.config import ColBERTConfig, XTRContrastivePhase, XTRDistillationPhase


def build_colbert(init: Path, colbert: ColBERTConfig, device: str | None = None):
    """A PyLate ColBERT from a base encoder (adds the Dense head) or from a ColBERT checkpoint (keeps it).

    Prefixes are passed explicitly: PyLate treats ``None`` as its "[Q] "/"[D] " defaults."""
    from pylate import models

    return models.ColBERT(
        model_name_or_path=str(init),
        embedding_size=colbert.embedding_size,
        query_length=colbert.query_length,
        document_length=colbert.document_length,
        query_prefix=colbert.query_prefix,
        document_prefix=colbert.document_prefix,
        attend_to_expansion_tokens=colbert.attend_to_expansion_tokens,
        device=device,
    )


def contrastive_trainer(phase: XTRContrastivePhase, init: Path, data: Path, args):
    from pylate import scores, utils
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.data.local import load_split
    from retrievers.losses import LearnableTemperatureContrastive

    model = build_colbert(init, phase.colbert)
    train = load_split(data, "default", "train", ["query", "positive", "negative"])  # the files DVC hashed
    if phase.max_train_samples is not None:
        train = train.select(range(min(phase.max_train_samples, len(train))))
    loss = LearnableTemperatureContrastive(
        model=model,
        score_metric=scores.XTRScores(k=phase.k_train),
        temperature=phase.temperature,
        learnable=phase.learnable_temperature,
        gather_across_devices=phase.gather_across_devices,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=loss, data_collator=utils.ColBERTCollator(model.tokenize)
    )
    return model, trainer


def distillation_trainer(phase: XTRDistillationPhase, init: Path, data: Path, args):
    from pylate import scores, utils
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.data.kd import kd_training_dataset, load_kd_tables
    from retrievers.losses import LearnableTemperatureDistillation

    model = build_colbert(init, phase.colbert)
    tables = load_kd_tables(data, phase.teacher_scores)
    train = kd_training_dataset(tables, phase.n_ways, phase.max_train_samples)
    loss = LearnableTemperatureDistillation(
        model=model,
        score_metric=scores.XTRKDScores(k=phase.k_train),
        temperature=phase.temperature,
        learnable=phase.learnable_temperature,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=loss, data_collator=utils.ColBERTCollator(model.tokenize)
    )
    return model, trainer
