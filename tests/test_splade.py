"""The SPLADE recipe's wiring: Muon/AdamW split, loss choice, per-epoch negatives and resume through the trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from retrievers.config import SpeedConfig, SpladePhase
from retrievers.models.neobert import NeoBERTConfig, NeoBERTLMHead
from retrievers.train.splade import MuonWithAdamW, splade_trainer

from .conftest import published

FIXTURES = Path(__file__).parent.parent / "fixtures"
KD = FIXTURES / "datasets" / "tiny-ms-marco-en-bge-gemma"


@pytest.fixture(scope="module")
def tiny_neobert(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer")
    folder = tmp_path_factory.mktemp("tiny-neobert")
    torch.manual_seed(0)
    config = NeoBERTConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, pad_token_id=tokenizer.pad_token_id)
    NeoBERTLMHead(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_trainer(init: Path, output: Path, callbacks=(), args=None, phase_args=None, **phase_overrides):
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    phase = SpladePhase.model_validate(published("phases", "neobert-splade", **({
        "init": str(init), "data": str(KD), "eval_data": None, "splade": {"max_seq_length": 32},
        "max_train_samples": 16, "eval_samples": 0, "heavyball_compile": False, "in_training_evaluation": None,
        "speed": SpeedConfig.stock().model_dump(),
        "args": {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "weight_decay": 0.0, "eval_strategy": "no",
                 "load_best_model_at_end": False, "metric_for_best_model": None} | (phase_args or {})}
        | phase_overrides)))
    args = SparseEncoderTrainingArguments(**({
        "output_dir": str(output), "per_device_train_batch_size": 8, "learning_rate": 1e-3, "num_train_epochs": 2,
        "batch_sampler": BatchSamplers.NO_DUPLICATES, "dataloader_drop_last": True, "save_strategy": "steps",
        "save_steps": 2, "logging_steps": 1, "report_to": [], "seed": 0, "disable_tqdm": True} | (args or {})))
    eval_data = Path(phase.eval_data) if phase.eval_data else None  # an absolute folder in these tests
    model, trainer = splade_trainer(phase, init, KD, args, seed=0, eval_data=eval_data)
    for callback in callbacks:
        trainer.add_callback(callback)
    return model, trainer


def test_recipe_optimizer_is_heavyball_foreach_muon_in_the_scripts_two_groups(tiny_neobert, tmp_path):
    """The recipe calls heavyball 1.5.3's ForeachMuon itself: every parameter, the name rule's groups, lr and
    weight decay from params, the library's defaults otherwise; and its step is that library's step."""
    import inspect
    from importlib.metadata import version

    import heavyball

    assert version("heavyball") == "1.5.3"
    model, trainer = make_trainer(tiny_neobert, tmp_path, phase_args={"learning_rate": 6.5e-5, "weight_decay": 0.01})
    optimizer = trainer.optimizer
    assert isinstance(optimizer, heavyball.ForeachMuon)
    assert type(optimizer).__bases__ == (heavyball.ForeachMuon,)  # only state_dict/load_state_dict added (resume)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = optimizer.param_groups
    assert [names[id(p)] for p in plain["params"]] == ["0.auto_model.decoder.bias"]  # NeoBERT: the rule's only hit
    assert {names[id(p)] for p in decayed["params"]} == set(names.values()) - {"0.auto_model.decoder.bias"}
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    library = {k: v.default for k, v in inspect.signature(heavyball.ForeachMuon).parameters.items() if k != "params"}
    assert optimizer.defaults["weight_decay"] == 0.01  # the constructor's; each group sets its own (above)
    for key, default in library.items():
        if key != "weight_decay":
            expected = 6.5e-5 if key == "lr" else default
            assert all(group[key] == expected for group in optimizer.param_groups), key

    # One step next to the library's own optimizer built by hand on copies of the same parameters and gradients.
    torch.manual_seed(0)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grads = [torch.randn_like(p) for p in params]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = heavyball.ForeachMuon(
        [{"params": copies[: len(decayed["params"])], "weight_decay": 0.01},
         {"params": copies[len(decayed["params"]):], "weight_decay": 0.0}], lr=6.5e-5, weight_decay=0.01)
    for p, c, g in zip(params, copies, grads, strict=True):
        p.grad, c.grad = g.clone(), g.clone()
    before = [p.detach().clone() for p in params]
    optimizer.step()
    reference.step()
    diff = max(float((p - c).abs().max()) for p, c in zip(params, copies, strict=True))
    moved = max(float((p - b).abs().max()) for p, b in zip(params, before, strict=True))
    print(f"max abs diff recipe vs heavyball.ForeachMuon after one step: {diff} (largest update {moved:.3g})")
    assert diff == 0.0 and moved > 0


def test_torch_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_neobert, tmp_path):
    model, trainer = make_trainer(tiny_neobert, tmp_path, optimizer="torch-muon-adamw")
    optimizer = trainer.optimizer
    assert isinstance(optimizer, MuonWithAdamW)
    muon, adamw = optimizer.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    on_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert on_muon and all(".transformer_encoder." in n and n.endswith(("qkv.weight", "wo.weight", "w12.weight",
                                                                         "w3.weight")) for n in on_muon)
    assert on_muon | on_adamw == set(names.values()) and not on_muon & on_adamw
    assert {n.split("auto_model.")[1] for n in on_adamw if "norm" not in n} == {
        "model.encoder.weight", "decoder.weight", "decoder.bias"}
    assert optimizer.param_groups == muon.param_groups + adamw.param_groups  # one scheduler drives both


def test_adamw_only(tiny_neobert, tmp_path):
    _, trainer = make_trainer(tiny_neobert, tmp_path, optimizer="adamw")
    assert type(trainer.optimizer) is torch.optim.AdamW


def test_lr_is_get_wsd_schedule_over_the_scripts_update_count_and_the_regulariser_ramps_quadratically(
    tiny_neobert, tmp_path
):
    """lr at updates 0, 5%, 60%, 80%, 100% of the script's total (ceil(ceil(rows/batch)/accumulation) x epochs),
    checked by hand against WSD: linear warmup to the peak, stable, cosine decay to min_lr_ratio x peak."""
    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
    from transformers import TrainerControl, TrainerState

    rows, batch, accumulation, epochs, peak = 100, 8, 3, 4, 1e-3
    shape = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation, "learning_rate": peak}
    _, trainer = make_trainer(tiny_neobert, tmp_path, max_train_samples=rows, args=shape | {"num_train_epochs": epochs},
                              phase_args=shape | {"num_train_epochs": epochs})
    total = math.ceil(math.ceil(rows / batch) / accumulation) * epochs  # 5 x 4 = 20
    assert total == 20
    scheduler = trainer.lr_scheduler
    assert scheduler is not None, "the recipe hands its own schedule to the trainer"
    from transformers import get_wsd_schedule

    library = get_wsd_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak),
                               num_training_steps=20, num_warmup_steps=1, num_decay_steps=8, min_lr_ratio=0.2)
    checkpoints = {0: 0.2 * peak,   # update 0: WSD's warmup starts at min_lr_ratio x peak
                   1: peak,         # 5%: the end of warmup (round(20 x 0.05) = 1)
                   12: peak,        # 60%: still stable (decay: the last round(20 x 0.4) = 8 updates)
                   16: peak * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 4 / 8))),  # 80%: half-way down the cosine
                   20: 0.2 * peak}  # 100%: min_lr_ratio x peak
    for step, by_hand in checkpoints.items():
        ours, theirs = scheduler.lr_lambdas[0](step) * peak, library.lr_lambdas[0](step) * peak
        assert ours == theirs == pytest.approx(by_hand), step

    ramp = [c for c in trainer.callback_handler.callbacks if isinstance(c, SpladeRegularizerWeightSchedulerCallback)]
    assert len(ramp) == 1
    state, control = TrainerState(max_steps=100), TrainerControl()
    ramp[0].on_train_begin(trainer.args, state, control)
    weights = []
    for step in (0, 5, 10, 14, 15, 50):
        state.global_step = step
        ramp[0].on_step_begin(trainer.args, state, control)
        weights.append(trainer.loss.query_regularizer_weight)
    assert weights == pytest.approx([3e-4 * (s / 15) ** 2 for s in (0, 5, 10, 14)] + [3e-4, 3e-4])
    assert trainer.loss.document_regularizer_weight == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "loss, inner", [("mnrl", "SparseMultipleNegativesRankingLoss"), ("margin-mse", "SparseMarginMSELoss"),
                    ("distill-kldiv", "SparseDistillKLDivLoss")]
)
def test_loss_choice_is_wired_and_computes(tiny_neobert, tmp_path, loss, inner):
    _, trainer = make_trainer(tiny_neobert, tmp_path, loss=loss)
    assert type(trainer.loss).__name__ == "SpladeLoss" and type(trainer.loss.loss).__name__ == inner
    batch = next(iter(trainer.get_train_dataloader()))
    assert "label" in batch and batch["label"].shape == (8, 2), "teacher scores of the positive and the negative"
    value = trainer.compute_loss(trainer.model, batch)
    assert value.ndim == 0 and torch.isfinite(value)


def test_collator_is_reseeded_with_seed_plus_epoch_and_training_resumes(tiny_neobert, tmp_path):
    """Each epoch's negatives are the script's draw with random.Random(seed + epoch), row after row in batch order."""
    import random

    from transformers import TrainerCallback

    from retrievers.train.splade import KDTripletCollator, draw_positive_and_negatives

    drawn: list[tuple[int, list[int], int]] = []  # (epoch, negatives' document positions, row query id)

    class Spy(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.epoch = int(state.epoch or 0)

    spy = Spy()
    _, trainer = make_trainer(tiny_neobert, tmp_path, callbacks=[spy])
    collator = trainer.data_collator
    assert isinstance(collator, KDTripletCollator)
    original = collator.__class__.__call__

    def recording(self, features):
        for row in features:
            drawn.append((spy.epoch, row))
        return original(self, features)

    collator.__class__.__call__ = recording
    try:
        trainer.train()
    finally:
        collator.__class__.__call__ = original
    assert [e for e, _ in drawn] == [0] * 16 + [1] * 16  # 16 rows, batches of 8, 2 epochs
    for epoch in (0, 1):
        rng = random.Random(0 + epoch)
        rows = [row for e, row in drawn if e == epoch]
        expected = [draw_positive_and_negatives(row["scores"], rng, 1) for row in rows]
        again = random.Random(0 + epoch)
        assert [draw_positive_and_negatives(row["scores"], again, 1) for row in rows] == expected
    first_epoch = [tuple(r["document_ids"]) for e, r in drawn if e == 0]
    assert sorted(first_epoch) == sorted(tuple(r["document_ids"]) for e, r in drawn if e == 1)

    # Resume from the end of epoch 0: the optimizer's state comes back and epoch 1 runs.
    checkpoint = tmp_path / "checkpoint-2"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert saved["state"], "heavyball's momentum buffers are in the checkpoint"
    _, resumed = make_trainer(tiny_neobert, tmp_path / "again")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4


def test_saved_model_is_the_best_in_training_checkpoint(tiny_neobert, tmp_path):
    """With load_best_model_at_end the model after training is the checkpoint of the best in-training
    eval_NanoBEIR_mean_dot_ndcg@10 (its weights), and train@'s record names that step and value."""
    from safetensors.torch import load_file

    from retrievers.train import selected_checkpoint

    nano = FIXTURES / "datasets" / "tiny-NanoBEIR-en"
    metric = "eval_NanoBEIR_mean_dot_ndcg@10"
    model, trainer = make_trainer(
        tiny_neobert, tmp_path, max_train_samples=64, eval_samples=8, eval_data=str(nano),
        in_training_evaluation={"datasets": ["msmarco", "scifact"], "batch_size": 64},
        args={"per_device_train_batch_size": 8, "learning_rate": 3e-3, "num_train_epochs": 1, "eval_strategy": "steps",
              "eval_steps": 1, "save_steps": 1, "save_total_limit": None, "load_best_model_at_end": True,
              "metric_for_best_model": metric},
        phase_args={"learning_rate": 3e-3, "eval_strategy": "steps", "eval_steps": 1, "load_best_model_at_end": True,
                    "metric_for_best_model": metric},
    )
    trainer.train()
    scores = {e["step"]: e[metric] for e in trainer.state.log_history if metric in e}
    assert len(scores) == 7 and len(set(scores.values())) > 1, scores
    best = max(scores, key=lambda s: (scores[s], -s))  # the trainer keeps the first of equal bests
    selected = selected_checkpoint(trainer)
    assert selected == {"rule": "best", "step": best, "of_steps": 7, "metric": metric, "value": scores[best]}
    weights = load_file(tmp_path / f"checkpoint-{best}" / "model.safetensors")
    ours = {k: v for k, v in model[0].auto_model.state_dict().items()}
    assert all(torch.equal(ours[k], weights[k]) for k in weights), "the model holds the best checkpoint's weights"
    last = load_file(tmp_path / "checkpoint-7" / "model.safetensors")
    assert best == 7 or not all(torch.equal(ours[k], last[k]) for k in last)


def _resumable_run(init: Path, output: Path, resume_from: str | None = None, workers: int = 0, rows: int = 24,
                   epochs: int = 4):
    """The tiny recipe on ``rows`` - 8 training rows with 8 of them repeated (no-duplicates epochs then yield fewer
    batches than their length: 2 of 3 with 24 rows), in-training evaluation every 3 steps and a checkpoint every
    step: (weights, losses, eval losses, trainer, card rows)."""
    from datasets import concatenate_datasets

    from retrievers.train.common import make_resumable

    model, trainer = make_trainer(
        init, output, max_train_samples=rows, eval_samples=8,
        args={"num_train_epochs": epochs, "save_steps": 1, "eval_strategy": "steps", "eval_steps": 3,
              "dataloader_num_workers": workers},
        phase_args={"eval_strategy": "steps", "eval_steps": 3, "save_steps": 1, "dataloader_num_workers": workers},
    )
    trainer.train_dataset = concatenate_datasets([trainer.train_dataset, trainer.train_dataset.select(range(8))])
    make_resumable(trainer, "no_duplicates", resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    evals = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    card_rows = [dict(row) for row in model.model_card_data.training_logs]
    return {k: v.clone() for k, v in model.state_dict().items()}, losses, evals, trainer, card_rows


def _assert_resumes_equal(init: Path, tmp_path: Path, steps: tuple[int, ...], **run):
    """Resume from each of ``steps``' checkpoints and compare with the uninterrupted run (returns its trainer)."""
    weights, losses, evals, trainer, card_rows = _resumable_run(init, tmp_path / "straight", **run)
    assert evals, "in-training evaluation ran (it draws from the collator too)"
    for step in steps:
        resumed_weights, resumed_losses, resumed_evals, _, resumed_rows = _resumable_run(
            init, tmp_path / f"from-{step}", str(tmp_path / "straight" / f"checkpoint-{step}"), **run)
        assert {s: v for s, v in resumed_losses.items() if s > step} == {s: v for s, v in losses.items() if s > step}
        assert {s: v for s, v in resumed_evals.items() if s > step} == {s: v for s, v in evals.items() if s > step}
        assert all(torch.equal(resumed_weights[k], weights[k]) for k in weights), f"resumed from step {step}"
        assert resumed_rows == card_rows, "the saved model card's training logs (losses, validation losses)"
    return trainer


def test_a_resumed_run_equals_the_uninterrupted_one_with_short_no_duplicates_epochs(tiny_neobert, tmp_path):
    """A run resumed from any checkpoint ends with the uninterrupted run's weights and logs the same losses, where
    the no-duplicates sampler yields fewer batches than its length (rows repeated: 2 of 3 batches in most epochs),
    so the trainer's global_step arithmetic would resume batches off, and where the resumed epoch's remaining
    negatives must be the draws the uninterrupted run made (the collator's RNG is restored from the checkpoint,
    in-training evaluation drawing from it between batches)."""
    trainer = _assert_resumes_equal(tiny_neobert, tmp_path, steps=(1, 3, 4))  # mid-epoch; an epoch's end; after eval
    assert trainer.state.global_step < 4 * len(trainer.get_train_dataloader()), "the epochs are short (under test)"



def test_a_resumed_run_with_dataloader_workers_equals_the_uninterrupted_one(tiny_neobert, tmp_path):
    """With 2 dataloader workers (the draws in their copies of the collator, which no checkpoint holds), a run
    resumed mid-epoch ends with the uninterrupted run's weights, losses, eval losses and card rows."""
    # 40 rows: epochs of 4 batches (of 5 the sampler's length allows), so each worker draws two and a resume after
    # batch 2 (step 2) or batch 1 of epoch 1 (step 5) hands the next batch to a worker that drew nothing yet. The
    # short epoch also leaves state.epoch at 0.8 when epoch 1 begins: the reseed callback's int(state.epoch) gives
    # it epoch 0's seed, which a resume at 1.2 must restore rather than recompute.
    trainer = _assert_resumes_equal(tiny_neobert, tmp_path, steps=(2, 5), workers=2, rows=40, epochs=2)
    epochs = [e["epoch"] for e in trainer.state.log_history if "loss" in e]
    assert epochs[:6] == [0.2, 0.4, 0.6, 0.8, 1.2, 1.4], epochs  # both resumes are mid-epoch


def test_with_workers_each_rows_draw_is_a_function_of_the_epoch_seed_and_the_row_alone():
    """In dataloader workers a row's positive and negatives do not depend on the batch it is in, its place there,
    the copy of the collator that draws it or what was drawn before; they change with the epoch seed."""
    import copy

    from retrievers.data.kd import kd_rows, load_kd_tables
    from retrievers.train.splade import KDTripletCollator

    tables = load_kd_tables(KD, "train")
    rows = [dict(row) for row in kd_rows(tables, 32, seed=0, max_rows=16)[0]]
    collator = KDTripletCollator(tokenize_fn=None, tables=tables, n_negatives=2, seed=0, workers=2)
    collator.set_epoch_seed(7)

    def by_query(draws):
        queries, positives, negatives, labels = draws
        return {q: (positives[i], [slot[i] for slot in negatives], labels[i]) for i, q in enumerate(queries)}

    whole = by_query(collator.draw(rows))
    other = copy.deepcopy(collator)  # another worker's copy, which drew other batches first
    other.draw(rows[:5])
    halves = by_query(other.draw(rows[8:][::-1])) | by_query(other.draw(rows[:8]))
    assert halves == whole and len(whole) == 16
    collator.set_epoch_seed(8)
    assert by_query(collator.draw(rows)) != whole, "the next epoch draws other negatives"


def test_a_run_resumed_after_its_last_evaluation_saves_the_uninterrupted_runs_model_card(tiny_neobert, tmp_path):
    """The saved README.md (training logs and the evaluation section: the in-training evaluator's last results) of a
    run resumed from its last checkpoint, after the last in-training evaluation, equals the uninterrupted run's."""
    from retrievers.train.common import CARD_EVALUATION, make_resumable

    nano = FIXTURES / "datasets" / "tiny-NanoBEIR-en"

    def run(output: Path, resume_from: str | None = None) -> str:
        model, trainer = make_trainer(
            tiny_neobert, output, max_train_samples=32, eval_samples=8, eval_data=str(nano),
            in_training_evaluation={"datasets": ["msmarco"], "batch_size": 64},
            args={"num_train_epochs": 1, "save_steps": 1, "eval_strategy": "steps", "eval_steps": 2},
            phase_args={"eval_strategy": "steps", "eval_steps": 2, "save_steps": 1},
        )
        make_resumable(trainer, "no_duplicates", resume_from)
        trainer.train(resume_from_checkpoint=resume_from)
        model.save(str(output / "model"))
        return (output / "model" / "README.md").read_text()

    straight = run(tmp_path / "straight")
    assert "## Evaluation" in straight and (tmp_path / "straight" / "checkpoint-3" / CARD_EVALUATION).exists()
    resumed = run(tmp_path / "resumed", str(tmp_path / "straight" / "checkpoint-3"))  # 3 steps; evaluated at 2
    assert resumed == straight
