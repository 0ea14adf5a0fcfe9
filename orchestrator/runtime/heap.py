"""Start-up heap freezing for the long-running processes (the API and the worker).

A process holding FastAPI, pydantic, SQLAlchemy and Celery keeps a few hundred thousand
long-lived objects from its imports and start-up. CPython's full (generation 2) collection
walks every one of them, and the process answers nothing meanwhile: 36-132 ms per collection
measured in ``orchestrator up``'s API and worker under bench/submit.py's load.
Once start-up is over those objects live as long as the process, so they are moved to the
collector's permanent generation (``gc.freeze``): later collections walk only what requests and
tasks allocate.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up garbage, then freeze what survives; returns how many objects froze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
