"""orchestrator: a cost-aware, multi-backend orchestrator for long-running generation jobs."""

__version__ = "0.1.0"
