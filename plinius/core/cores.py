"""How many CPUs this process may run on: what thread pools and measurements size themselves by
(its affinity mask, which a container or ``taskset`` narrows, not the machine's CPU count)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPUs this process may run on (``os.cpu_count()`` where affinity is not available)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
