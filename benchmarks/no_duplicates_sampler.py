"""The no-duplicates batch sampler alone: sentence-transformers' NoDuplicatesBatchSampler against
retrievers.sampling.ScanFreeNoDuplicatesBatchSampler on SPLADE-shaped KD rows (query_id, 32 document ids,
scores, positions), batches of 24, the same seed; batches/s, the one-off code build, and whether the batches agree.

    python benchmarks/no_duplicates_sampler.py [--rows 20000] [--batches 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time


def rows_table(n: int, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    documents = [rng.sample(range(50 * n), 32) for _ in range(n)]
    return Dataset.from_dict({
        "query_id": [rng.randrange(n) for _ in range(n)],  # some queries repeat: the sampler defers those rows
        "document_ids": documents,
        "scores": [[rng.random() for _ in range(32)] for _ in range(n)],
        "positions": [{"query": rng.randrange(n), "documents": d} for d in documents],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=24)
    a = parser.parse_args()
    import torch
    from sentence_transformers.sampler import NoDuplicatesBatchSampler

    from retrievers.sampling import ScanFreeNoDuplicatesBatchSampler

    dataset = rows_table(a.rows)
    out, batches = {}, {}
    for cls in (NoDuplicatesBatchSampler, ScanFreeNoDuplicatesBatchSampler):
        sampler = cls(dataset, batch_size=a.batch_size, drop_last=True, valid_label_columns=["label", "scores"],
                      generator=torch.Generator(), seed=42)
        start = time.perf_counter()
        iterator = iter(sampler)
        first = next(iterator)  # the scan-free sampler builds its codes here
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        rest = list(itertools.islice(iterator, a.batches - 1))
        per_s = (a.batches - 1) / (time.perf_counter() - start)
        batches[cls.__name__] = [first, *rest]
        out[cls.__name__] = {"first_batch_s": round(first_s, 3), "batches_per_s": round(per_s, 1)}
    out["same_batches"] = batches["NoDuplicatesBatchSampler"] == batches["ScanFreeNoDuplicatesBatchSampler"]
    out["rows"], out["batches"] = a.rows, a.batches
    print(json.dumps(out))


if __name__ == "__main__":
    main()
