"""The two XTR phases on a PyLate ColBERT: contrastive on triplets, then distillation from teacher scores."""

from __future__ import annotations

from pathlib import Path

from retrievers.config import XTRContrastivePhase, XTRDistillationPhase
from retrievers.models.colbert import build_colbert


def contrastive_trainer(phase: XTRContrastivePhase, init: Path, data: Path, args):
    from datasets import load_dataset
    from pylate import scores, utils
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.losses import LearnableTemperatureContrastive

    model = build_colbert(init, phase.colbert)
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
