"""Environment faults: recognising a full disk however a library words it. The error classes live in errors.py."""

from __future__ import annotations

import errno
import shutil

from retrievers.errors import EnvironmentFault, InputError, TrainingError

__all__ = ["EnvironmentFault", "InputError", "TrainingError", "disk_full_line", "is_disk_full"]


def is_disk_full(error: BaseException, workspace: str = ".") -> bool:
    """ENOSPC as an OSError, or as the libraries word it (safetensors: "No space left on device (os error 28)";
    torch.save's zip writer: "unexpected pos", raised as RuntimeError) when the workspace's disk is (nearly) full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if "No space left on device" in text or "os error 28" in text:
        return True
    try:
        return "unexpected pos" in text and shutil.disk_usage(workspace).free < 64 * 2**20
    except OSError:
        return False


def disk_full_line(error: BaseException) -> str:
    filename = getattr(error, "filename", None)
    where = f" writing {filename}" if filename else ""
    return f"no space left on device{where}; free disk space (or point the workspace at a larger disk) and re-run"
