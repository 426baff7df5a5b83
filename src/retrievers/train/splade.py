"""SPLADE on an MLM encoder with sentence-transformers' SparseEncoder trainer: NeoBERT-SPLADE as its author ran it.

Read from drexalt/sparsecity ``st_splade_train.py`` at b80f2b8e3eafeccb49c7503139301edf4649fb3f (the script), with
the published card's values where the card states them (params.yaml cites each): SpladeLoss around
SparseMultipleNegativesRankingLoss with a quadratic regulariser ramp; heavyball's ``ForeachMuon`` over every
parameter in the script's two weight-decay groups with ``transformers.get_wsd_schedule``, both handed to the trainer
through ``optimizers=``; a seeded split of the first rows into training and evaluation rows; the positive and a
negative drawn per row by a collator whose RNG is reseeded with seed + epoch; ``SparseNanoBEIREvaluator`` during
training and the best checkpoint kept.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

from retrievers.config import SpladePhase, WSDSchedule
from retrievers.models.splade import build_splade

# st_splade_train.py@b80f2b8: `no_decay = ["bias", "LayerNorm.weight"]`, matched as substrings of the parameter
# names. On NeoBERT (norms named `attention_norm`, `ffn_norm`, `layer_norm`; no biases but the MLM decoder's) it
# selects `decoder.bias` alone; every other parameter, norms included, gets the weight decay.
NO_DECAY_NAME_PARTS = ("bias", "LayerNorm.weight")


# ------------------------------------------------------------------------------------------------ optimizer
def weight_decay_groups(model, weight_decay: float) -> list[dict]:
    """The script's two parameter groups: every parameter whose name contains none of ``NO_DECAY_NAME_PARTS`` at
    ``weight_decay``, the others at 0 (all parameters, as the script lists them)."""
    named = list(model.named_parameters())
    plain = [p for n, p in named if any(part in n for part in NO_DECAY_NAME_PARTS)]
    decayed = [p for n, p in named if not any(part in n for part in NO_DECAY_NAME_PARTS)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model, phase: SpladePhase) -> torch.optim.Optimizer:
    """``heavyball-muon`` (the author's): ``heavyball.ForeachMuon`` at lr and weight decay from ``args``, library
    defaults otherwise. ``torch-muon-adamw``: torch's Muon on the hidden 2-D matrices + AdamW. ``adamw``."""
    args = phase.args
    if phase.optimizer == "heavyball-muon":
        import heavyball

        set_heavyball_compile(phase.heavyball_compile)
        return resumable(heavyball.ForeachMuon)(
            weight_decay_groups(model, args.weight_decay), lr=args.learning_rate, weight_decay=args.weight_decay
        )
    mlm = model[0].auto_model
    vocabulary_sized = {id(mlm.get_input_embeddings().weight), id(mlm.get_output_embeddings().weight)}
    muon, decayed, plain = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            plain.append(param)
        elif phase.optimizer == "torch-muon-adamw" and id(param) not in vocabulary_sized:
            muon.append(param)
        else:
            decayed.append(param)
    adamw = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": args.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )
    if phase.optimizer == "adamw":
        return adamw
    hidden = torch.optim.Muon(muon, lr=args.learning_rate, weight_decay=args.weight_decay, **phase.muon.model_dump())
    return MuonWithAdamW(hidden, adamw)


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))


def resumable(optimizer_cls: type) -> type:
    """``optimizer_cls`` (a heavyball optimizer) with a ``state_dict`` that ``torch.load(weights_only=True)`` reads,
    as the trainer does when it resumes from a checkpoint. heavyball 1.5.3 keeps construction-time values in every
    param group (its ``use_default`` sentinel objects and ``__class__``), which its step never reads and the
    weights-only unpickler refuses; they are left out of the saved groups and kept from the live ones on load.
    The update itself is the library's (``step`` is not overridden)."""

    class Resumable(optimizer_cls):
        def state_dict(self):
            state = super().state_dict()
            state["param_groups"] = [{k: v for k, v in g.items() if _plain(v)} for g in state["param_groups"]]
            return state

        def load_state_dict(self, state_dict) -> None:
            live = [{k: v for k, v in g.items() if not _plain(v)} for g in self.param_groups]
            super().load_state_dict(state_dict)
            for group, extra in zip(self.param_groups, live, strict=True):
                for key, value in extra.items():
                    group.setdefault(key, value)

    Resumable.__name__ = Resumable.__qualname__ = f"Resumable{optimizer_cls.__name__}"
    return Resumable


_HEAVYBALL_COMPILE_MODE: list[str | None] = []


def set_heavyball_compile(enabled: bool) -> None:
    """heavyball compiles its update functions with ``torch.compile`` (module setting ``heavyball.utils.compile_mode``,
    default "max-autotune-no-cudagraphs"); ``False`` runs them eagerly (saves minutes of inductor compiles on CPU)."""
    import heavyball.utils

    if not _HEAVYBALL_COMPILE_MODE:
        _HEAVYBALL_COMPILE_MODE.append(heavyball.utils.compile_mode)
    heavyball.utils.compile_mode = _HEAVYBALL_COMPILE_MODE[0] if enabled else None


class MuonWithAdamW(torch.optim.Optimizer):
    """A Muon and an AdamW stepped as one optimizer, for the trainer's ``optimizers=(optimizer, scheduler)``.

    Its ``param_groups`` are the two parts' own group dicts, so the learning-rate scheduler, which sets every
    ``group["lr"]``, drives both; ``state_dict`` holds both parts' states, so checkpoints resume."""

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


# ------------------------------------------------------------------------------------------------- schedule
def total_optimizer_updates(train_rows: int, args) -> int:
    """The optimizer updates the schedule spans, computed as the script computes them:
    ceil(ceil(rows / per-device batch) / accumulation) per epoch, times the epochs (``max_steps`` when set)."""
    if args.max_steps > 0:
        return args.max_steps
    steps_per_epoch = math.ceil(train_rows / args.per_device_train_batch_size)
    return math.ceil(steps_per_epoch / args.gradient_accumulation_steps) * math.ceil(args.num_train_epochs)


def wsd_scheduler(optimizer, total_updates: int, schedule: WSDSchedule):
    """``transformers.get_wsd_schedule`` with the script's rounding of the warmup and decay lengths."""
    from transformers import get_wsd_schedule

    return get_wsd_schedule(
        optimizer,
        num_training_steps=total_updates,
        num_warmup_steps=round(total_updates * schedule.warmup_ratio),
        num_decay_steps=round(total_updates * schedule.decay_ratio),
        min_lr_ratio=schedule.min_lr_ratio,
    )


# ------------------------------------------------------------------------------------------- data, sampling
def draw_positive_and_negatives(scores: Sequence[float], rng: random.Random, n_negatives: int) -> tuple[int, list[int]]:
    """(index of the positive, indices of the negatives) among one row's kept documents, as the script's
    ``RandomNegativesCollator`` draws them: the positive is the first highest teacher score; the negatives are
    ``rng.sample`` of the other documents (in their order), with replacement only when too few remain.

    This is the one place the triplet draw lives: ``rng`` is the collator's, advanced row after row."""
    positive = max(range(len(scores)), key=lambda i: scores[i])
    pool = [i for i in range(len(scores)) if i != positive]
    if n_negatives <= len(pool):
        picks = rng.sample(range(len(pool)), n_negatives)
    else:
        picks = [rng.randrange(len(pool)) for _ in range(n_negatives)]
    return positive, [pool[i] for i in picks]


@dataclass
class KDTripletCollator(SparseEncoderDataCollator):
    """The trainer's collator: KD rows (query_id, document_ids, scores, positions) -> (query, positive,
    negative_1..n, label) texts, tokenised by the base collator. ``label`` holds the teacher scores of the positive
    and the negatives (what the soft-distillation losses read; SparseMultipleNegativesRankingLoss ignores it).

    Its RNG is ``random.Random(seed)`` until ``set_epoch_seed`` reseeds it (``KDTripletEpochCallback``, at every
    epoch start, with seed + epoch). Dataloader workers each get a copy, as they did of the script's collator.

    Without dataloader workers (``workers`` 0) the draws are the script's: one RNG, row after row, batch after
    batch. Resuming mid-epoch: the trainer skips the epoch's first batches without collating them, so the RNG would
    not have advanced past their draws. ``checkpoint_state`` (saved with every checkpoint) keeps the RNG state before
    each of the epoch's last two training batches and the state now; ``resume_from`` starts the resumed epoch's
    next batch from the state before it, and the one after from the state after it. Two, because the dataloader
    collates one batch ahead, and an in-training evaluation (whose rows this collator also draws for) runs between
    that batch's draw and the save. Evaluation batches are not counted (``evaluating``, set by the epoch callback).

    With dataloader workers (``workers`` > 0: the trainer's ``dataloader_num_workers``) the draws happen in the
    workers' copies of the collator, which no checkpoint sees. Each row's draw is then a pure function of the epoch
    seed and the row (``random.Random("<epoch seed>:<query position>")``): the same whichever worker draws it and
    whatever was drawn before, for any number of workers, so a resumed epoch's remaining batches get the draws of
    the uninterrupted run; only the epoch's seed is restored (``checkpoint_state``). (The script's workers each
    advance their own copy of one RNG, which makes its draws depend on the number of workers.)"""

    tables: Any = None
    n_negatives: int = 1
    seed: int = 0
    workers: int = 0  # the dataloader workers that draw (0: this process, from ``rng``)
    epoch_seed: int = 0  # what ``rng`` was last seeded with
    rng: random.Random = field(default_factory=random.Random, repr=False)
    evaluating: bool = False
    batches: int = 0  # training batches drawn since the last reseed
    states_before: dict = field(default_factory=dict, repr=False)  # batch number -> RNG state before its draw
    resumed_states: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.epoch_seed = self.seed
        self.rng = random.Random(self.seed)

    def set_epoch_seed(self, epoch_seed: int) -> None:
        self.epoch_seed = epoch_seed
        self.rng = random.Random(epoch_seed)
        self.batches, self.states_before, self.resumed_states = 0, {}, []

    def checkpoint_state(self) -> dict:
        return {"batches": self.batches, "states_before": dict(self.states_before), "state": self.rng.getstate(),
                "epoch_seed": self.epoch_seed}

    def resume_from(self, saved: dict, skipped_batches: int) -> None:
        """Continue the epoch after ``skipped_batches`` training batches as an uninterrupted run would."""
        import logging

        if skipped_batches == 0:  # the resumed run starts an epoch: its reseed already holds
            return
        if self.workers:  # every draw is pure; the epoch's seed is the one it started with (the reseed callback's
            self.epoch_seed = saved["epoch_seed"]  # int(state.epoch) there can be below the epoch's number)
            return
        if saved["batches"] not in (skipped_batches, skipped_batches + 1):
            logging.getLogger(__name__).warning(
                "the collator drew %d batches before the checkpoint, not %d (dataloader workers draw in copies of "
                "it): the resumed epoch's remaining negatives are drawn afresh", saved["batches"], skipped_batches)
            return
        self.batches = skipped_batches
        if saved["batches"] == skipped_batches:  # nothing drawn ahead (the epoch's iterator had ended)
            self.resumed_states = [saved["state"]]
        else:
            self.resumed_states = [saved["states_before"][skipped_batches + 1], saved["state"]]

    def _next_training_batch(self) -> None:
        self.batches += 1
        if self.resumed_states:
            self.rng.setstate(self.resumed_states.pop(0))
        self.states_before[self.batches] = self.rng.getstate()
        self.states_before.pop(self.batches - 2, None)

    def draw(self, features: list[dict]) -> tuple[list[int], list[int], list[list[int]], list[list[float]]]:
        """The batch's draw: query, positive and negative positions in the KD tables and the teacher labels, from the
        collator's RNG (advanced, and its state recorded for resume, once per training batch), or in dataloader
        workers from each row's own RNG."""
        if not self.workers and not self.evaluating:
            self._next_training_batch()
        queries, positives = [], []
        negatives: list[list[int]] = [[] for _ in range(self.n_negatives)]
        labels = []
        for row in features:
            scores, documents = row["scores"], row["positions"]["documents"]
            rng = self.rng if not self.workers else random.Random(f"{self.epoch_seed}:{row['positions']['query']}")
            best, drawn = draw_positive_and_negatives(scores, rng, self.n_negatives)
            queries.append(row["positions"]["query"])
            positives.append(documents[best])
            for slot, index in zip(negatives, drawn, strict=True):
                slot.append(documents[index])
            labels.append([float(scores[best])] + [float(scores[i]) for i in drawn])
        return queries, positives, negatives, labels

    def __call__(self, features: list[dict]) -> dict:
        from retrievers.data.kd import texts_at

        queries, positives, negatives, labels = self.draw(features)
        columns = {"query": texts_at(self.tables.queries, queries),
                   "positive": texts_at(self.tables.documents, positives)}
        for i, slot in enumerate(negatives, start=1):
            columns[f"negative_{i}"] = texts_at(self.tables.documents, slot)
        rows = [{name: values[i] for name, values in columns.items()} | {"label": labels[i]}
                for i in range(len(features))]
        return super().__call__(rows)


@dataclass
class PretokenizedKDTripletCollator(KDTripletCollator):
    """``KDTripletCollator``'s batch from token caches of the KD tables (``retrievers.data.tokens``): the same draw
    from the same RNG, then each column's ids padded to its longest, as ``SparseEncoderDataCollator`` pads the
    texts it tokenises. Without prompts or a router mapping only (``splade_trainer`` checks)."""

    queries: Any = None  # TokenCache
    documents: Any = None  # TokenCache
    plan: Any = None  # TokenPlan (the MLMTransformer's max_seq_length, no prefix)

    def __call__(self, features: list[dict]) -> dict:
        from retrievers.data.tokens import pad_rows

        queries, positives, negatives, labels = self.draw(features)
        batch: dict = {"label": torch.tensor(labels)}
        columns = [("query", self.queries, queries), ("positive", self.documents, positives)]
        columns += [(f"negative_{i}", self.documents, slot) for i, slot in enumerate(negatives, start=1)]
        for name, cache, rows in columns:
            batch |= {f"{name}_{key}": value for key, value in pad_rows(cache, rows, self.plan).items()}
        return batch


def epoch_callback(collator: KDTripletCollator, seed: int):
    """A TrainerCallback that reseeds the collator's RNG with seed + epoch at every epoch start (the script's
    ``RandomNegativesReseedCallback``: ``int(state.epoch or 0)``)."""
    from transformers import TrainerCallback

    class KDTripletEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            collator.set_epoch_seed(seed + int(state.epoch or 0))

        def on_step_end(self, args, state, control, **kwargs):  # after the trainer's own flow callback decided
            collator.evaluating = bool(control.should_evaluate)

        def on_evaluate(self, args, state, control, **kwargs):
            collator.evaluating = False

    return KDTripletEpochCallback()


def pretokenized_collator(model, tables, arguments: dict, cache: Path) -> PretokenizedKDTripletCollator:
    """A ``PretokenizedKDTripletCollator`` over caches of the KD tables (built on first use in ``cache``)."""
    from retrievers.data.tokens import plan_for, token_cache
    from retrievers.errors import ConfigError

    if arguments["prompts"] or arguments["router_mapping"]:
        raise ConfigError("speed.pretokenized: the pre-tokenised SPLADE collator takes no prompts or router_mapping; "
                          "set speed.pretokenized: false in params.yaml")
    module, tokenizer = model[0], model.tokenizer
    plan = plan_for(module, tokenizer, module.max_seq_length, None)
    queries = token_cache(tables.queries, tokenizer, plan, tables.queries._fingerprint, cache)
    documents = token_cache(tables.documents, tokenizer, plan, tables.documents._fingerprint, cache)
    return PretokenizedKDTripletCollator(**arguments, queries=queries, documents=documents, plan=plan)


# -------------------------------------------------------------------------------------------------- loss
def regularizer_schedule(loss, scheduler_type, warmup_ratio):
    """sentence-transformers' ``SpladeRegularizerWeightSchedulerCallback``, which sets the regulariser weights at
    every step's start, also set at the start of a resumed run as the step before it left them: a run resumed from
    its last checkpoint takes no step, and would otherwise end (and record) the weights as 0."""
    import copy

    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback

    class ResumableRegularizerSchedule(SpladeRegularizerWeightSchedulerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if state.global_step > 0:
                before = copy.copy(state)
                before.global_step = state.global_step - 1
                self.on_step_begin(args, before, control, **kwargs)

    return ResumableRegularizerSchedule(loss=loss, scheduler_type=scheduler_type, warmup_ratio=warmup_ratio)


def build_loss(model, phase: SpladePhase):
    from sentence_transformers.sparse_encoder.losses import (
        SparseDistillKLDivLoss,
        SparseMarginMSELoss,
        SparseMultipleNegativesRankingLoss,
        SpladeLoss,
    )

    inner = {
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


# ------------------------------------------------------------------------------------------------ trainer
def splade_trainer(phase: SpladePhase, init: Path, data: Path, args, seed: int, eval_data: Path | None = None):
    """(model, trainer); ``eval_data``: the folder of ``phase.eval_data`` (the in-training evaluator's sets)."""
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer

    from retrievers.data.kd import kd_rows, load_kd_tables
    from retrievers.data.tokens import cache_root

    tables = load_kd_tables(data, phase.teacher_scores)
    model = build_splade(init, phase.splade, phase.speed)
    train, held_out = kd_rows(tables, phase.kept_documents, seed, phase.max_train_samples, phase.eval_samples)
    loss = build_loss(model, phase)
    # Explicit: without it the trainer silently adds the same callback with its own defaults (linear, 1/3).
    schedule = regularizer_schedule(
        loss=loss, scheduler_type=phase.regularizer_schedule, warmup_ratio=phase.regularizer_warmup_ratio
    )
    collator_arguments: dict[str, Any] = dict(
        tokenize_fn=model.tokenize,
        tables=tables,
        n_negatives=phase.n_negatives,
        seed=seed,
        workers=args.dataloader_num_workers,
        router_mapping=args.router_mapping,
        prompts=args.prompts,
        all_special_ids=set(model.tokenizer.all_special_ids),
    )
    collator = (pretokenized_collator(model, tables, collator_arguments, cache_root(args.output_dir))
                if phase.speed.pretokenized
                else KDTripletCollator(**collator_arguments))
    optimizer = build_optimizer(model, phase)
    scheduler = None  # None: the trainer builds args.lr_scheduler_type's
    if phase.lr_schedule is not None:
        scheduler = wsd_scheduler(optimizer, total_optimizer_updates(len(train), args), phase.lr_schedule)
    evaluator = None
    if phase.in_training_evaluation is not None and phase.eval_data is not None and eval_data is not None:
        from retrievers.models.splade import nanobeir_evaluator

        evaluation = phase.in_training_evaluation
        evaluator = nanobeir_evaluator(eval_data, evaluation.datasets, evaluation.batch_size,
                                       dataset_id=phase.eval_data)  # as params names it: the saved card shows it
    trainer = SparseEncoderTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        loss=loss,
        evaluator=evaluator,
        data_collator=collator,
        callbacks=[schedule, epoch_callback(collator, seed)],
        optimizers=(optimizer, scheduler),  # type: ignore[arg-type]
    )
    return model, trainer
