"""The two XTR phases on a PyLate ColBERT: contrastive on triplets, then distillation from teacher scores."""

from __future__ import annotations

from pathlib import Path

from retrievers.config import ColBERTConfig, SpeedConfig, XTRContrastivePhase, XTRDistillationPhase


def build_colbert(init: Path, colbert: ColBERTConfig, device: str | None = None, speed: SpeedConfig | None = None):
    """A PyLate ColBERT from a base encoder (adds the Dense head) or from a ColBERT checkpoint (keeps it).

    Prefixes are passed explicitly: PyLate treats ``None`` as its "[Q] "/"[D] " defaults. With ``speed``, the
    model is a ``retrievers.packed.PackedColBERT`` (same modules and saved files, faster document encoding)."""
    from pylate import models

    from retrievers.packed import PackedColBERT, with_speed

    cls = models.ColBERT if speed is None else PackedColBERT
    model = cls(
        model_name_or_path=str(init),
        embedding_size=colbert.embedding_size,
        query_length=colbert.query_length,
        document_length=colbert.document_length,
        query_prefix=colbert.query_prefix,
        document_prefix=colbert.document_prefix,
        attend_to_expansion_tokens=colbert.attend_to_expansion_tokens,
        device=device,
    )
    return model if speed is None else with_speed(model, speed)


def colbert_collator(model):
    """PyLate's collator, or its packed variant (documents padded to the batch's longest) for a PackedColBERT."""
    from pylate import utils

    from retrievers.packed import PackedColBERT, PackedColBERTCollator

    if isinstance(model, PackedColBERT) and model.speed.documents_to_longest:
        return PackedColBERTCollator(model.tokenize)
    return utils.ColBERTCollator(model.tokenize)


def contrastive_trainer(phase: XTRContrastivePhase, init: Path, data: Path, args):
    from datasets import load_dataset
    from pylate import scores
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.losses import LearnableTemperatureContrastive

    model = build_colbert(init, phase.colbert, speed=phase.speed)
    train = load_dataset(str(data), split="train")
    missing = {"query", "positive", "negative"} - set(train.column_names)
    if missing:
        raise ValueError(f"{data}: triplets need columns query, positive, negative; missing {sorted(missing)}")
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
        model=model, args=args, train_dataset=train, loss=loss, data_collator=colbert_collator(model)
    )
    return model, trainer


def distillation_trainer(phase: XTRDistillationPhase, init: Path, data: Path, args):
    from pylate import scores
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.data.kd import kd_training_dataset, load_kd_tables
    from retrievers.losses import LearnableTemperatureDistillation

    model = build_colbert(init, phase.colbert, speed=phase.speed)
    tables = load_kd_tables(data, phase.teacher_scores)
    train = kd_training_dataset(tables, phase.n_ways, phase.max_train_samples)
    loss = LearnableTemperatureDistillation(
        model=model,
        score_metric=scores.XTRKDScores(k=phase.k_train),
        temperature=phase.temperature,
        learnable=phase.learnable_temperature,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=loss, data_collator=colbert_collator(model)
    )
    return model, trainer
