"""Backend adapters: one per provider protocol, behind ``BackendAdapter`` (see base.py)."""

from orchestrator.backends.base import BackendAdapter, PollResult, Status, Submission
from orchestrator.backends.errors import BackendError, BackendFault, JobFault, TransientError
from orchestrator.backends.http import NO_RETRY, RetryPolicy
from orchestrator.backends.openai import OpenAIAdapter
from orchestrator.backends.predictions import PredictionsAdapter
from orchestrator.backends.registry import make_adapter

__all__ = [
    "NO_RETRY",
    "BackendAdapter",
    "BackendError",
    "BackendFault",
    "JobFault",
    "OpenAIAdapter",
    "PollResult",
    "PredictionsAdapter",
    "RetryPolicy",
    "Status",
    "Submission",
    "TransientError",
    "make_adapter",
]
