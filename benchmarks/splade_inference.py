"""SPLADE encoding, stock ``SparseEncoder.encode_document`` against this package's ``InferenceSparseEncoder``
(``retrievers.models.sparse_inference``), side by side: passages/s, peak RSS, and the largest difference of the vectors.

    python benchmarks/splade_inference.py --workdir build/bench-inference [--passages 640] [--threads 1]
        [--models tiny sparse] [--repeats 2]

Models (benchmarks/synthetic.py): ``tiny``, the fixture's tiny NeoBERT (2 x 64, 381-token vocabulary), and
``sparse``, the realistic-vocabulary one (2 x 64, 30,522 tokens, sparse activations); or a model folder. Corpus:
MS MARCO-length passages of Zipf-distributed words. Each (model, path) runs in a fresh process (so peak RSS is
its own), alternating stock and ours ``--repeats`` times; the figure is the median. Batch size 32, as
`retrievers index` encodes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import synthetic  # noqa: E402


def model_folder(name: str, workdir: Path) -> Path:
    if name == "tiny":
        return synthetic.tiny_splade(workdir / "tiny-splade")
    if name == "sparse":
        return synthetic.sparse_splade(workdir / "sparse-splade")
    return Path(name)


def child(folder: str, path: str, corpus: str, passages: int, threads: int, out: str) -> None:
    """Encode in this process; print {passages_per_s, peak_rss_mib, loaded_rss_mib}; save the vectors."""
    import torch

    torch.set_num_threads(threads)
    import retrievers  # noqa: F401  (native NeoBERT)

    if path == "stock":
        from sentence_transformers import SparseEncoder as cls
    else:
        from retrievers.models.sparse_inference import InferenceSparseEncoder as cls
    texts = [json.loads(line)["text"] for line, _ in zip(open(corpus), range(passages), strict=False)]
    model = cls(folder, device="cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.encode_document(texts[:32], batch_size=32, show_progress_bar=False)  # warm
    start = time.perf_counter()
    vectors = model.encode_document(texts, batch_size=32, convert_to_tensor=True, convert_to_sparse_tensor=False,
                                    show_progress_bar=False)
    seconds = time.perf_counter() - start
    np.save(out, vectors.numpy())
    print(json.dumps({"passages_per_s": len(texts) / seconds, "loaded_rss_mib": loaded,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--passages", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["tiny", "sparse"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, path, corpus, passages, threads, out = args.child
        return child(folder, path, corpus, int(passages), int(threads), out)
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = synthetic.write_zipf_corpus(args.workdir / f"zipf-{args.passages}.jsonl", args.passages)
    rows = []
    for name in args.models:
        folder = model_folder(name, args.workdir)
        runs: dict[str, list[dict]] = {"stock": [], "ours": []}
        for _ in range(args.repeats):
            for path in runs:
                out = args.workdir / f"{folder.name}-{path}.npy"
                done = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--child",
                                       str(folder), path, str(corpus), str(args.passages), str(args.threads),
                                       str(out)], check=True, capture_output=True, text=True)
                runs[path].append(json.loads(done.stdout.strip().splitlines()[-1]))
        stock, ours = (np.load(args.workdir / f"{folder.name}-{p}.npy") for p in runs)
        median = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in runs.items()}
        row = {"model": name, "vocabulary": stock.shape[1], "passages": args.passages, "threads": args.threads,
               "stock_passages_per_s": round(median["stock"]["passages_per_s"], 1),
               "ours_passages_per_s": round(median["ours"]["passages_per_s"], 1),
               "speed-up": round(median["ours"]["passages_per_s"] / median["stock"]["passages_per_s"], 2),
               "stock_peak_rss_mib": round(median["stock"]["peak_rss_mib"]),
               "ours_peak_rss_mib": round(median["ours"]["peak_rss_mib"]),
               "stock_rss_after_load_mib": round(median["stock"]["loaded_rss_mib"]),
               "ours_rss_after_load_mib": round(median["ours"]["loaded_rss_mib"]),
               "max_abs_diff": float(np.abs(stock - ours).max()),
               "terms_per_passage": round(float((stock > 0).sum(1).mean()), 1),
               "runs": runs}
        print(json.dumps(row), flush=True)
        rows.append(row)
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
