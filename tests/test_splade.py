"""The SPLADE recipe's wiring: Muon/AdamW split, loss choice, per-epoch negatives and resume through the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retrievers.config import SpladePhase
from retrievers.models.neobert import NeoBERTConfig, NeoBERTLMHead
from retrievers.train.splade import MuonWithAdamW, splade_trainer

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


def make_trainer(init: Path, output: Path, callbacks=(), **phase_overrides):
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    phase = SpladePhase.model_validate(
        {"recipe": "splade", "model": "neobert-splade", "init": str(init), "data": str(KD),
         "splade": {"max_seq_length": 32}, "max_train_samples": 16,
         "args": {"per_device_train_batch_size": 8, "learning_rate": 1e-3}} | phase_overrides
    )
    args = SparseEncoderTrainingArguments(
        output_dir=str(output), per_device_train_batch_size=8, learning_rate=1e-3, num_train_epochs=2,
        batch_sampler=BatchSamplers.NO_DUPLICATES, dataloader_drop_last=True, save_strategy="steps", save_steps=2,
        logging_steps=1, report_to=[], seed=0, disable_tqdm=True,
    )
    model, trainer = splade_trainer(phase, init, KD, args, seed=0)
    for callback in callbacks:
        trainer.add_callback(callback)
    return model, trainer


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_neobert, tmp_path):
    model, trainer = make_trainer(tiny_neobert, tmp_path)
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


def test_adamw_only_when_muon_is_off(tiny_neobert, tmp_path):
    _, trainer = make_trainer(tiny_neobert, tmp_path, muon=None)
    assert type(trainer.optimizer) is torch.optim.AdamW


@pytest.mark.parametrize(
    "loss, inner", [("mnrl", "SparseMultipleNegativesRankingLoss"), ("margin-mse", "SparseMarginMSELoss"),
                    ("distill-kldiv", "SparseDistillKLDivLoss")]
)
def test_loss_choice_is_wired_and_computes(tiny_neobert, tmp_path, loss, inner):
    _, trainer = make_trainer(tiny_neobert, tmp_path, loss=loss)
    assert type(trainer.loss).__name__ == "SpladeLoss" and type(trainer.loss.loss).__name__ == inner
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("label" in batch) == (loss != "mnrl"), "the soft-distillation losses get the teacher scores"
    value = trainer.compute_loss(trainer.model, batch)
    assert value.ndim == 0 and torch.isfinite(value)


def test_training_redraws_negatives_each_epoch_and_resumes_with_both_optimizers(tiny_neobert, tmp_path):
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def __init__(self):
            self.epochs, self.negatives = [], []

        def on_step_begin(self, args, state, control, train_dataloader=None, **kwargs):
            self.epochs.append(transform.epoch)

    first = Record()
    _, trainer = make_trainer(tiny_neobert, tmp_path, callbacks=[first])
    transform = trainer.train_dataset._format_kwargs["transform"]
    optimizer = trainer.optimizer  # the trainer wraps it for accelerate during train()
    trainer.train()
    assert first.epochs == [0, 0, 1, 1]  # 16 samples, batches of 8, 2 epochs
    muon_state = optimizer.parts[0].state
    assert muon_state and all("momentum_buffer" in s for s in muon_state.values())

    # Resume from the checkpoint at the end of epoch 0: both optimizers' states come back, epoch 1 is redrawn.
    checkpoint = tmp_path / "checkpoint-2"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert set(saved) == {"muon", "adamw"} and saved["muon"]["state"] and saved["adamw"]["state"]
    second = Record()
    _, resumed = make_trainer(tiny_neobert, tmp_path / "again", callbacks=[second])
    transform = resumed.train_dataset._format_kwargs["transform"]
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert second.epochs == [1, 1]
    assert resumed.state.global_step == 4
