"""Where a SPLADE training step of train@'s path spends its CPU time (torch.profiler, operator totals).

    python benchmarks/splade_profile.py [--hidden 256] [--batch 8] [--accumulation 5] [--steps 2]
    python benchmarks/splade_profile.py --hidden 768 --batch 24 --steps 1   # the CPU mode's widths and batch

A step is ``--accumulation`` micro-batches of (query, positive, negative) with MS MARCO-like lengths (the recipe's
gradient accumulation by default: its optimizer runs once per that many micro-batches) through the fast path
(params.yaml's speed switches) with params.yaml's loss and optimizer (heavyball ForeachMuon, eager), on a 1-layer
NeoBERT of the published vocabulary (benchmarks/train_throughput.py's --small model at ``--hidden``). Prints the
forward, backward and optimizer process-CPU seconds per step and the operators with the largest self CPU time.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=None, help="micro-batches per optimizer step "
                        "(default: params.yaml's gradient_accumulation_steps)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--shapes", action="store_true", help="group the operator table by input shapes")
    a = parser.parse_args()
    import torch
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    import retrievers  # noqa: F401
    from retrievers.config import load_params
    from retrievers.models.splade import build_splade
    from retrievers.train.splade import build_loss, build_optimizer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import _doc_length, _words, size_profile, write_base_model

    phase = load_params(REPO / "params.yaml").phases["neobert-splade"]
    phase = phase.model_copy(update={"heavyball_compile": False})
    accumulation = a.accumulation or phase.args.gradient_accumulation_steps
    size = size_profile("cpu", small=True) | {"hidden": a.hidden, "heads": max(1, a.hidden // 64),
                                              "neo_inter": 4 * a.hidden}
    tmp = Path(tempfile.mkdtemp(prefix="splade-profile-"))
    write_base_model("splade", size, tmp / "neo")
    model = build_splade(tmp / "neo", phase.splade, phase.speed)
    loss = build_loss(model, phase)
    optimizer = build_optimizer(model, phase)
    rng = random.Random(0)
    rows = [{"query": _words(rng, rng.randint(4, 14)), "positive": _words(rng, _doc_length(rng)),
             "negative": _words(rng, _doc_length(rng))} for _ in range(a.batch)]
    batch = SparseEncoderDataCollator(tokenize_fn=model.tokenize)(rows)
    features = [{k[len(p):]: v for k, v in batch.items() if k.startswith(p)} for p in ("query_", "positive_",
                                                                                      "negative_")]
    model.train()

    def step(times: dict) -> None:
        for _ in range(accumulation):
            t = time.process_time()
            parts = loss([dict(f) for f in features], None)
            total = sum(parts.values()) / accumulation
            times["forward"] += time.process_time() - t
            t = time.process_time()
            total.backward()
            times["backward"] += time.process_time() - t
        t = time.process_time()
        with torch.profiler.record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
        times["optimizer"] += time.process_time() - t

    step({"forward": 0.0, "backward": 0.0, "optimizer": 0.0})  # warm-up
    times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=a.shapes) as profile:
        for _ in range(a.steps):
            step(times)
    real = int(sum(f["attention_mask"].sum() for f in features))
    print(f"hidden {a.hidden}, batch {a.batch} triplets x {accumulation}, {real} real tokens per micro-batch; "
          "process CPU s/step: "
          + ", ".join(f"{k} {v / a.steps:.3f}" for k, v in times.items()))
    print(profile.key_averages(group_by_input_shape=a.shapes).table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
