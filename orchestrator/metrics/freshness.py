"""Which gauges a process still keeps up to date, for the sinks that export them.

Each process exports its own series, and beat's ``orchestrator.publish_gauges`` runs in
whichever worker process takes it. A gauge that process set once and never again (a breaker
it saw open) would be exported for ever and hold a max-across-processes alert or panel
("breaker open"). A gauge not set for ``stale_s`` is therefore left out until it is set
again; counters and distributions are totals, true whenever read, and always go out.

The recorder keeps no time per event (its hot path takes no clock): a sink sees a set as a
new ``version`` of the series, and dates it when it first sees that version.
"""

from __future__ import annotations

import threading

from orchestrator.metrics.catalogue import Kind
from orchestrator.metrics.recorder import Point

GAUGE_STALE_S = 300.0


class GaugeFreshness:
    def __init__(self, stale_s: float = GAUGE_STALE_S) -> None:
        self.stale_s = stale_s
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, float]] = {}
        self._lock = threading.Lock()  # Prometheus scrapes may come on several threads

    def fresh(self, point: Point, now: float) -> bool:
        """Whether ``point`` is to be exported at ``now`` (any clock, used consistently)."""
        if point.metric.kind is not Kind.GAUGE:
            return True
        with self._lock:
            seen = self._seen.get(point.key)
            if seen is None or seen[0] != point.version:
                self._seen[point.key] = (point.version, now)
                return True
            return now - seen[1] < self.stale_s
