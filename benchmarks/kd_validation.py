"""Time the KD-set validation (retrievers.data.validate.check_kd_tables) and the id join on a synthetic table of the
published size: 808,731 queries, 8,841,823 documents, 32 scored documents per query.

    python benchmarks/kd_validation.py [--documents 8841823] [--queries 808731] [--per-query 32]

Texts are random letters of 20-180 characters (mean 100; the published documents are ~350, which changes memory,
not this check's time: it reads texts' lengths, and the bytes only of texts of 64 bytes or fewer). Prints one JSON
line with the seconds of each part and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def _texts(rng: np.random.Generator, count: int) -> pa.Array:
    lengths = rng.integers(20, 181, size=count)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = rng.integers(97, 123, size=int(offsets[-1]), dtype=np.uint8)
    data[::7] = 32  # spaces
    return pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=8_841_823)
    parser.add_argument("--queries", type=int, default=808_731)
    parser.add_argument("--per-query", type=int, default=32)
    args = parser.parse_args()
    from retrievers.data.kd import attach_positions
    from retrievers.data.validate import check_kd_tables

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    documents = pa.table({"document_id": rng.permutation(args.documents).astype(np.int64),
                          "text": _texts(rng, args.documents)})
    queries = pa.table({"query_id": rng.permutation(args.queries).astype(np.int64), "text": _texts(rng, args.queries)})
    flat = rng.integers(0, args.documents, size=args.queries * args.per_query, dtype=np.int64)
    offsets = pa.array(np.arange(0, flat.size + 1, args.per_query, dtype=np.int32))
    train = pa.table({
        "query_id": rng.permutation(args.queries).astype(np.int64),
        "document_ids": pa.ListArray.from_arrays(offsets, pa.array(flat)),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(rng.normal(size=flat.size))),
    })
    built = time.perf_counter() - start
    start = time.perf_counter()
    check_kd_tables(Path("synthetic"), "train", queries, documents, train)
    checked = time.perf_counter() - start
    start = time.perf_counter()
    attach_positions(queries, documents, train, "synthetic")
    joined = time.perf_counter() - start
    print(json.dumps({"queries": args.queries, "documents": args.documents, "scored_pairs": int(flat.size),
                      "build_s": round(built, 1), "check_kd_tables_s": round(checked, 2),
                      "attach_positions_s": round(joined, 2),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
