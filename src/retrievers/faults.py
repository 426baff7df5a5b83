"""The error types of bad input and environment faults (to fold into issue 13's errors.py once it lands).

Each is raised with one line that names the file, row or key and says how to fix it; ``stage_main`` and the CLI
print that line and exit with status 1.
"""

from __future__ import annotations

import errno


class InputError(ValueError):
    """Bad input a user can fix: a malformed table, an unloadable model folder, a parameter out of range."""


class EnvironmentFault(RuntimeError):
    """The machine, not the input: a full disk, an unreachable tracking server."""


class TrainingError(RuntimeError):
    """Training finished but its result must not be used (non-finite weights)."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_line(error: OSError) -> str:
    where = f" writing {error.filename}" if error.filename else ""
    return f"no space left on device{where}; free disk space (or point the workspace at a larger disk) and re-run"
