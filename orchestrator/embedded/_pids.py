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
    read (no ``/proc``), an alive process is taken for the server, as before; where this
    process may not read it (another user's, without CAP_SYS_PTRACE), one run by the
    directory's owner is."""
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
        # another user's cwd takes CAP_SYS_PTRACE, which root lacks in a container run with
        # Docker's default capabilities, while a server run by root runs as its own user:
        # then a process of the user that owns the directory is taken for its server
        return _same_owner(proc / str(pid), directory)
    return os.path.realpath(cwd) == os.path.realpath(directory)


def _same_owner(process: Path, directory: Path) -> bool:
    try:
        return os.stat(process).st_uid == os.stat(directory).st_uid
    except OSError:
        return False  # exited meanwhile, or a directory we may not read: not ours
