"""Peak memory and time of preparing a full-size KD dataset: retrievers' Arrow path vs PyLate's KDProcessing.

    python benchmarks/kd_preparation.py --workdir /tmp/kd-bench            # published size
    python benchmarks/kd_preparation.py --workdir /tmp/kd-bench --scale 0.1

Builds a synthetic dataset in the ms-marco-en-bge-gemma layout (808,731 queries, 8,841,823 documents of
about 350 characters, ``n_candidates`` scored documents per query; sizes of the sibling ms-marco-en-bge
set), then runs each preparation in a fresh child process and reports its peak RSS (ru_maxrss) and wall
time, and the ratios. Each path prepares the data and fetches ``--batches`` training batches of 16 x n_ways.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

QUERIES, DOCUMENTS = 808_731, 8_841_823


def build(root: Path, n_queries: int, n_documents: int, n_candidates: int, seed: int = 0) -> None:
    """Write the three configs as parquet shards plus the README `configs:` block (skipped if present)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (root / "README.md").exists():
        return
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(30_000)])
    pools = {}  # texts are drawn from a pool of 100k distinct ones: realistic lengths, cheap to build

    def texts(n: int, length: int) -> pa.Array:
        if length not in pools:
            tokens = rng.integers(0, len(words), size=(100_000, length // 6))
            pools[length] = np.array([" ".join(row) for row in words[tokens]], dtype=object)
        return pa.array(pools[length][rng.integers(0, 100_000, size=n)], type=pa.string())

    shard = 500_000
    for config, total, make in (
        ("queries", n_queries, lambda lo, n: {"query_id": pa.array(np.arange(lo, lo + n) * 7), "text": texts(n, 36)}),
        ("documents", n_documents,
         lambda lo, n: {"document_id": pa.array(np.arange(lo, lo + n) * 3), "text": texts(n, 350)}),
        ("train", n_queries, lambda lo, n: {
            "query_id": pa.array(np.arange(lo, lo + n) * 7),
            "document_ids": pa.array(list(rng.integers(0, n_documents, size=(n, n_candidates)) * 3)),
            "scores": pa.array(list(rng.random((n, n_candidates)).astype(np.float32)))}),
    ):
        folder = root / config
        folder.mkdir(parents=True, exist_ok=True)
        for i, lo in enumerate(range(0, total, shard)):
            n = min(shard, total - lo)
            pq.write_table(pa.table(make(lo, n)), folder / f"train-{i:05d}.parquet")
    lines = ["---", "configs:"]
    for config in ("queries", "documents", "train"):
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train", f"    path: {config}/*.parquet"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))


def run_arrow(root: Path, n_ways: int, batches: int) -> None:
    from retrievers.data.kd import kd_training_dataset, load_kd_tables

    dataset = kd_training_dataset(load_kd_tables(root, "train"), n_ways)
    for b in range(batches):
        batch = dataset[b * 16 : (b + 1) * 16]
        assert len(batch["documents"]) == 16 and len(batch["documents"][0]) == n_ways


def run_stock(root: Path, n_ways: int, batches: int) -> None:
    from datasets import load_dataset
    from pylate.utils import KDProcessing

    train = load_dataset(str(root), "train", split="train")
    train.set_transform(KDProcessing(queries=load_dataset(str(root), "queries", split="train"),
                                     documents=load_dataset(str(root), "documents", split="train"),
                                     n_ways=n_ways).transform)
    for b in range(batches):
        batch = train[b * 16 : (b + 1) * 16]
        assert len(batch["documents"]) == 16 and len(batch["documents"][0]) == n_ways


def warm_cache(root: Path, n_ways: int, batches: int) -> None:
    """Build datasets' Arrow cache of the parquet files once, so neither measured path pays for it."""
    from datasets import load_dataset

    for config in ("queries", "documents", "train"):
        load_dataset(str(root), config, split="train")


def child(path: str, root: Path, n_ways: int, batches: int) -> None:
    start = time.perf_counter()
    {"arrow": run_arrow, "stock": run_stock, "warm": warm_cache}[path](root, n_ways, batches)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    print(json.dumps({"path": path, "seconds": round(seconds, 1), "peak_rss_gib": round(peak_gib, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--n-candidates", type=int, default=32)
    parser.add_argument("--n-ways", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--paths", default="arrow,stock")
    parser.add_argument("--child", choices=["arrow", "stock", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.workdir / f"kd-{args.scale:g}"
    if args.child:
        child(args.child, root, args.n_ways, args.batches)
        return
    n_queries, n_documents = int(QUERIES * args.scale), int(DOCUMENTS * args.scale)
    start = time.perf_counter()
    build(root, n_queries, n_documents, args.n_candidates)
    print(f"dataset: {n_queries:,} queries, {n_documents:,} documents, {args.n_candidates} candidates "
          f"({time.perf_counter() - start:.0f} s to build or reuse) in {root}")
    results = {}
    for path in ["warm", *args.paths.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--scale", str(args.scale),
                              "--n-ways", str(args.n_ways), "--batches", str(args.batches), "--child", path],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{path}: failed\n{out.stderr[-2000:]}")
            continue
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])
        if path == "warm":
            print(f"(datasets cache built in {results.pop(path)['seconds']:.0f} s, not counted)")
            continue
        print(f"{path:>6}: {results[path]['seconds']:>8.1f} s  peak RSS {results[path]['peak_rss_gib']:.2f} GiB")
    if {"arrow", "stock"} <= results.keys():
        a, s = results["arrow"], results["stock"]
        print(f"ratio stock/arrow: time {s['seconds'] / a['seconds']:.2f}x, "
              f"peak RSS {s['peak_rss_gib'] / a['peak_rss_gib']:.2f}x")


if __name__ == "__main__":
    main()
