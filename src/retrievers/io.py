"""Atomic writes: a stage's output appears whole or not at all, so a killed stage leaves nothing to trust.
And the one file digest (sha256) every module uses."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def hash_file(digest, path: Path) -> None:
    """Feed a file's bytes into a hashlib object, in 4 MiB blocks (files of any size)."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    """The sha256 of one file's bytes, hex (what the Hub's LFS ETags and ``sha256sum`` print)."""
    digest = hashlib.sha256()
    hash_file(digest, path)
    return digest.hexdigest()


# What tempfile.mkdtemp / mkstemp add to a prefix: 8 characters of its name sequence.
_TEMP_SUFFIX = "[a-z0-9_]{8}"


def remove_stale_scratch(target: Path) -> None:
    """Remove scratch copies of ``target`` that a killed process left beside it: the names ``atomic_dir`` and
    ``write_text_atomic`` make (``.<name>.<8 characters>``, ``.<name>.old-<8 characters>``), nothing else. A
    workspace runs one ``dvc repro`` at a time (DVC's lock), so any such copy belongs to a dead run."""
    if target.parent.is_dir():
        ours = re.compile(rf"\.{re.escape(target.name)}\.(old-)?{_TEMP_SUFFIX}")
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*"):
            if not ours.fullmatch(stale.name):
                continue
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch folder beside ``target``; on success it replaces ``target`` (a kill at any point leaves the
    old ``target`` or the new one, never a mix; leftovers of a killed run are removed at the next write)."""
    from retrievers.killpoints import kill_point

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(target)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
        kill_point(f"atomic:{target.as_posix()}")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and one rename: a kill or a full disk leaves the previous
    file as it was (and no temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, sort_keys: bool = True) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
