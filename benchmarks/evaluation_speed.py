"""NanoBEIR evaluation speed: evaluate@'s path against the stock evaluators, side by side on the fixture's sets.

    python benchmarks/evaluation_speed.py [--repeats 2] [--output results.json]

Per kind, the same saved model folder (random weights of benchmarks/train_throughput.py's --small size: 1 layer,
hidden 256, the published 30522-word vocabulary, published query/document lengths) is evaluated
- as evaluate@ does: loaded by ``retrievers.models.<kind>.load`` (for SPLADE the ``InferenceSparseEncoder``, whose
  inference forward never holds the tokens x vocabulary logits) and evaluated by ``retrievers.models.<kind>.evaluate``
  (the stock evaluator class fed from the local parquet files through its data hook), and
- as the libraries ship it: loaded by the stock class (PyLate ``ColBERT``, sentence-transformers ``SparseEncoder``)
  and evaluated by the stock evaluator, pointed at the same local folders: PyLate's
  ``NanoBEIREvaluator`` with its module-level ``MAPPING_DATASET_NAME_TO_ID`` aimed at the fixture's per-set
  folders (it loads them with ``datasets.load_dataset``); sentence-transformers' ``SparseNanoBEIREvaluator`` with
  ``dataset_id`` = the fixture's NanoBEIR-en folder.
Reports wall and process CPU seconds per evaluation (best of ``--repeats``) and whether the metrics are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "datasets"
SETS = ["msmarco", "scifact", "nfcorpus"]
BATCH = 64  # the smoke profile's evaluation batch size


def _published():
    from retrievers.config import load_params

    return load_params(REPO / "params.yaml")


def _timed(fn, repeats: int) -> tuple[dict, float, float]:
    best_wall = best_cpu = float("inf")
    result: dict = {}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return result, best_wall, best_cpu


def colbert(tmp: Path, repeats: int) -> dict:
    import pylate.evaluation.nano_beir_evaluator as pylate_nano
    from pylate.evaluation import NanoBEIREvaluator
    from pylate.models import ColBERT

    from retrievers.config import PyLateNanoBEIR
    from retrievers.models import colbert as kind

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import size_profile, write_base_model

    write_base_model("xtr-distillation", size_profile("cpu", small=True), tmp / "xtr")
    kind.build_colbert(tmp / "xtr", _published().phases["modernbert-xtr"].colbert).save(str(tmp / "colbert"))
    root = tmp / "zeta"
    root.mkdir()
    for name in ("NanoMSMARCO", "NanoSciFact", "NanoNFCorpus"):
        (root / name).symlink_to(FIXTURES / f"tiny-{name}")
    evaluation = PyLateNanoBEIR(evaluator="pylate-nanobeir", data="unused", datasets=SETS, batch_size=BATCH)
    ours, ours_wall, ours_cpu = _timed(lambda: kind.evaluate(kind.load(tmp / "colbert"), evaluation, root), repeats)
    folders = {"msmarco": "NanoMSMARCO", "scifact": "NanoSciFact", "nfcorpus": "NanoNFCorpus"}
    for name in SETS:
        pylate_nano.MAPPING_DATASET_NAME_TO_ID[name] = str(root / folders[name])
    stock, stock_wall, stock_cpu = _timed(
        lambda: NanoBEIREvaluator(dataset_names=SETS, batch_size=BATCH, show_progress_bar=False)(
            ColBERT(str(tmp / "colbert"))), repeats)
    return _row("colbert (PyLate NanoBEIREvaluator)", ours, stock, ours_wall, ours_cpu, stock_wall, stock_cpu)


def splade(tmp: Path, repeats: int) -> dict:
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.evaluation import SparseNanoBEIREvaluator

    from retrievers.config import SparseNanoBEIR
    from retrievers.models import splade as kind

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import size_profile, write_base_model

    write_base_model("splade", size_profile("cpu", small=True), tmp / "neo")
    kind.build_splade(tmp / "neo", _published().phases["neobert-splade"].splade).save(str(tmp / "splade"))
    root = FIXTURES / "tiny-NanoBEIR-en"
    evaluation = SparseNanoBEIR(evaluator="sparse-nanobeir", data="unused", datasets=SETS, batch_size=BATCH)
    ours, ours_wall, ours_cpu = _timed(lambda: kind.evaluate(kind.load(tmp / "splade"), evaluation, root), repeats)
    stock, stock_wall, stock_cpu = _timed(lambda: SparseNanoBEIREvaluator(
        dataset_names=SETS, dataset_id=str(root), batch_size=BATCH, show_progress_bar=False)(
        SparseEncoder(str(tmp / "splade"))), repeats)
    return _row("splade (ST SparseNanoBEIREvaluator)", ours, stock, ours_wall, ours_cpu, stock_wall, stock_cpu)


def _row(name, ours, stock, ours_wall, ours_cpu, stock_wall, stock_cpu) -> dict:
    shared = sorted(set(ours) & set(stock))
    differences = [k for k in shared if ours[k] != stock[k]]
    return dict(evaluator=name, sets=SETS, ours_wall_s=round(ours_wall, 2), ours_cpu_s=round(ours_cpu, 2),
                stock_wall_s=round(stock_wall, 2), stock_cpu_s=round(stock_cpu, 2),
                cpu_ratio_stock_over_ours=round(stock_cpu / ours_cpu, 2), metrics_compared=len(shared),
                metrics_different=differences[:5], ndcg10=ours.get("NanoBEIR_mean_MaxSim_ndcg@10",
                                                                    ours.get("NanoBEIR_mean_dot_ndcg@10")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", choices=["colbert", "splade"], default=["colbert", "splade"])
    parser.add_argument("--output", type=Path, default=None)
    a = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import retrievers  # noqa: F401  (registers the native NeoBERT)

    results = []
    for name in a.kinds:
        with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
            results.append({"colbert": colbert, "splade": splade}[name](Path(tmp), a.repeats))
        print(json.dumps(results[-1]), flush=True)
    if a.output:
        a.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
