"""Whether the pid a pid file names is still the server that wrote it.

A server killed outright (a crash, an OOM kill, a reboot) leaves its pid file behind, and the
pid in it may since have gone to an unrelated process: "the pid is alive" alone took that
process for the server (a start then skipped starting PostgreSQL and failed, and killed the
process for a Redis that did not answer). Both servers run in their data directory (Redis
``chdir``s to its ``dir``, PostgreSQL to its ``PGDATA``), so on Linux the process's working
directory says whether it is ours.
"""

from __future__ import annotations

import os
from pathlib import Path


def runs_in(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` is alive and works in ``directory``. Where that cannot be
    read (no ``/proc``), an alive process is taken for the server, as before."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's: the cwd below decides
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return True  # not Linux: cannot tell
    try:
        cwd = os.readlink(proc / str(pid) / "cwd")
    except FileNotFoundError:
        return False  # exited meanwhile
    except PermissionError:
        return False  # a process we may not inspect is not one we started
    return os.path.realpath(cwd) == os.path.realpath(directory)
