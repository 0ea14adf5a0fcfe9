"""Running processes: ``orchestrator up`` (``up``), an ASGI app on uvicorn in a thread
(``serving``), the start-up heap freeze of long-running processes (``heap``), the check of
an idle pooled socket (``sockets``), SIGTERM as an exit (``signals``) and the environment of
programs not ours (``children``)."""
