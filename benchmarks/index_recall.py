"""Top-10 recall of `retrievers index`'s approximate index against exact (exhaustive) search, with build and
query times: on the fixture's three evaluation sets and on a synthetic corpus.

    python benchmarks/index_recall.py MODEL [MODEL ...] --workdir build/bench-recall [--passages 100000] [--ladder]

MODEL is a model folder (e.g. build/smoke/models/neobert-splade). The synthetic corpus recombines the fixture's
document words at MS MARCO-like lengths (benchmarks/synthetic.py, seeded), or with ``--zipf`` made-up words of
English-like frequencies (for ``synthetic.sparse_splade``'s 30,522-token model); its queries are three to five words of
a random passage, so each has an obvious answer. Each index is built by the command line (`retrievers index`,
which chooses its parameters on pseudo-queries, checks them on held-out ones and prints them); the benchmark then
runs the real queries both ways. ``--ladder`` also builds every candidate setting (and the first ladder's
heap_factor 0.8 step for SPLADE) and measures each on the calibration, held-out and real queries.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import synthetic as synthetic_data  # noqa: E402

SETS = synthetic_data.SETS


def synthetic(workdir: Path, passages: int, queries: int, seed: int = 0, zipf: bool = False) -> tuple[Path, list[dict]]:
    if zipf:  # for a realistic-vocabulary model (synthetic.sparse_splade): Zipf-distributed made-up words
        corpus = synthetic_data.write_zipf_corpus(workdir / f"zipf-{passages}.jsonl", passages, seed=seed)
    else:
        corpus = synthetic_data.write_corpus(workdir / f"synthetic-{passages}.jsonl", passages,
                                             synthetic_data.fixture_words(), seed=seed)
    picks = np.random.default_rng(seed + 1).choice(passages, size=queries, replace=False)
    wanted = set(int(p) for p in picks)
    texts = {}
    with corpus.open() as lines:
        for i, line in enumerate(lines):
            if i in wanted:
                texts[i] = json.loads(line)["text"].split()
    qrng = np.random.default_rng(seed + 2)
    return corpus, [{"id": f"q{n}", "text": " ".join(qrng.choice(texts[int(p)], size=qrng.integers(3, 6),
                                                                  replace=False))} for n, p in enumerate(picks)]


def fixture_set(name: str) -> tuple[Path, list[dict]]:  # every set's corpus file has the same name
    root = REPO / "fixtures" / "datasets" / name
    queries = pq.read_table(next((root / "queries").glob("*.parquet"))).to_pylist()
    return next((root / "corpus").glob("*.parquet")), [{"id": q["_id"], "text": q["text"]} for q in queries]


def measure(model: Path, corpus: Path, queries: list[dict], index_dir: Path) -> dict:
    from retrievers import indexing
    from retrievers.cli import load, search_index

    start = time.perf_counter()
    if not (index_dir / indexing.INDEX_RECORD).exists():  # an index an earlier run finished is measured again
        subprocess.run([str(Path(sys.executable).parent / "retrievers"), "index", str(model), str(corpus),
                        str(index_dir)], check=True)
    index_seconds = time.perf_counter() - start
    record = json.loads((index_dir / indexing.INDEX_RECORD).read_text())
    load(model)  # warm: the timings below are the searches, not the model load
    timings, found = {}, {}
    for mode in ("approximate", "exact"):
        start = time.perf_counter()
        found[mode] = [[(h["id"], h["score"]) for h in r["results"]]
                       for r in search_index(index_dir, queries, 10, exact=mode == "exact")]
        timings[mode] = (time.perf_counter() - start) / len(queries) * 1000
    return {"corpus": corpus.name, "documents": record["documents"], "queries": len(queries),
            "recall@10": round(indexing.recall_at(found["approximate"], found["exact"], 10), 4),
            "top1_agrees": round(float(np.mean([bool(a) and bool(e) and a[0][0] == e[0][0]
                                                for a, e in zip(found["approximate"], found["exact"],
                                                                strict=True)])), 4),
            "mode": record["mode"], "exact_reason": record.get("exact_reason"),
            "build": record.get("build"), "search": record.get("search"),
            "calibration_recall@10": record.get("calibration_recall@10"),
            "heldout_recall@10": record.get("heldout_recall@10"), "met_target": record.get("met_target"),
            "index_command_seconds": round(index_seconds, 1), "encode_seconds": record["encode_seconds"],
            "build_and_calibrate_seconds": record["build_seconds"],
            "approximate_ms_per_query": round(timings["approximate"], 2),
            "exact_ms_per_query": round(timings["exact"], 2)}


def ladder(model: Path, corpus: Path, queries: list[dict], index_dir: Path, extra: list[tuple[dict, dict]]) -> list:
    """Every candidate setting (and ``extra`` ones) built on the index's shards: top-10 recall vs exact on the
    calibration and held-out pseudo-queries `retrievers index` draws, and on the real queries: does the
    calibration rank settings as the real queries do?"""
    from retrievers import indexing, models

    kind = models.for_folder(model)
    encoder = kind.load(model)
    record = json.loads((index_dir / indexing.INDEX_RECORD).read_text())
    total, sample_size = record["documents"], 2 * indexing.CALIBRATION_QUERIES
    step = max(1, total // sample_size)  # the documents encode_corpus samples
    sample = [r["text"] for i, r in enumerate(r for b in indexing.iter_batches(corpus, 4096) for r in b)
              if i % step == 0][:sample_size]
    pseudo = indexing.pseudo_queries(sample, seed=0)
    sets = {"calibration": pseudo[0::2], "held-out": pseudo[1::2], "real": [q["text"] for q in queries]}
    encoded = {name: indexing.encode_texts(kind.KIND, encoder, texts, True) for name, texts in sets.items()}
    exact = {name: indexing.exact_search(index_dir, kind.KIND, e, 10) for name, e in encoded.items()}
    locations = indexing.document_locations(index_dir) if kind.RERANK_DEPTH else None
    rows = []
    for build, search in extra + kind.candidate_settings(total):
        start = time.perf_counter()
        kind.build_index(index_dir, indexing.shards(index_dir, kind.KIND), build, search)
        row = {"build": build, "search": search, "build_seconds": round(time.perf_counter() - start, 1)}
        index = kind.load_index(index_dir, build, search)
        for name, e in encoded.items():
            ids = [f"{name}-{i}" for i in range(kind.count(e))]
            found = indexing.approximate_search(index_dir, kind.KIND, index, e, ids, 10, search, locations)
            row[name] = round(indexing.recall_at(found, exact[name], 10), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    kind.build_index(index_dir, indexing.shards(index_dir, kind.KIND), record["build"], record["search"])  # as chosen
    return rows


OLD_SPLADE_SETTING = ({"n_postings": 3500, "centroid_fraction": 0.1, "summary_energy": 0.4, "max_fraction": 1.5},
                      {"query_cut": "all", "heap_factor": 0.8})  # the first ladder's step that read 1.0 vs 0.716


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--zipf", action="store_true",
                        help="the synthetic corpus of Zipf-distributed words (synthetic.write_zipf_corpus) instead of "
                             "fixture words: for a realistic-vocabulary model such as synthetic.sparse_splade's")
    parser.add_argument("--skip-fixture", action="store_true")
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="the fixture sets to measure")
    parser.add_argument("--ladder", action="store_true",
                        help="also measure every candidate setting on pseudo and real queries (fixture-sized only)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cases = [] if args.skip_fixture else [fixture_set(name) for name in args.sets]
    if args.passages:
        cases.append(synthetic(args.workdir, args.passages, args.queries, zipf=args.zipf))
    rows = []
    for model in args.models:
        for corpus, queries in cases:
            name = corpus.parent.parent.name if corpus.suffix == ".parquet" else corpus.stem
            index_dir = args.workdir / f"{model.name}-{name}"
            row = {"model": model.name, "set": name} | measure(model, corpus, queries, index_dir)
            print(json.dumps(row), flush=True)
            if args.ladder:
                from retrievers import models

                extra = [OLD_SPLADE_SETTING] if models.for_folder(model).KIND == "splade" else []
                row["ladder"] = ladder(model, corpus, queries, index_dir, extra)
            rows.append(row)
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
