from __future__ import annotations

import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``port``. Bound as the servers bind theirs (SO_REUSEADDR), so that
    the connections a server just closed (TIME_WAIT) do not count: a restarted server gets
    its port back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def remembered_port(path: Path) -> int:
    """The port used last time under this data dir if still free, else a new free one."""
    try:
        port = int(path.read_text().strip())
        if port_is_free(port):
            return port
    except (OSError, ValueError):
        pass
    port = free_port()
    path.write_text(str(port))
    return port
