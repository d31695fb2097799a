"""Ray starts its worker processes at niceness 15; the processes doing the run's work undo that on CPU."""

from __future__ import annotations

import os


def restore_priority() -> None:
    """Undo Ray's worker niceness (15) for this thread and the threads it starts.

    On CPU the OpenMP threads of an engine or a trainer work in lock-step; at nice 15
    every wake-up of a Ray daemon (raylet, GCS, dashboard) or of any other process
    preempts one of them and stalls the whole batch. Lowering niceness needs privileges;
    without them we keep Ray's setting.
    """
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass
