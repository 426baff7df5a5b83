"""Developer tools, not part of the installed library: run from the repository root as ``python -m tools.<name>``."""
