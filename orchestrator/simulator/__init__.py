"""A local fake provider server: every catalogue backend under its own path prefix, speaking a
real provider protocol (OpenAI-compatible, or create-then-poll predictions). See app.py."""

from orchestrator.simulator.app import create_app
from orchestrator.simulator.server import RunningSimulator, serve, start_in_thread

__all__ = ["RunningSimulator", "create_app", "serve", "start_in_thread"]
