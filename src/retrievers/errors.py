"""The errors a user can cause and fix: bad params, bad input files, a failed download, a refused release.

Each is raised where the fault is found, with one line that names the file, key or repository and the fix.
Entry points (the stage scripts, the ``retrievers`` command, ``python -m retrievers.reproduce``) turn a
:class:`RetrieversError` into that line on stderr and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class RetrieversError(Exception):
    """Something the user can fix; the message is one line saying what and how."""


class ConfigError(RetrieversError, ValueError):
    """A params.yaml problem a user can fix; its message is one line naming the key."""


class DataError(RetrieversError, ValueError):
    """A malformed input dataset or file; the message names the file, config, column or row."""


class KDDataError(DataError):
    """A malformed KD dataset; the message names the config, column or row."""


class DownloadError(RetrieversError, RuntimeError):
    """One line: which repository failed and what to do."""


class ReleaseError(RetrieversError, RuntimeError):
    """A release refused, with one line saying why and what to do."""


class CLIError(RetrieversError):
    """Bad input to the ``retrievers`` command: printed as one line, exit status 1."""


class MissingInputError(RetrieversError, FileNotFoundError):
    """A file or folder a stage needs is not there; the message names it and the stage that makes it."""


# What an entry point reports as one line: our errors, and a missing file named by the operating system.
USER_ERRORS: tuple[type[BaseException], ...] = (RetrieversError, FileNotFoundError)


def exit_on_user_error(name: str, run: Callable[[], T]) -> T:
    """Run an entry point's body; an error the user can fix ends the process with ``<name>: error: <message>``
    (one line on stderr) and exit status 1. Anything else is a bug and keeps its traceback."""
    try:
        return run()
    except USER_ERRORS as error:
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
