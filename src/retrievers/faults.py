"""The error types of bad input and environment faults (to fold into issue 13's errors.py once it lands).

Each is raised with one line that names the file, row or key and says how to fix it; ``stage_main`` and the CLI
print that line and exit with status 1.
"""

from __future__ import annotations

import errno
import shutil


class InputError(ValueError):
    """Bad input a user can fix: a malformed table, an unloadable model folder, a parameter out of range."""


class EnvironmentFault(RuntimeError):
    """The machine, not the input: a full disk, an unreachable tracking server."""


class TrainingError(RuntimeError):
    """Training finished but its result must not be used (non-finite weights)."""


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
