"""A whole-operation time limit for a blocking socket conversation (an HTTP POST, an SMTP
delivery). Libraries' timeouts bound each read and write, so a peer trickling its answer a
byte at a time would hold the calling thread for as long as it likes. When the limit passes,
a timer thread shuts down the socket being watched, and the blocked read or write in the
calling thread fails at once; ``fired`` then tells the caller it was the limit, not the peer.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Watchdog:
    def __init__(self, limit_s: float | None) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = None if limit_s is None else threading.Timer(limit_s, self.fire)
        if self._timer is not None:
            self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock`` at the limit (at once if it has passed): the connection in use now."""
        with self._lock:
            self._sock = sock
            if self.fired:
                _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def __enter__(self) -> Watchdog:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already: nothing left to cut
        sock.shutdown(socket.SHUT_RDWR)
