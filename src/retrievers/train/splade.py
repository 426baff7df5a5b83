"""SPLADE on an MLM encoder with sentence-transformers' SparseEncoder trainer."""

from __future__ import annotations

from pathlib import Path

from retrievers.config import SpladeConfig, SpladePhase


def build_splade(init: Path, splade: SpladeConfig):
    """MLMTransformer + SpladePooling over a masked-language model (or reload a saved SparseEncoder)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    if (init / "modules.json").exists():
        return SparseEncoder(str(init))
    mlm = MLMTransformer(str(init), max_seq_length=splade.max_seq_length)
    pooling = SpladePooling(
        pooling_strategy=splade.pooling_strategy,
        activation_function=splade.activation_function,
        word_embedding_dimension=mlm.get_sentence_embedding_dimension(),
    )
    return SparseEncoder(modules=[mlm, pooling])


def splade_trainer(phase: SpladePhase, init: Path, data: Path, args, seed: int):
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer
    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    from retrievers.data.kd import load_kd_tables, splade_triplets

    model = build_splade(init, phase.splade)
    tables = load_kd_tables(data, phase.teacher_scores)
    train = splade_triplets(tables, phase.n_negatives, seed, phase.max_train_samples)
    loss = SpladeLoss(
        model=model,
        loss=SparseMultipleNegativesRankingLoss(
            model=model, scale=1.0, gather_across_devices=phase.gather_across_devices
        ),
        query_regularizer_weight=phase.query_regularizer_weight,
        document_regularizer_weight=phase.document_regularizer_weight,
    )
    # Explicit: without it the trainer silently adds the same callback with its own defaults.
    schedule = SpladeRegularizerWeightSchedulerCallback(loss=loss, warmup_ratio=phase.regularizer_warmup_ratio)
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=train, loss=loss, callbacks=[schedule])
    return model, trainer
