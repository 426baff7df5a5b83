"""The errors a user can cause and fix: bad params, bad input files, a failed download, a refused release.

Each is raised where the fault is found, with one line that names the file, key or repository and the fix.
Entry points (the stage scripts, the ``retrievers`` command, ``python -m retrievers.reproduce``) turn a
:class:`RetrieversError` into that line on stderr and exit status 1.
"""

from __future__ import annotations


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
