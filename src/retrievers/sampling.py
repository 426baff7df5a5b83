"""sentence-transformers' NoDuplicatesBatchSampler without its per-row dataset reads.

The stock sampler walks the shuffled rows and, for every row it visits, reads the row from the dataset
(``dataset[index]``, an Arrow gather and a conversion to Python) and turns each column's value into a string, to
compare against the values already in the batch. That read happens again each time a deferred row is visited.
Here every row's values are turned into integer codes once, column by column (the same strings: ``str`` of the
value as ``datasets`` returns it, equal strings get equal codes, also across columns, as in the stock string set),
and the walk compares codes. The walk itself (shuffle, linked list of remaining rows, deferral of clashing rows,
``drop_last``) is the stock one, so the batches are the stock batches for the same seed and epoch
(``tests/test_sampling.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sentence_transformers.sampler import NoDuplicatesBatchSampler

EXCLUDED = {"dataset_name"}  # sentence_transformers.sampler._EXCLUDE_DATASET_COLUMNS
CHUNK = 65536


def row_value_codes(dataset) -> np.ndarray:
    """[rows, columns] int64: the code of ``str(value)`` of each row's value in each compared column."""
    columns = [c for c in dataset.column_names if c not in EXCLUDED]
    if dataset.format.get("type") is not None or dataset.format.get("format_kwargs"):
        # A formatted or transformed dataset: its rows as the stock sampler reads them (once, not once per visit).
        vocabulary_: dict[str, int] = {}
        return np.array([[vocabulary_.setdefault(str(v), len(vocabulary_)) for k, v in dataset[i].items()
                          if k not in EXCLUDED] for i in range(len(dataset))], dtype=np.int64).reshape(len(dataset), -1)
    table = dataset.with_format(None).data.table
    indices = getattr(dataset, "_indices", None)
    rows = np.arange(len(dataset)) if indices is None else indices.column(0).to_numpy()
    codes = np.zeros((len(rows), len(columns)), dtype=np.int64)
    vocabulary: dict[str, int] = {}
    for j, name in enumerate(columns):
        column = table.column(name)
        for start in range(0, len(rows), CHUNK):
            values = column.take(rows[start : start + CHUNK]).to_pylist()
            codes[start : start + len(values), j] = [vocabulary.setdefault(str(v), len(vocabulary)) for v in values]
    return codes


class ScanFreeNoDuplicatesBatchSampler(NoDuplicatesBatchSampler):
    """``NoDuplicatesBatchSampler`` (same arguments, same batches) comparing precomputed value codes."""

    _codes: np.ndarray | None = None

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        num_rows = len(self.dataset)
        if num_rows == 0:
            return
        if self._codes is None:
            self._codes = row_value_codes(self.dataset)
        values = [tuple(row) for row in self._codes.tolist()]
        index_dtype = torch.int32 if num_rows <= np.iinfo(np.int32).max else torch.int64
        remaining = torch.randperm(num_rows, generator=self.generator, dtype=index_dtype).tolist()
        next_positions = list(range(1, num_rows + 1))
        next_positions[-1] = -1
        head = 0
        while head != -1:
            batch_values: set[int] = set()
            batch: list[int] = []
            current, previous, full = head, -1, False
            while current != -1:
                following = next_positions[current]
                index = remaining[current]
                sample = values[index]
                if not batch_values.isdisjoint(sample):
                    previous, current = current, following  # deferred to a later batch, as in the stock walk
                    continue
                batch.append(index)
                if previous == -1:
                    head = following
                else:
                    next_positions[previous] = following
                if len(batch) == self.batch_size:
                    full = True
                    yield batch
                    break
                batch_values.update(sample)
                current = following
            if not full and not self.drop_last:
                yield batch
