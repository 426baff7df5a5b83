"""Named points where the kill harness (benchmarks/kill_harness.py, tests/test_kill_harness.py) SIGKILLs a stage.

``RETRIEVERS_KILL_AT=<point>`` makes the process send SIGKILL to its whole process group when it reaches that point
(``RETRIEVERS_KILL_AT=step:7`` after training step 7, ``model-save`` inside the model's atomic save, ...). Unset, a
kill point costs one dictionary lookup. The kill is real: nothing runs after it, no handler, no cleanup.
"""

from __future__ import annotations

import os
import signal

ENV = "RETRIEVERS_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    os.environ.pop(ENV)
    os.killpg(os.getpgid(0), signal.SIGKILL)
