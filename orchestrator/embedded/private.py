"""Files only their owner may read: credentials, passwords and keys under a data dir.

Every write goes through a temporary file created 0600 in the same directory, then renamed
over the target, so a reader never sees half a file, and the result is 0600 whatever mode a
file of that name had before (a rename replaces the inode, mode and all).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # made 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PRIVATE_FILE)  # mkstemp's mode, said once more for any platform
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_private(path: Path) -> str | None:
    """The text of ``path`` (made 0600 first if it was not), or None if it does not exist."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode != PRIVATE_FILE:
        path.chmod(PRIVATE_FILE)
    return path.read_text()


def private_secret(path: Path, nbytes: int = 32) -> str:
    """The secret kept in ``path``; a new random one (URL-safe text) written 0600 the first
    time, so a restart reuses it."""
    kept = read_private(path)
    if kept and kept.strip():
        return kept.strip()
    secret = secrets.token_urlsafe(nbytes)
    write_private(path, secret + "\n")
    return secret


def private_dir(path: Path, *, traverse_gid: int | None = None) -> None:
    """Create ``path`` if needed and make it its owner's alone: 0700. With ``traverse_gid``
    (the embedded PostgreSQL's system user's group when running as root, see
    orchestrator.embedded.postgres), a group-traverse bit already given to that group is kept:
    0710, never read or write for the group, nothing for others."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    keep = traverse_gid is not None and st.st_gid == traverse_gid
    wanted = PRIVATE_DIR | (mode & 0o010 if keep else 0)
    if mode != wanted:
        path.chmod(wanted)
