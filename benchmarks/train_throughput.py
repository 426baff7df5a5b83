"""Training throughput: the stock libraries' paths and this project's train@ path, side by side, in one run.

    python benchmarks/train_throughput.py --small                 # CI-sized (minutes on 2 CPU cores)
    python benchmarks/train_throughput.py                         # CPU: published shapes, encoders 1 layer deep
    python benchmarks/train_throughput.py --device cuda           # GPU: published sizes and precision
    python benchmarks/train_throughput.py --device cuda --recipes xtr-distillation --n-ways 32   # does 32 fit?
    python benchmarks/train_throughput.py --data-only             # the DataLoader alone vs one H100's appetite
    python benchmarks/train_throughput.py --encode --small        # document encoding (evaluation), stock vs ours

Recipes: XTR contrastive (PyLate Contrastive + XTRScores(k=256), 64 triplets), XTR distillation (PyLate
Distillation + XTRKDScores(k=256), 16 queries x 16 documents) and NeoBERT-SPLADE (sentence-transformers SpladeLoss
+ SparseMultipleNegativesRankingLoss, 24 triplets x accumulation 5, no-duplicates sampler, 256 tokens).

* ``stock``: the libraries as they are (as /work/shared/bench/stock_throughput.py runs them): ``pylate.models.ColBERT``
  with ``ColBERTCollator``, ``SparseEncoder(MLMTransformer, SpladePooling)`` with the trainer's default collator and
  optimizer, on in-memory datasets of the texts.
* ``ours``: ``retrievers.train.xtr.{contrastive,distillation}_trainer`` and ``retrievers.train.splade.splade_trainer``
  (what ``train@`` builds, minus MLflow) on the same synthetic corpus written in the Hub layouts the pipeline reads,
  with params.yaml's published phase config (its ``speed`` switches included).

Both paths get the same randomly initialised weights, the same synthetic texts (queries of 4-14 words; passages
log-normal around 56 words with a long tail, clipped to 8..400, as stock_throughput.py draws them; one token per
word), the same trainer arguments and seeds. Each (recipe, path) runs in its own process so peak memory is its own.

Reported per step (medians over the measured steps; step_cpu_s is the process CPU time of a step, the figure to
compare on a shared machine where wall time includes waiting for a core): samples/s (queries for XTR, triplets for
SPLADE), real tokens/s, padding efficiency (real tokens / token positions the encoder computed; ColBERT queries count
all query_length
positions as real, since the scores use the expansion tokens' outputs), peak memory (CUDA: max allocated; CPU: peak
RSS of the process and its growth during training) and a breakdown: data (loading + collation: the gap between
steps), forward (the encoder), loss (the loss's own work: scoring, regularisers), backward, optimizer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"xtr-contrastive": "modernbert-xtr-contrastive", "xtr-distillation": "modernbert-xtr",
           "splade": "neobert-splade"}
VOCAB = 30522  # bert-base-uncased's size: SPLADE's vocabulary-sized tensors are what they are in the recipe
# The stock libraries' H100 step times (RECIPES.md, stock_throughput.py) and the GPU targets of issue 12.
H100_STOCK_STEP_S = {"xtr-distillation": 0.403, "splade": 2.04}
GPU_TARGET_SPEEDUP = {"xtr-distillation": 4.0, "splade": 5.0}


# ------------------------------------------------------------------------------------------------ sizes
def size_profile(device: str, small: bool) -> dict:
    """Model sizes and batch shapes of a run. CPU: published widths and shapes, depth 1; small: narrower too."""
    if device == "cuda":
        return dict(name="published sizes (ModernBERT-base 22 layers, NeoBERT 28 layers), published precision",
                    xtr_layers=22, neo_layers=28, hidden=768, heads=12, xtr_inter=1152, neo_inter=3072,
                    contrastive_batch=64, kd_batch=16, n_ways=16, splade_batch=24, splade_accumulation=5,
                    precision=True, workers=None)
    if small:
        return dict(name="small: ModernBERT and NeoBERT 1 layer, hidden 256; batches 16 triplets, 4 x 16 KD, "
                    "8 SPLADE triplets x 1; published lengths and vocabulary", xtr_layers=1, neo_layers=1,
                    hidden=256, heads=4, xtr_inter=384, neo_inter=1024, contrastive_batch=16, kd_batch=4, n_ways=16,
                    splade_batch=8, splade_accumulation=1, precision=False, workers=0)
    return dict(name="CPU: ModernBERT-base and NeoBERT widths at 1 layer deep (of 22 and 28), published batch "
                "shapes and lengths, float32", xtr_layers=1, neo_layers=1, hidden=768, heads=12, xtr_inter=1152,
                neo_inter=3072, contrastive_batch=64, kd_batch=16, n_ways=16, splade_batch=24, splade_accumulation=5,
                precision=False, workers=0)


# ------------------------------------------------------------------------------------------------ data
def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(VOCAB - 5)}" for _ in range(n))


def _doc_length(rng: random.Random) -> int:  # MS MARCO passages: ~56 words median, long tail (stock_throughput.py)
    return int(min(400, max(8, rng.lognormvariate(math.log(56), 0.45))))


def write_tokenizer(path: Path):
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(VOCAB - 5)])}
    tok = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(path)
    return fast


def write_base_model(kind: str, size: dict, path: Path) -> None:
    import torch

    torch.manual_seed(0)
    if kind == "splade":
        from retrievers.models.neobert import NeoBERTConfig, NeoBERTLMHead

        config = NeoBERTConfig(hidden_size=size["hidden"], num_hidden_layers=size["neo_layers"],
                               num_attention_heads=size["heads"], intermediate_size=size["neo_inter"],
                               vocab_size=VOCAB, pad_token_id=0)
        NeoBERTLMHead(config).save_pretrained(path)
    else:
        from transformers import ModernBertConfig, ModernBertModel

        config = ModernBertConfig(vocab_size=VOCAB, hidden_size=size["hidden"], num_hidden_layers=size["xtr_layers"],
                                  num_attention_heads=size["heads"], intermediate_size=size["xtr_inter"],
                                  pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
        ModernBertModel(config).save_pretrained(path)
    write_tokenizer(path)


def write_corpus(root: Path, n_queries: int, n_ways: int, seed: int = 0) -> dict:
    """The same synthetic corpus in the two Hub layouts the pipeline reads, and as in-memory rows for the stock path:
    ``kd/`` (ms-marco-en-bge-gemma: queries, documents, train, train_unormalized) and ``triplets/``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    n_docs = max(4 * n_queries * n_ways, 2000)
    # Unique folder names: datasets caches a local folder under its name and layout, not its content, so a
    # second corpus in another `kd/` would be served the first one's tables.
    kd, triplets_dir = Path(tempfile.mkdtemp(dir=root, prefix="kd-")), Path(tempfile.mkdtemp(dir=root, prefix="tri-"))
    docs = [_words(rng, _doc_length(rng)) for _ in range(n_docs)]
    queries = [_words(rng, rng.randint(4, 14)) for _ in range(n_queries)]
    doc_ids = [rng.sample(range(n_docs), n_ways) for _ in range(n_queries)]
    scores = [[rng.random() for _ in range(n_ways)] for _ in range(n_queries)]
    tables = {
        "queries": {"query_id": list(range(n_queries)), "text": queries},
        "documents": {"document_id": list(range(n_docs)), "text": docs},
        "train": {"query_id": list(range(n_queries)), "document_ids": doc_ids, "scores": scores},
        "train_unormalized": {"query_id": list(range(n_queries)), "document_ids": doc_ids, "scores": scores},
    }
    readme = ["---", "configs:"]
    for name, columns in tables.items():
        (kd / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), kd / name / "train-00000-of-00001.parquet")
        readme += [f"- config_name: {name}", "  data_files:", "  - split: train",
                   f"    path: {name}/train-00000-of-00001.parquet"]
    (kd / "README.md").write_text("\n".join(readme + ["---", ""]))
    negatives = [docs[ids[1 + rng.randrange(n_ways - 1)]] for ids in doc_ids]
    positives = [docs[ids[max(range(n_ways), key=s.__getitem__)]] for ids, s in zip(doc_ids, scores, strict=True)]
    triplets = {"query": queries, "positive": [docs[ids[0]] for ids in doc_ids], "negative": negatives}
    (triplets_dir / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(triplets), triplets_dir / "data" / "train-00000-of-00001.parquet")
    (triplets_dir / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                            "    path: data/train-00000-of-00001.parquet\n---\n")
    return {"kd_dir": kd, "triplets_dir": triplets_dir, "n_texts": n_docs + n_queries,
            "kd": {"query": queries, "documents": [[docs[i] for i in ids] for ids in doc_ids], "scores": scores},
            "triplets": triplets, "splade": {"query": queries, "positive": positives, "negative": negatives}}


# ------------------------------------------------------------------------------------------------ timing
class StepClock:
    """Per-step wall-clock breakdown from trainer callbacks and forward hooks on the model and the loss."""

    def __init__(self, model, loss, sync, count_positions):
        self.sync, self.count_positions = sync, count_positions
        self.steps: list[dict] = []
        self.forward = self.loss_total = 0.0
        self.real = self.positions = 0
        self._marks: dict[str, float] = {}
        model.register_forward_pre_hook(self._model_start, with_kwargs=True)
        model.register_forward_hook(self._model_end)
        loss.register_forward_pre_hook(self._loss_start)
        loss.register_forward_hook(self._loss_end)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def _model_start(self, module, args, kwargs):
        features = args[0] if args else kwargs.get("input")
        real, positions = self.count_positions(features)
        self.real += real
        self.positions += positions
        self._marks["model"] = self.now()

    def _model_end(self, module, args, output):
        self.forward += self.now() - self._marks["model"]

    def _loss_start(self, module, args):
        self._marks["loss"] = self.now()

    def _loss_end(self, module, args, output):
        self.loss_total += self.now() - self._marks["loss"]

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock._marks["begin"] = clock.now()
                clock.forward = clock.loss_total = 0.0
                clock.real = clock.positions = 0

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                clock._marks["pre_optimizer"] = clock.now()

            def on_optimizer_step(self, args, state, control, **kwargs):
                clock._marks["optimizer"] = clock.now()

            def on_step_end(self, args, state, control, **kwargs):
                end, marks = clock.now(), clock._marks
                compute = marks["pre_optimizer"] - marks["begin"]
                previous = marks.get("end", marks["begin"])
                cpu = time.process_time()
                clock.steps.append(dict(
                    step_s=end - previous, data_s=marks["begin"] - previous,
                    step_cpu_s=cpu - marks.get("cpu_end", cpu),
                    forward_s=clock.forward, loss_s=clock.loss_total - clock.forward,
                    backward_s=compute - clock.loss_total, optimizer_s=end - marks["pre_optimizer"],
                    real_tokens=clock.real, positions=clock.positions))
                marks["end"], marks["cpu_end"] = end, cpu

        return Clock()


def _rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


# ------------------------------------------------------------------------------------------------ one run
WITHOUT = "ours-without-"  # path name of an ablation (--without SWITCH)
NO_EVALUATION = dict(eval_strategy="no", load_best_model_at_end=False, metric_for_best_model=None)


def without_evaluation(recipe: str, phase, device: str):
    """The phase without its held-out rows and in-training evaluation (the benchmark times training steps), and,
    on CPU, with heavyball's updates eager (its torch.compile takes minutes here)."""
    if recipe != "splade":
        return phase
    return phase.model_copy(update={"eval_samples": 0, "in_training_evaluation": None,
                                    "heavyball_compile": phase.heavyball_compile and device == "cuda"})


def run_one(recipe: str, path: str, device: str, small: bool, steps: int, warmup: int,
            n_ways: int | None = None) -> dict:
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    import retrievers  # noqa: F401  (registers the native NeoBERT)
    from retrievers.config import load_params
    from retrievers.packed import DOCUMENT_LENGTHS, padding_positions

    size = size_profile(device, small) | ({"n_ways": n_ways} if n_ways else {})
    params = load_params(REPO / "params.yaml")
    phase = params.phases[RECIPES[recipe]]
    batch = {"xtr-contrastive": size["contrastive_batch"], "xtr-distillation": size["kd_batch"],
             "splade": size["splade_batch"]}[recipe]
    accumulation = size["splade_accumulation"] if recipe == "splade" else 1
    total = warmup + steps
    arg_updates = dict(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=total,
                       logging_steps=10**6, save_steps=10**6, warmup_ratio=0.0, **NO_EVALUATION)
    phase = without_evaluation(recipe, phase, device)
    if not size["precision"]:
        arg_updates.update(fp16=False, bf16=False, torch_compile=False)
    if size["workers"] is not None:
        arg_updates["dataloader_num_workers"] = size["workers"]
        if not size["workers"]:
            arg_updates["dataloader_prefetch_factor"] = None
    updates: dict = {"args": phase.args.model_copy(update=arg_updates), "max_train_samples": None}
    if recipe == "xtr-distillation":
        updates["n_ways"] = size["n_ways"]
    phase = phase.model_copy(update=updates)
    n_queries = batch * accumulation * total + 8
    tmp = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    base = tmp / "base"
    write_base_model(recipe, size, base)
    rows = write_corpus(tmp, n_queries, size["n_ways"])
    values = phase.args.model_dump()
    values["batch_sampler"] = BatchSamplers(values["batch_sampler"])
    args_cls = SparseEncoderTrainingArguments if recipe == "splade" else SentenceTransformerTrainingArguments
    values["use_cpu"] = device == "cpu"
    args = args_cls(output_dir=str(tmp / "out"), seed=params.seed, report_to="none", save_strategy="no",
                    disable_tqdm=True, **values)
    if path in ("stock", "stock-muon"):
        model, trainer = build_stock(recipe, phase, base, tmp, rows, args, recipe_optimizer=path == "stock-muon")
    else:  # ours, or an ablation (ours with one speed switch off)
        if path.startswith(WITHOUT):
            phase = phase.model_copy(update={"speed": phase.speed.model_copy(update={path[len(WITHOUT):]: False})})
        model, trainer = build_ours(recipe, phase, base, tmp, rows, args)
    speed = getattr(model, "speed", None)
    query_length = getattr(model, "query_length", None)

    def count_positions(features) -> tuple[int, int]:
        if recipe != "splade" and DOCUMENT_LENGTHS not in features and features["input_ids"].shape[1] == query_length:
            n = features["input_ids"].numel()  # ColBERT queries: the scores use every expansion position
            return n, n
        return padding_positions(features, speed, bucketed=recipe == "splade" or DOCUMENT_LENGTHS in features)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = StepClock(model, trainer.loss, sync, count_positions)
    trainer.add_callback(clock.callback())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_gib()
    trainer.train()
    measured = clock.steps[max(warmup, 1):]  # the first step has no previous end (no data time, no CPU time)

    def median(key: str) -> float:
        values = sorted(s[key] for s in measured)
        return values[len(values) // 2]

    step_s = median("step_s")
    samples = batch * accumulation
    real = sum(s["real_tokens"] for s in measured) / len(measured)
    positions = sum(s["positions"] for s in measured) / len(measured)
    out = dict(recipe=recipe, path=path, device=device, size=size["name"], steps=len(measured), step_s=round(step_s, 4),
               samples_per_s=round(samples / step_s, 3), real_tokens_per_s=round(real / step_s, 1),
               real_tokens_per_step=int(real), positions_per_step=int(positions),
               padding_efficiency=round(real / positions, 4),
               **{k: round(median(k), 4) for k in ("data_s", "forward_s", "loss_s", "backward_s", "optimizer_s")},
               step_cpu_s=round(median("step_cpu_s"), 4))
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["peak_memory_gib"] = round(peak, 2)
        out["memory_growth_gib"] = round(max(0.0, peak - rss_before), 2)
    return out


def build_stock(recipe: str, phase, base: Path, tmp: Path, rows: dict, args, recipe_optimizer: bool = False):
    """The libraries as they are: no retrievers code on the model, collator, loss or optimizer. SPLADE with
    ``recipe_optimizer`` ("stock-muon"): the same, with the recipe's optimizer and schedule handed to the trainer as
    the author's script does (heavyball ForeachMuon over every parameter, the WSD schedule), so the two paths
    differ only in the fast paths."""
    from datasets import Dataset

    if recipe == "splade":
        from sentence_transformers import SparseEncoder
        from sentence_transformers.sparse_encoder import SparseEncoderTrainer, losses
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        mlm = MLMTransformer(str(base), max_seq_length=phase.splade.max_seq_length)
        model = SparseEncoder(modules=[mlm, SpladePooling(pooling_strategy="max")])
        loss = losses.SpladeLoss(model=model, loss=losses.SparseMultipleNegativesRankingLoss(model=model, scale=1.0),
                                 document_regularizer_weight=3e-4, query_regularizer_weight=3e-4)
        optimizers: tuple = (None, None)
        if recipe_optimizer:
            from retrievers.train.splade import build_optimizer, total_optimizer_updates, wsd_scheduler

            optimizer = build_optimizer(model, phase)
            schedule = wsd_scheduler(optimizer, total_optimizer_updates(len(rows["splade"]["query"]), args),
                                     phase.lr_schedule) if phase.lr_schedule is not None else None
            optimizers = (optimizer, schedule)
        return model, SparseEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows["splade"]),
                                           optimizers=optimizers,
                                           loss=loss)
    from pylate import losses, models, scores, utils
    from sentence_transformers import SentenceTransformerTrainer

    c = phase.colbert
    model = models.ColBERT(model_name_or_path=str(base), embedding_size=c.embedding_size, query_length=c.query_length,
                           document_length=c.document_length, query_prefix=c.query_prefix,
                           document_prefix=c.document_prefix)
    if recipe == "xtr-contrastive":
        loss = losses.Contrastive(model=model, score_metric=scores.XTRScores(k=phase.k_train),
                                  temperature=phase.temperature)
        data = Dataset.from_dict(rows["triplets"])
    else:
        loss = losses.Distillation(model=model, score_metric=scores.XTRKDScores(k=phase.k_train))
        data = Dataset.from_dict(rows["kd"])
    return model, SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss,
                                             data_collator=utils.ColBERTCollator(model.tokenize))


def build_ours(recipe: str, phase, base: Path, tmp: Path, rows: dict, args):
    """What train@ builds (retrievers.train), from the corpus written in the Hub layouts."""
    if recipe == "splade":
        from retrievers.train.splade import splade_trainer

        return splade_trainer(phase, base, rows["kd_dir"], args, seed=42)
    from retrievers.train.xtr import contrastive_trainer, distillation_trainer

    if recipe == "xtr-contrastive":
        return contrastive_trainer(phase, base, rows["triplets_dir"], args)
    return distillation_trainer(phase, base, rows["kd_dir"], args)


# ------------------------------------------------------------------------------------------------ data path alone
def run_data_only(recipe: str, device: str, small: bool, batches: int, workers: int | None,
                  pretokenized: bool | None = None) -> dict:
    """Batches per second the project's DataLoader delivers (sampled, tokenised or padded from the token cache, and
    collated; no model step), next to what one H100 consumes at the GPU target step time.

    ``pretokenized``: params.yaml's ``speed.pretokenized`` and ``scan_free_no_duplicates`` (None) or both forced
    on/off. The one-off cache build is timed
    apart (``cache_build_s`` for the corpus's texts) since it is not a per-batch cost."""
    size = size_profile(device, small) | {"xtr_layers": 1, "neo_layers": 1}
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sparse_encoder import SparseEncoderTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    import retrievers  # noqa: F401
    from retrievers.config import load_params

    params = load_params(REPO / "params.yaml")
    phase = params.phases[RECIPES[recipe]]
    batch = {"xtr-contrastive": size["contrastive_batch"], "xtr-distillation": size["kd_batch"],
             "splade": size["splade_batch"]}[recipe]
    n_workers = phase.args.dataloader_num_workers if workers is None else workers
    phase = without_evaluation(recipe, phase, device)
    speed = phase.speed if pretokenized is None else phase.speed.model_copy(
        update={"pretokenized": pretokenized, "scan_free_no_duplicates": pretokenized})
    phase = phase.model_copy(update={"args": phase.args.model_copy(update=dict(
        per_device_train_batch_size=batch, dataloader_num_workers=n_workers, max_steps=batches, **NO_EVALUATION,
        dataloader_prefetch_factor=phase.args.dataloader_prefetch_factor if n_workers else None)),
        "max_train_samples": None, "speed": speed})
    tmp = Path(tempfile.mkdtemp(prefix="data-throughput-"))
    os.chdir(tmp)  # the token cache (checkpoints/tokens) lands in the scratch workspace
    write_base_model(recipe, size, tmp / "base")
    rows = write_corpus(tmp, batch * (batches + 4), size["n_ways"])
    values = phase.args.model_dump()
    values["batch_sampler"] = BatchSamplers(values["batch_sampler"])
    args_cls = SparseEncoderTrainingArguments if recipe == "splade" else SentenceTransformerTrainingArguments
    values["use_cpu"] = True
    args = args_cls(output_dir=str(tmp / "out"), seed=42, report_to="none", **values)
    built = time.perf_counter()
    _, trainer = build_ours(recipe, phase, tmp / "base", tmp, rows, args)
    built = time.perf_counter() - built
    loader = iter(trainer.get_train_dataloader())
    next(loader)  # worker start-up is not per-batch cost
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches - 1):
        next(loader)
    elapsed = time.perf_counter() - start
    per_s = (batches - 1) / elapsed
    out = dict(recipe=recipe, workers=n_workers, batch=batch, pretokenized=speed.pretokenized,
               scan_free_no_duplicates=speed.scan_free_no_duplicates, sampler=str(phase.args.batch_sampler),
               batches_per_s=round(per_s, 2), main_process_cpu_s_per_batch=round(
                   (time.process_time() - cpu) / (batches - 1), 4),
               trainer_build_s=round(built, 2), corpus_texts=rows.get("n_texts"))
    if recipe in H100_STOCK_STEP_S:  # one optimizer step = accumulation micro-batches
        micro = size["splade_accumulation"] if recipe == "splade" else 1
        target_step = H100_STOCK_STEP_S[recipe] / GPU_TARGET_SPEEDUP[recipe]
        out["h100_consumes_batches_per_s"] = round(micro / target_step, 2)
        out["margin"] = round(per_s / out["h100_consumes_batches_per_s"], 2)
    return out


# ------------------------------------------------------------------------------------------------ encoding alone
def run_encode(recipe: str, device: str, small: bool, n_docs: int) -> dict:
    """Documents/s that ``encode`` (what the NanoBEIR evaluators call) gets from the stock model and from the
    Packed one with params.yaml's switches, same weights, same texts, in this process (both warmed up first).
    evaluate@ itself still loads the stock classes: this is what it would gain, not what it does."""
    import torch

    import retrievers  # noqa: F401
    from retrievers.config import load_params

    size = size_profile(device, small)
    phase = load_params(REPO / "params.yaml").phases[RECIPES[recipe]]
    tmp = Path(tempfile.mkdtemp(prefix="encode-throughput-"))
    write_base_model(recipe, size, tmp / "base")
    rng = random.Random(1)
    docs = [_words(rng, _doc_length(rng)) for _ in range(n_docs)]
    models = {}
    if recipe == "splade":
        from retrievers.models.splade import build_splade

        models["stock"] = build_splade(tmp / "base", phase.splade)
        models["ours"] = build_splade(tmp / "base", phase.splade, phase.speed)

        def encode(model, texts):
            return model.encode(texts, batch_size=32, convert_to_tensor=True)
    else:
        from retrievers.models.colbert import build_colbert

        torch.manual_seed(0)
        models["stock"] = build_colbert(tmp / "base", phase.colbert)
        models["ours"] = build_colbert(tmp / "base", phase.colbert, speed=phase.speed)

        def encode(model, texts):
            return model.encode(texts, batch_size=32, is_query=False)
    models["ours"].load_state_dict(models["stock"].state_dict())
    out: dict = dict(recipe=recipe, documents=n_docs, size=size["name"])
    for name, model in models.items():
        model.to(device).eval()
        encode(model, docs[:64])
        start = time.process_time() if device == "cpu" else time.perf_counter()
        encode(model, docs)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = (time.process_time() if device == "cpu" else time.perf_counter()) - start
        out[f"{name}_docs_per_s"] = round(n_docs / elapsed, 1)
    out["ratio"] = round(out["ours_docs_per_s"] / out["stock_docs_per_s"], 2)
    return out


# ------------------------------------------------------------------------------------------------ driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--small", action="store_true", help="CI-sized models and batches (CPU)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured first steps (default 1 / 10)")
    parser.add_argument("--data-only", action="store_true", help="time the DataLoader alone (no model step)")
    parser.add_argument("--batches", type=int, default=30, help="--data-only: batches timed")
    parser.add_argument("--encode", action="store_true", help="time document encoding (the evaluators' cost)")
    parser.add_argument("--workers", type=int, default=None, help="--data-only: DataLoader workers (default: params)")
    parser.add_argument("--pretokenized", choices=["params", "on", "off", "both"], default="both",
                        help="--data-only: speed.pretokenized as params.yaml sets it, forced, or both side by side")
    parser.add_argument("--n-ways", type=int, default=None, help="XTR distillation: documents per query (default 16)")
    parser.add_argument("--parallel", action="store_true", help="run the paths' processes at once (a loaded "
                        "machine gives each a share: compare step_cpu_s then, not wall time)")
    parser.add_argument("--output", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument("--without", nargs="+", default=[], metavar="SWITCH",
                        help="also run ours with this speed switch off (path ours-without-SWITCH), per switch")
    parser.add_argument("--paths", nargs="+", default=None,
                        help="run only these paths (stock, stock-muon, ours, ours-without-SWITCH)")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "PATH"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = a.steps if a.steps is not None else (20 if a.device == "cuda" else 3)
    warmup = a.warmup if a.warmup is not None else (10 if a.device == "cuda" else 1)
    if a.worker:
        result = run_one(a.worker[0], a.worker[1], a.device, a.small, steps, warmup, a.n_ways)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = []
    if a.encode:
        for recipe in dict.fromkeys("xtr" if r.startswith("xtr") else r for r in a.recipes):
            results.append(run_encode("xtr-distillation" if recipe == "xtr" else recipe, a.device, a.small, 512))
            print(json.dumps(results[-1]), flush=True)
    elif a.data_only:
        settings = {"params": [None], "on": [True], "off": [False], "both": [False, True]}[a.pretokenized]
        for recipe in a.recipes:
            for setting in settings if recipe != "xtr-contrastive" else [None]:
                results.append(run_data_only(recipe, a.device, a.small, a.batches, a.workers, setting))
                print(json.dumps(results[-1]), flush=True)
    else:
        print(f"# {size_profile(a.device, a.small)['name']}; {steps} measured steps after {warmup}"
              + ("; the paths' processes at once" if a.parallel else ""), flush=True)
        from retrievers.config import SpeedConfig

        switches = [name for name, field in SpeedConfig.model_fields.items() if field.annotation is bool]
        unknown = [switch for switch in a.without if switch not in switches]
        if unknown:
            sys.exit(f"--without {unknown[0]}: not a speed switch ({', '.join(switches)})")
        runs = [(recipe, path) for recipe in a.recipes
                for path in (("stock", "stock-muon", "ours") if recipe == "splade" else ("stock", "ours"))
                + tuple(WITHOUT + switch for switch in a.without)
                if a.paths is None or path in a.paths]

        def start(recipe: str, path: str) -> subprocess.Popen:
            cmd = [sys.executable, __file__, "--worker", recipe, path, "--device", a.device,
                   "--steps", str(steps), "--warmup", str(warmup)] + (["--small"] if a.small else []) \
                + (["--n-ways", str(a.n_ways)] if a.n_ways else [])
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def finish(recipe: str, path: str, proc: subprocess.Popen) -> None:
            stdout, stderr = proc.communicate()
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{recipe}/{path} failed ({proc.returncode}):\n{stderr[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(results[-1]), flush=True)

        if a.parallel:
            for recipe, path, proc in [(recipe, path, start(recipe, path)) for recipe, path in runs]:
                finish(recipe, path, proc)
        else:
            for recipe, path in runs:
                finish(recipe, path, start(recipe, path))
        print_table(results)
    if a.output:
        a.output.write_text(json.dumps(results, indent=1))


def print_table(results: list[dict]) -> None:
    keys = ["samples_per_s", "real_tokens_per_s", "padding_efficiency", "peak_memory_gib", "step_s", "step_cpu_s",
            "data_s", "forward_s", "loss_s", "backward_s", "optimizer_s"]
    print("\n| recipe | path | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    by = {(r["recipe"], r["path"]): r for r in results}
    for (recipe, path), r in by.items():
        print(f"| {recipe} | {path} | " + " | ".join(str(r.get(k)) for k in keys) + " |")
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        references = ["stock", "stock-muon"] + [path for (r, path) in by if r == recipe and path.startswith(WITHOUT)]
        for reference in references:
            stock, ours = by.get((recipe, reference)), by.get((recipe, "ours"))
            if not (stock and ours):
                continue
            print(f"{recipe} vs {reference}: ", end="")
            print(f"{recipe}: ours/stock samples/s {ours['samples_per_s'] / stock['samples_per_s']:.2f}x "
                  f"(CPU time per step {stock['step_cpu_s'] / ours['step_cpu_s']:.2f}x), "
                  f"padding efficiency {stock['padding_efficiency']} -> {ours['padding_efficiency']}, "
                  f"peak memory {stock['peak_memory_gib']} -> {ours['peak_memory_gib']} GiB")


if __name__ == "__main__":
    main()
