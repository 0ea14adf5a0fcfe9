"""Running processes: ``orchestrator up`` (``up``), an ASGI app on uvicorn in a thread
(``serving``), the start-up heap freeze of long-running processes (``heap``), and the
check of an idle pooled socket (``sockets``)."""
