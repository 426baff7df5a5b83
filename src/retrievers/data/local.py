"""Read a local dataset folder (laid out as the Hub serves it) from its parquet files: exactly the bytes DVC hashed.

``datasets.load_dataset(<folder>, config)`` caches the prepared Arrow data under a key built from the folder's
name and the config, not from what the files hold: a rewritten folder, or another workspace's folder of the same
name, loads whatever was cached first (online or offline). Every stage therefore reads the parquet files a
config names (the YAML ``configs:`` block of the folder's README.md, as the Hub resolves it) with pyarrow, into
an in-memory ``datasets.Dataset`` whose fingerprint is the files' sha256, so nothing downstream can confuse
two contents either.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import yaml

from retrievers.errors import DataError
from retrievers.io import hash_file


class LocalDataError(DataError):
    """A local dataset folder that lacks the config, split, files or columns asked for; names which."""


def _readme_configs(root: Path) -> list[dict] | None:
    readme = root / "README.md"
    if not readme.exists():
        return None
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1]
    configs = (yaml.safe_load(front) or {}).get("configs")
    return configs or None


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def data_files(root: Path, config: str, split: str) -> list[Path]:
    """The parquet files of ``config``/``split`` in ``root``, in the order the Hub (and ``datasets``) reads them.

    With a README ``configs:`` block, its ``data_files`` (paths or globs, per split); without one, the single
    ``default`` config is every parquet file under the folder (split ``train``)."""
    configs = _readme_configs(root)
    if configs is None:
        if config != "default" or split != "train":
            raise LocalDataError(f"{root}: no README.md `configs:` block: only config 'default' split 'train'")
        patterns = ["**/*.parquet"]
    else:
        by_name = {c.get("config_name", "default"): c for c in configs}
        if config not in by_name:
            raise LocalDataError(f"{root}: config {config!r} not found (README.md configs: {sorted(by_name)})")
        entries = by_name[config].get("data_files", [])
        if isinstance(entries, (str, list)) and all(isinstance(e, str) for e in _as_list(entries)):
            entries = [{"split": "train", "path": entries}]
        splits = {e["split"]: _as_list(e["path"]) for e in entries}
        if split not in splits:
            raise LocalDataError(f"{root}: config {config!r} has no split {split!r} (splits: {sorted(splits)})")
        patterns = splits[split]
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(root / pattern), recursive=True))
        files += [Path(m) for m in matched if not Path(m).name.startswith(".")]
    if not files:
        raise LocalDataError(f"{root}: config {config!r} split {split!r} names no existing parquet file ({patterns})")
    return files


def content_sha256(files: list[Path]) -> str:
    """sha256 over the files' bytes (and their order): the fingerprint of what was read."""
    digest = hashlib.sha256()
    for path in files:
        hash_file(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def load_split(root: Path | str, config: str = "default", split: str = "train", columns: list[str] | None = None):
    """One config/split of a local dataset folder as an in-memory ``datasets.Dataset``, read from its parquet files
    (no ``datasets`` cache is consulted or written). ``columns``: the columns to read; each must exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    root = Path(root)
    files = data_files(root, config, split)
    tables = []
    for path in files:
        available = pq.read_schema(path).names
        missing = [c for c in columns or [] if c not in available]
        if missing:
            raise LocalDataError(f"{path}: config {config!r} lacks column(s) {missing} (has {available})")
        tables.append(pq.read_table(path, columns=columns))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return Dataset(table, fingerprint=content_sha256(files)[:32])


class LocalNanoBEIRData:
    """Mixin for the NanoBEIR evaluators: their ``_load_dataset_subset_split`` (sentence-transformers' override
    point, through which each set's corpus, queries and qrels are loaded) reads the local copy's parquet files
    (``load_split``) instead of ``datasets.load_dataset``, whose cache is keyed on the folder's name.

    ``per_set_folders``: PyLate's layout, one folder per set (``<root>/NanoSciFact``, split ``train``), instead of
    one folder whose splits are the sets (sentence-transformers' NanoBEIR-en)."""

    local_root: Path
    per_set_folders: bool = False

    def _load_dataset_subset_split(self, subset: str, split: str, required_columns: list[str]):
        if self.per_set_folders:
            return load_split(self.local_root / split, subset, "train", required_columns)
        return load_split(self.local_root, subset, split, required_columns)
