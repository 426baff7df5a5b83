"""A separate virtual environment with stock sentence-transformers and its dependencies at the versions of
uv.lock, and NOT this package: where a user without `retrievers` loads a released bundle.

Built offline from uv's cache and kept under build/stock-st/<hash of uv.lock>/, so later runs reuse it:
`uv export --format pylock.toml` gives every locked package with its wheel URLs; the packages that
sentence-transformers needs (its dependency closure in uv.lock) are kept, and `uv pip install --offline` of that
file installs them from the cache (hard links: seconds). Nothing is resolved anew and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_PACKAGE = "sentence-transformers"


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        raise RuntimeError("uv not found (make setup installs it)")
    return found


def locked_closure(package: str) -> set[str]:
    """``package`` and everything it depends on, by name, from uv.lock (with the extras its dependencies
    ask for: torch needs cuda-toolkit[cufile, ...])."""
    locked = {p["name"]: p for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    names: set[str] = set()
    todo: list[dict] = [{"name": package}]
    while todo:
        dependency = todo.pop()
        name = dependency["name"]
        for extra in dependency.get("extra", []):
            todo += locked[name].get("optional-dependencies", {}).get(extra, [])
        if name not in names:
            names.add(name)
            todo += locked[name].get("dependencies", [])
    return names


def _pylock_of(names: set[str]) -> str:
    exported = subprocess.run([_uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--format",
                               "pylock.toml"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    head, *blocks = exported.split("[[packages]]\n")
    kept = [b for b in blocks if re.match(r'name = "([^"]+)"', b).group(1) in names]  # type: ignore[union-attr]
    return head + "".join("[[packages]]\n" + b for b in kept)


def stock_python() -> Path:
    """The environment's python, building the environment first if needed."""
    key = hashlib.sha256((REPO / "uv.lock").read_bytes() + ROOT_PACKAGE.encode()).hexdigest()[:12]
    root = REPO / "build" / "stock-st" / key
    python = root / "bin" / "python"
    if python.exists():
        return python
    scratch = root.with_name(f".{key}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    lock = scratch.parent / f"pylock.{key}-{os.getpid()}.toml"
    lock.write_text(_pylock_of(locked_closure(ROOT_PACKAGE)))
    env = os.environ | {"UV_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([_uv(), "venv", "--quiet", "--python", sys._base_executable, str(scratch)], check=True, env=env)
    subprocess.run([_uv(), "pip", "install", "--quiet", "--python", str(scratch / "bin" / "python"), "-r", str(lock)],
                   check=True, env=env)
    lock.unlink()
    os.replace(scratch, root)  # whole or not at all
    return python
