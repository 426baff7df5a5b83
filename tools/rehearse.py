"""`make rehearse`: every training phase of params.yaml at the published shape, for a few steps, before any GPU hour.

Each phase runs through the same ``run_phase`` as ``train@<phase>`` (its trainer, loss, optimizer, collator,
checkpoint saving and MLflow run), with the published arguments except what a rehearsal must change:

* ``per_device_train_batch_size`` (``--batch-size``) and ``max_steps`` (``--steps``); ``logging_steps`` 1, and
  ``save_steps`` = the step count where the phase does not evaluate during training, so a checkpoint is written;
* on a machine without CUDA: bf16 autocast on the CPU (``use_cpu``) where the phase asks for fp16 or bf16 (the
  trainer has no fp16 autocast on CPU), and ``torch_compile`` and ``heavyball_compile`` off unless
  ``--compile``. Where the CPU has no fast bf16 products (oneDNN needs AVX-512 for them; on an AVX2 CPU torch
  falls back to a scalar loop, about 0.7 GFLOP/s against 100 in float32), those phases run in float32 instead
  and the table says so.

The base models are built with random weights from the published configs in ``tools/full-size/<source>.json``
(ModernBERT-base, NeoBERT 28 x 768) with synthetic WordPiece tokenizers of the published vocabulary sizes; the
datasets are synthetic text in the Hub layouts the download stage produces, long enough to reach the published
sequence lengths (``--short-texts``: a few words, for CI). Each phase is a fresh process, so its peak memory is
its own: CUDA's peak allocation, or the process's peak RSS on CPU. Any error a published run would hit (a bad
argument, a dtype mismatch, a missing column, an optimizer refusing a parameter) ends the rehearsal with status 1.

    python -m tools.rehearse [--steps 3] [--batch-size 1] [--workdir build/rehearse] [--json out.json]

PyLate pads every ColBERT text to its maximum length (query 32, document 512), so the XTR phases run at their
full lengths whatever the text; the distillation phase at batch 1 (16 documents of 512 tokens) peaks at about
11 GiB of RSS on CPU. ``--override KEY=VALUE`` changes one more value (the CI test lowers n_ways that way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from retrievers.config import Params, SpladePhase, XTRContrastivePhase, XTRDistillationPhase, load_params
from retrievers.paths import Workspace

REPO = Path(__file__).resolve().parents[1]
FULL_SIZE = REPO / "tools" / "full-size"
RESULT_PREFIX = "REHEARSAL-RESULT "


# ------------------------------------------------------------------------------------------ synthetic sources
def _words(vocab_size: int, specials: dict[str, list]) -> tuple[list[str], list[str]]:
    """(the tokenizer's vocabulary, the plain words of it) with every special token at its published id."""
    by_id = {int(token_id): token for token, token_id in specials.values()}
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    fillers = iter(chars + [f"##{c}" for c in chars] + [f"w{i}" for i in range(vocab_size)])
    vocab = [by_id[i] if i in by_id else next(fillers) for i in range(vocab_size)]
    return vocab, [w for w in vocab if w.startswith("w")]


def write_base_model(spec_file: Path, out: Path) -> None:
    """A randomly initialised masked-language model of the published config, with its synthetic tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    import retrievers  # noqa: F401  # registers the native NeoBERT with the Auto classes
    from tools.fixture import save_wordpiece_tokenizer

    spec = json.loads(spec_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(spec["config"], indent=2))
    tok = spec["tokenizer"]
    vocab, _ = _words(tok["vocab_size"], tok["special_tokens"])
    save_wordpiece_tokenizer(vocab, out, lowercase=tok["lowercase"], model_max_length=tok["model_max_length"],
                             special_tokens={name: token for name, (token, _) in tok["special_tokens"].items()})
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(out))
    model.save_pretrained(out)


class TextSampler:
    """Synthetic text over a tokenizer's plain words: each word is one token."""

    def __init__(self, words: list[str], query_words: int, document_words: int, seed: int = 0):
        self.words, self.query_words, self.document_words = words, query_words, document_words
        self.rng = random.Random(seed)

    def text(self, n: int) -> str:
        return " ".join(self.rng.choices(self.words, k=n))

    def query(self) -> str:
        return self.text(self.query_words)

    def document(self) -> str:
        return self.text(self.document_words)


def write_triplets(sampler: TextSampler, out: Path, rows: int) -> None:
    from tools.fixture import _dataset_readme, _write_parquet

    table = {"query": [sampler.query() for _ in range(rows)], "positive": [sampler.document() for _ in range(rows)],
             "negative": [sampler.document() for _ in range(rows)]}
    _write_parquet(table, out / "data" / "train-00000-of-00001.parquet")
    (out / "README.md").write_text(
        _dataset_readme("Rehearsal triplets", {"default": {"train": "data/train-00000-of-00001.parquet"}}))


def write_kd_dataset(sampler: TextSampler, out: Path, rows: int, scored: int, n_documents: int) -> None:
    """The ms-marco-en-bge-gemma layout (queries, documents, train, train_unormalized), random teacher scores."""
    from tools.fixture import _dataset_readme, _write_parquet

    rng = random.Random(1)
    document_ids = list(range(1000, 1000 + n_documents))
    train_ids = [rng.sample(document_ids, scored) for _ in range(rows)]
    raw = [[round(rng.uniform(-10, 10), 4) for _ in range(scored)] for _ in range(rows)]
    normalised = [[round((s - min(r)) / (max(r) - min(r)), 6) for s in r] for r in raw]
    configs: dict[str, dict[str, list]] = {
        "queries": {"query_id": list(range(rows)), "text": [sampler.query() for _ in range(rows)]},
        "documents": {"document_id": document_ids, "text": [sampler.document() for _ in document_ids]},
        "train": {"query_id": list(range(rows)), "document_ids": train_ids, "scores": normalised},
        "train_unormalized": {"query_id": list(range(rows)), "document_ids": train_ids, "scores": raw},
    }
    for name, table in configs.items():
        _write_parquet(table, out / name / "train-00000-of-00001.parquet")
    (out / "README.md").write_text(_dataset_readme(
        "Rehearsal KD set", {c: {"train": f"{c}/train-00000-of-00001.parquet"} for c in configs}))


def write_nano_set(sampler: TextSampler, out: Path, splits: list[str], n_docs: int = 20, n_queries: int = 5) -> None:
    """NanoBEIR layout (corpus, queries, qrels), one split per name (NanoBEIR-en) or split `train` (zeta-alpha)."""
    from tools.fixture import _dataset_readme, _write_parquet

    tables: dict[str, dict[str, str]] = {"corpus": {}, "queries": {}, "qrels": {}}
    for split in splits:
        corpus = {"_id": [f"d{i}" for i in range(n_docs)], "text": [sampler.document() for _ in range(n_docs)]}
        queries = {"_id": [f"q{i}" for i in range(n_queries)], "text": [sampler.query() for _ in range(n_queries)]}
        qrels = {"query-id": queries["_id"], "corpus-id": corpus["_id"][:n_queries]}
        for config, table in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
            _write_parquet(table, out / config / f"{split}.parquet")
            tables[config][split] = f"{config}/{split}.parquet"
    (out / "README.md").write_text(_dataset_readme("Rehearsal NanoBEIR", tables))


def _nanobeir_splits(datasets: list[str]) -> list[str]:
    from sentence_transformers.evaluation.NanoBEIREvaluator import DATASET_NAME_TO_HUMAN_READABLE

    return [f"Nano{DATASET_NAME_TO_HUMAN_READABLE[name]}" for name in datasets]


def write_sources(params: Params, data: Path, rows: dict[str, int], short_texts: bool) -> None:
    """Every source a training phase or an evaluator reads, synthesised into ``data/<key>`` by its role."""
    from transformers import AutoTokenizer

    def base_model(phase) -> str:  # the data/<source> a phase's chain starts from
        while phase.init.startswith("models/"):
            phase = params.phases[phase.init.split("/", 1)[1]]
        return phase.init.split("/", 1)[1]

    def sampler_for(phase) -> TextSampler:
        words = [w for w in AutoTokenizer.from_pretrained(data / base_model(phase)).get_vocab() if w.startswith("w")]
        if short_texts:
            # Documents of 140 words: XTR keeps each query token's top k_train (256) document tokens of the batch,
            # and with the fast path's documents padded to the longest, batch 1's two documents must hold that many
            # (PyLate's own collator pads to document_length; the published batches hold thousands of tokens).
            return TextSampler(words, 6, 140)
        length = phase.splade.max_seq_length if isinstance(phase, SpladePhase) else phase.colbert.document_length
        query = phase.colbert.query_length if not isinstance(phase, SpladePhase) else 32
        return TextSampler(words, query + 8, length + 64)  # longer than the limits: truncation is exercised

    for phase in params.phases.values():
        kind, _, key = phase.init.partition("/")
        if kind == "data" and not (data / key).exists():
            spec = FULL_SIZE / f"{key}.json"
            if not spec.exists():
                raise FileNotFoundError(f"{spec}: no published config for base model {key!r}; add one to rehearse it")
            write_base_model(spec, data / key)
    longest: TextSampler | None = None
    for phase in params.phases.values():
        key = phase.data.split("/", 1)[1]
        if (data / key).exists():
            continue
        sampler = sampler_for(phase)
        longest = sampler if longest is None or sampler.document_words > longest.document_words else longest
        if isinstance(phase, XTRContrastivePhase):
            write_triplets(sampler, data / key, rows[key])
        else:
            n_ways = phase.n_ways if isinstance(phase, XTRDistillationPhase) else 2
            write_kd_dataset(sampler, data / key, rows[key], scored=max(32, n_ways), n_documents=256)
    assert longest is not None
    for model in params.models.values():
        source = params.sources[model.evaluation.data]
        target = data / model.evaluation.data
        if source.members:
            for member in source.members:
                write_nano_set(longest, target / member, ["train"])
        elif not target.exists():
            write_nano_set(longest, target, _nanobeir_splits(model.evaluation.datasets))


# ------------------------------------------------------------------------------------------ rehearsal params
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN computes bf16 products on this CPU (AVX-512 or newer); without it torch's bf16 matmul is a
    scalar fallback more than 100x slower than float32."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def rehearsal_params(raw: dict[str, Any], steps: int, batch_size: int, cuda: bool, compile_on_cpu: bool,
                     overrides: dict[str, Any] | None = None, cpu_bf16: bool = True) -> dict:
    """params.yaml with each phase's arguments changed only where a rehearsal must (the module docstring), plus
    any explicit ``overrides`` (dotted key -> value, e.g. ``phases.modernbert-xtr.n_ways``)."""
    raw = json.loads(json.dumps(raw))
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if last not in node:
            raise KeyError(f"--override {dotted}: no such key in params.yaml")
        node[last] = value
    for phase in raw["phases"].values():
        args = phase["args"]
        args.update(per_device_train_batch_size=batch_size, max_steps=steps, logging_steps=1)
        if args.get("eval_strategy", "no") == "no":  # a phase that evaluates saves at its eval steps
            args["save_steps"] = steps
        if not cuda:
            if args.get("fp16") or args.get("bf16"):
                args.update(fp16=False, bf16=cpu_bf16, use_cpu=True)
            args["torch_compile"] = bool(args.get("torch_compile")) and compile_on_cpu
            if "heavyball_compile" in phase:  # heavyball's own torch.compile of its updates, likewise
                phase["heavyball_compile"] = bool(phase["heavyball_compile"]) and compile_on_cpu
    return raw


def _rows_needed(params: Params, steps: int, batch_size: int) -> dict[str, int]:
    """Training rows per data source: enough for the steps (twice over) plus any held-out evaluation rows."""
    rows: dict[str, int] = {}
    for phase in params.phases.values():
        key = phase.data.split("/", 1)[1]
        needed = 2 * steps * batch_size * phase.args.gradient_accumulation_steps + 16
        needed += getattr(phase, "eval_samples", 0) or 0
        rows[key] = max(rows.get(key, 0), needed)
    return rows


# ------------------------------------------------------------------------------------------ one phase, measured
def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall seconds of each optimizer step, data loading included (from the previous step's end)."""

        def __init__(self):
            self.seconds: list[float] = []
            self.last = 0.0

        def _now(self) -> float:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = self._now()

        def on_step_end(self, args, state, control, **kwargs):
            now = self._now()
            self.seconds.append(now - self.last)
            self.last = now

    return StepTimer()


def run_one_phase(ws: Workspace, phase_key: str) -> dict[str, Any]:
    """In the rehearsal workspace: train one phase via run_phase, measure it."""
    import torch

    from retrievers.train import run_phase

    params = load_params(ws.params_file)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = _step_timer()
    start = time.perf_counter()
    run_phase(ws, params, phase_key, callbacks=[timer])
    args = params.phases[phase_key].args
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = torch.cuda.max_memory_allocated() if cuda else usage.ru_maxrss * 1024
    return {
        "phase": phase_key,
        "recipe": params.phases[phase_key].recipe,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "steps": len(timer.seconds),
        "first_step_s": timer.seconds[0] if timer.seconds else None,
        "later_steps_mean_s": (sum(timer.seconds[1:]) / (len(timer.seconds) - 1)) if len(timer.seconds) > 1 else None,
        "phase_total_s": time.perf_counter() - start,
        # The whole process's CPU time (set-up included): on a shared machine, the figure that load does not inflate.
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_memory_bytes": peak,
        "peak_memory_kind": "CUDA max allocated" if cuda else "process peak RSS",
        "precision": "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
        "torch_compile": args.torch_compile,
        "batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
    }


# ------------------------------------------------------------------------------------------ the command
def prepare(params_file: Path, workdir: Path, steps: int, batch_size: int, short_texts: bool, compile_on_cpu: bool,
            cuda: bool, overrides: dict[str, Any] | None = None) -> Params:
    """A fresh workspace: the rehearsal params.yaml and every source it reads under data/."""
    from retrievers.config import parse_params

    raw = yaml.safe_load(params_file.read_text())
    published = parse_params(raw, str(params_file))
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "data").mkdir(parents=True)
    rehearsal = rehearsal_params(raw, steps, batch_size, cuda, compile_on_cpu, overrides,
                                 cpu_bf16=cuda or cpu_has_fast_bf16())
    (workdir / "params.yaml").write_text(yaml.safe_dump(rehearsal, sort_keys=False))
    params = parse_params(rehearsal, str(workdir / "params.yaml"))
    write_sources(params, workdir / "data", _rows_needed(published, steps, batch_size), short_texts)
    return params


def _describe(result: dict[str, Any], published: Params) -> list[str]:
    args = published.phases[result["phase"]].args
    asked = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    why = "no CUDA" if result["precision"] != "fp32" else "no CUDA, no fast CPU bf16"
    precision = result["precision"] + ("" if result["precision"] == asked else f" (published {asked}; {why})")
    compiled = "on" if result["torch_compile"] else "off"
    if args.torch_compile and not result["torch_compile"]:
        compiled += " (published on; no CUDA: --compile to try)"
    gib = result["peak_memory_bytes"] / 2**30

    def seconds(value):
        return "-" if value is None else f"{value:.2f}"

    return [result["phase"], result["recipe"], f"{result['batch_size']} x GA {result['gradient_accumulation_steps']}",
            str(result["steps"]), seconds(result["first_step_s"]), seconds(result["later_steps_mean_s"]),
            seconds(result["process_cpu_s"]), f"{gib:.2f} GiB ({result['peak_memory_kind']})", precision, compiled]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("build/rehearse"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1, help="per device (XTR KD at 1, n_ways 16: ~11 GiB on CPU)")
    parser.add_argument("--phases", nargs="*", help="a subset of params.yaml's phases (default: all, in order)")
    parser.add_argument("--short-texts", action="store_true", help="a few words per text (CI), not the full lengths")
    parser.add_argument("--compile", action="store_true",
                        help="keep torch_compile (and heavyball_compile) on a machine without CUDA")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=YAML",
                        help="one more params.yaml change, e.g. phases.modernbert-xtr.n_ways=2 (printed)")
    parser.add_argument("--run-phase", help=argparse.SUPPRESS)  # internal: one phase, in the workspace
    args = parser.parse_args(argv)
    if args.run_phase:
        print(RESULT_PREFIX + json.dumps(run_one_phase(Workspace.at(args.workdir), args.run_phase)), flush=True)
        return

    import torch

    from retrievers.pipeline import OFFLINE_ENV

    cuda = torch.cuda.is_available()
    published = load_params(args.params)
    overrides = {key: yaml.safe_load(value) for key, _, value in (o.partition("=") for o in args.override)}
    params = prepare(args.params, args.workdir, args.steps, args.batch_size, args.short_texts, args.compile, cuda,
                     overrides)
    env = os.environ | OFFLINE_ENV | {"MLFLOW_TRACKING_URI": f"sqlite:///{args.workdir.resolve()}/mlflow.db",
                                      "TOKENIZERS_PARALLELISM": "false",
                                      "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    results = []
    for key in args.phases or list(params.phases):
        print(f"rehearse: {key} ...", flush=True)
        process = subprocess.run([sys.executable, "-m", "tools.rehearse", "--run-phase", key,
                                  "--workdir", str(args.workdir.resolve())],
                                 cwd=args.workdir, env=env, capture_output=True, text=True)
        lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if process.returncode != 0 or not lines:
            sys.stderr.write(process.stdout[-5000:] + process.stderr[-20000:])
            sys.exit(f"rehearse: error: phase {key} failed (status {process.returncode}); its output is above")
        results.append(json.loads(lines[-1][len(RESULT_PREFIX):]))
    header = ["phase", "recipe", "batch", "steps", "first step s", "later steps s/step", "process CPU s",
              "peak memory", "precision", "torch_compile"]
    rows = [header] + [_describe(r, published) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    device = results[0]["device"] if results else "-"
    print(f"\nfull-size rehearsal on {device}: {args.steps} optimizer steps per phase, batch {args.batch_size}, "
          f"{'short' if args.short_texts else 'full-length'} synthetic texts"
          + "".join(f"; {key} = {value!r}" for key, value in overrides.items()))
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
