"""Pre-tokenised texts: a text table's token ids computed once, batches collated from them with numpy.

The stock collators tokenise every text of every batch in Python (the tokenizer's wrapping, ``BatchEncoding``,
``torch.tensor``), which is most of a step's data cost. Here each text table (the KD ``queries`` and ``documents``)
is tokenised once, in large batches, exactly as the model's ``tokenize`` tokenises one text (strip, lower case if
the module does, truncation to the module's length, special tokens, PyLate's prefix token after the first), and
stored as one flat int32 array plus row offsets (``ids.npy``, ``offsets.npy``, memory-mapped). A batch is then a
gather and a pad (``pad_rows``), which gives the tensors the stock collators give (``tests/test_tokens.py``).

The cache folder is ``checkpoints/tokens/<key>``, outside the DVC outputs, keyed by the table's fingerprint and
everything the ids depend on (the tokenizer's serialisation, length, prefix, lower casing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)
FORMAT = 1  # bump when what the cache holds changes
CHUNK = 8192  # texts per tokenizer call


@dataclass(frozen=True)
class TokenPlan:
    """How one text becomes ids, as the model's ``tokenize`` does it for one column kind."""

    max_length: int  # positions after the prefix is inserted (PyLate's query_length / document_length)
    prefix_id: int | None  # PyLate inserts it after the first token; None: no prefix
    lowercase: bool
    pad_id: int
    token_types: bool  # whether the tokenizer returns token_type_ids (all 0 for single texts)
    input_names: tuple[str, ...]  # the tokenizer's output keys, in its order

    def key(self, tokenizer, table_fingerprint: str) -> str:
        backend = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else repr(tokenizer)
        payload = json.dumps({"format": FORMAT, "table": table_fingerprint, "max_length": self.max_length,
                              "prefix_id": self.prefix_id, "lowercase": self.lowercase,
                              "tokenizer": hashlib.sha256(backend.encode()).hexdigest()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


def plan_for(module, tokenizer, max_length: int, prefix_id: int | None) -> TokenPlan:
    """The plan of an ST ``Transformer``/``MLMTransformer`` first module truncating to ``max_length`` positions."""
    names = tuple(n for n in tokenizer.model_input_names if n in ("input_ids", "token_type_ids", "attention_mask"))
    lowercase = bool(getattr(module, "do_lower_case", False))
    return TokenPlan(max_length=max_length, prefix_id=prefix_id, lowercase=lowercase,
                     pad_id=int(tokenizer.pad_token_id), token_types="token_type_ids" in names, input_names=names)


class TokenCache:
    """The token ids of a table's rows: ``ids`` (flat int32, memory-mapped) and ``offsets`` (rows + 1)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self) -> dict:  # spawned dataloader workers reopen the files instead of copying the ids
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])  # type: ignore[misc]

    def lengths(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self.offsets[rows + 1] - self.offsets[rows]


def tokenize_texts(texts: list[str], tokenizer, plan: TokenPlan) -> list[list[int]]:
    """One chunk of texts -> ids, as ``Transformer.tokenize`` (+ PyLate's prefix insertion) gives them unpadded."""
    texts = [str(t).strip() for t in texts]
    if plan.lowercase:
        texts = [t.lower() for t in texts]
    length = plan.max_length - 1 if plan.prefix_id is not None else plan.max_length
    ids = tokenizer(texts, truncation="longest_first", max_length=length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    if plan.prefix_id is not None:
        ids = [row[:1] + [plan.prefix_id] + row[1:] for row in ids]
    return ids


def build_cache(folder: Path, text_column, tokenizer, plan: TokenPlan) -> None:
    """Tokenise ``text_column`` (a pyarrow (chunked) string array) into ``folder`` (written under a scratch name,
    then renamed: a killed build leaves no cache that a later run would trust)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        lengths = np.zeros(len(text_column), dtype=np.int64)
        with open(scratch / "ids.bin", "wb") as out:
            for start in range(0, len(text_column), CHUNK):
                ids = tokenize_texts(text_column.slice(start, CHUNK).to_pylist(), tokenizer, plan)
                lengths[start : start + len(ids)] = [len(row) for row in ids]
                np.fromiter((t for row in ids for t in row), dtype=np.int32).tofile(out)
        flat = np.fromfile(scratch / "ids.bin", dtype=np.int32)
        np.save(scratch / "ids.npy", flat)
        (scratch / "ids.bin").unlink()
        np.save(scratch / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        try:
            os.replace(scratch, folder)
        except OSError:  # another process (rank) finished the same cache first
            if not (folder / "offsets.npy").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def token_cache(texts, tokenizer, plan: TokenPlan, fingerprint: str, root: Path) -> TokenCache:
    """The cache of ``texts`` (a ``datasets.Dataset`` with a ``text`` column whose content ``fingerprint`` names),
    built on first use in ``root`` (``cache_root``)."""
    folder = root / plan.key(tokenizer, fingerprint)
    if not (folder / "offsets.npy").exists():
        logger.info("pre-tokenising %d texts into %s", len(texts), folder)
        build_cache(folder, texts.data.table.column("text"), tokenizer, plan)
    return TokenCache(folder)


def cache_root(output_dir) -> Path:
    """Where the token caches live: ``tokens`` beside the phase's checkpoint folder (``<workspace>/checkpoints``),
    shared by the phases, outside the DVC outputs."""
    return Path(output_dir).parent / "tokens"


def pad_rows(cache: TokenCache, rows, plan: TokenPlan, width: int | None = None,
             attend_all: bool = False) -> dict[str, torch.Tensor]:
    """The rows' ids padded to ``width`` (default: their longest) as the tokenizer pads them (right, ``pad_id``,
    mask 0, token type 0); ``attend_all``: the mask is all ones (PyLate's queries with attended expansion)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = cache.offsets[rows]
    lengths = cache.offsets[rows + 1] - starts
    if width is None:
        width = int(lengths.max()) if len(rows) else 0
    column = np.arange(width)
    inside = column[None, :] < lengths[:, None]
    ids = np.where(inside, cache.ids[np.where(inside, starts[:, None] + column[None, :], 0)], plan.pad_id)
    mask = np.ones_like(inside, dtype=np.int64) if attend_all else inside.astype(np.int64)
    out = {"input_ids": torch.from_numpy(ids.astype(np.int64)), "attention_mask": torch.from_numpy(mask)}
    if plan.token_types:
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    return {name: out[name] for name in plan.input_names}
