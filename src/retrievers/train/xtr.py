"""The two XTR phases on a PyLate ColBERT: contrastive on triplets, then distillation from teacher scores."""

from __future__ import annotations

from pathlib import Path

from retrievers.config import XTRContrastivePhase, XTRDistillationPhase
from retrievers.models.colbert import build_colbert, colbert_collator, pretokenized_kd_collator


def contrastive_trainer(phase: XTRContrastivePhase, init: Path, data: Path, args):
    from pylate import losses, scores
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.data.local import load_split
    from retrievers.data.validate import check_triplets
    from retrievers.losses import register_temperature

    if phase.speed.pretokenized:
        from retrievers.errors import ConfigError

        raise ConfigError("speed.pretokenized is for the KD recipes (token caches of the queries and documents "
                          "tables); set it to false for the xtr-contrastive phase in params.yaml")
    train = load_split(data, "default", "train")  # the files DVC hashed
    check_triplets(train.data.table, f"{data} (triplets)")
    train = train.select_columns(["query", "positive", "negative"])
    speed = phase.speed
    if phase.gather_across_devices and phase.nproc_per_node > 1 and speed.documents_to_longest:
        # Gathering the documents of every rank needs one width on all of them: PyLate's document_length.
        speed = speed.model_copy(update={"documents_to_longest": False})
    model = build_colbert(init, phase.colbert, speed=speed)
    if phase.max_train_samples is not None:
        train = train.select(range(min(phase.max_train_samples, len(train))))
    loss = losses.Contrastive(
        model=model,
        score_metric=scores.XTRScores(k=phase.k_train),
        # A Parameter where PyLate declares a float: the fork passes its learnable temperature the same way.
        temperature=register_temperature(model, phase.temperature, phase.learnable_temperature),  # type: ignore[arg-type]
        gather_across_devices=phase.gather_across_devices,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=loss, data_collator=colbert_collator(model, phase.k_train)
    )
    return model, trainer


def distillation_trainer(phase: XTRDistillationPhase, init: Path, data: Path, args):
    from pylate import scores
    from sentence_transformers import SentenceTransformerTrainer

    from retrievers.data.kd import kd_training_dataset, load_kd_tables
    from retrievers.data.tokens import cache_root
    from retrievers.losses import TemperatureDistillation, register_temperature

    tables = load_kd_tables(data, phase.teacher_scores)
    model = build_colbert(init, phase.colbert, speed=phase.speed)
    train = kd_training_dataset(tables, phase.n_ways, phase.max_train_samples, texts=not phase.speed.pretokenized)
    loss = TemperatureDistillation(
        model=model,
        score_metric=scores.XTRKDScores(k=phase.k_train),
        temperature=register_temperature(model, phase.temperature, phase.learnable_temperature),
        minmax_normalize_scores=phase.minmax_normalize_scores,
    )
    if phase.speed.pretokenized:
        collator = pretokenized_kd_collator(model, tables, cache_root(args.output_dir), phase.k_train)
    else:
        collator = colbert_collator(model, phase.k_train)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss, data_collator=collator)
    return model, trainer
