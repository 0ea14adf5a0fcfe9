"""Running processes: ``orchestrator up`` (``up``), an ASGI app on uvicorn in a thread
(``serving``), and the start-up heap freeze of long-running processes (``heap``)."""
