"""SPLADE on an MLM encoder with sentence-transformers' SparseEncoder trainer: the NeoBERT-SPLADE card's recipe.

SpladeLoss around SparseMultipleNegativesRankingLoss (or a soft-distillation loss on the teacher scores), an
explicit regularizer-weight schedule, triplets whose negatives are redrawn every epoch, and Muon for the hidden
2-D matrices with AdamW for the rest, handed to the trainer through ``optimizers=``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from retrievers.config import SpladePhase
from retrievers.models.splade import build_splade


def build_optimizer(model, phase: SpladePhase):
    """Muon for the transformer's hidden 2-D weight matrices, AdamW for everything else.

    ``torch.optim.Muon`` only takes 2-D parameters, and Muon is meant for hidden layers: the token embedding and
    the MLM decoder (vocabulary-sized) stay on AdamW, as do norms and biases (without weight decay)."""
    args = phase.args
    mlm = model[0].auto_model
    vocabulary_sized = {id(mlm.get_input_embeddings().weight), id(mlm.get_output_embeddings().weight)}
    muon, decayed, plain = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            plain.append(param)
        elif phase.muon is not None and param.ndim == 2 and id(param) not in vocabulary_sized:
            muon.append(param)
        else:
            decayed.append(param)
    adamw = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": args.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )
    if phase.muon is None:
        return adamw
    hidden = torch.optim.Muon(muon, lr=args.learning_rate, weight_decay=args.weight_decay, **phase.muon.model_dump())
    return MuonWithAdamW(hidden, adamw)


class MuonWithAdamW(torch.optim.Optimizer):
    """A Muon and an AdamW stepped as one optimizer, for the trainer's ``optimizers=(optimizer, None)``.

    Its ``param_groups`` are the two parts' own group dicts, so the trainer's learning-rate scheduler, which sets
    every ``group["lr"]``, drives both; ``state_dict`` holds both parts' states, so checkpoints resume."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.parts = (muon, adamw)
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.parts[0].state_dict(), "adamw": self.parts[1].state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.parts[0].load_state_dict(state_dict["muon"])
        self.parts[1].load_state_dict(state_dict["adamw"])
        self.param_groups = self.parts[0].param_groups + self.parts[1].param_groups


def epoch_callback(transform):
    """A TrainerCallback that tells the triplet transform which epoch is starting (negatives are redrawn)."""
    from transformers import TrainerCallback

    class TripletEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            # state.epoch is the float progress (e.g. 2.5 when resumed mid-epoch 2); epochs start at whole numbers.
            transform.epoch = math.floor((state.epoch or 0.0) + 1e-6)

    return TripletEpochCallback()


def build_loss(model, phase: SpladePhase):
    from sentence_transformers.sparse_encoder.losses import (
        SparseDistillKLDivLoss,
        SparseMarginMSELoss,
        SparseMultipleNegativesRankingLoss,
        SpladeLoss,
    )

    inner = {
        # In-batch negatives gather across processes under torchrun (DDP); the distillation losses need none.
        "mnrl": lambda: SparseMultipleNegativesRankingLoss(
            model=model, scale=1.0, gather_across_devices=phase.gather_across_devices
        ),
        "margin-mse": lambda: SparseMarginMSELoss(model=model),
        "distill-kldiv": lambda: SparseDistillKLDivLoss(model=model),
    }[phase.loss]()
    return SpladeLoss(
        model=model,
        loss=inner,
        query_regularizer_weight=phase.query_regularizer_weight,
        document_regularizer_weight=phase.document_regularizer_weight,
    )


def splade_trainer(phase: SpladePhase, init: Path, data: Path, args, seed: int):
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer
    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback

    from retrievers.data.kd import load_kd_tables, splade_triplets

    model = build_splade(init, phase.splade)
    tables = load_kd_tables(data, phase.teacher_scores)
    train, triplets = splade_triplets(
        tables, phase.n_negatives, seed, phase.max_train_samples, with_scores=phase.loss != "mnrl"
    )
    loss = build_loss(model, phase)
    # Explicit: without it the trainer silently adds the same callback with its own defaults.
    schedule = SpladeRegularizerWeightSchedulerCallback(loss=loss, warmup_ratio=phase.regularizer_warmup_ratio)
    trainer = SparseEncoderTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss=loss,
        callbacks=[schedule, epoch_callback(triplets)],
        optimizers=(build_optimizer(model, phase), None),  # type: ignore[arg-type]  # None: the trainer builds the lr scheduler
    )
    return model, trainer
