"""The orchestrator SDK: ``Client`` and ``AsyncClient`` over the HTTP API.

Depends on httpx, httpx-sse (the job event streams of ``events()`` and ``wait()``) and
pydantic, and on nothing else of the orchestrator, so it can be vendored or installed alone::

    from orchestrator.client import Client
    with Client() as c:                       # ORCH_API_URL / ORCH_API_KEY
        job = c.submit(kind="video", input={"prompt": "a cat", "duration_s": 8},
                       tier="standard", max_cost_usd=2.5)
        job = c.wait(job.id, timeout=600)
"""

from orchestrator.client._core import RetryPolicy
from orchestrator.client.async_ import AsyncClient
from orchestrator.client.errors import (
    ApiConnectionError,
    ApiError,
    BudgetExceeded,
    Conflict,
    Forbidden,
    InvalidRequest,
    NoEligibleBackend,
    NotFound,
    NotReadyYet,
    RateLimited,
    ResultExpired,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from orchestrator.client.models import (
    FINAL_STATUSES,
    ApiKey,
    Attempt,
    Backend,
    Breaker,
    Budget,
    Candidate,
    DeliveryPage,
    ErrorInfo,
    Excluded,
    Job,
    JobEvent,
    JobResult,
    Page,
    Quote,
    WebhookDelivery,
)
from orchestrator.client.sync import Client

__all__ = [
    "FINAL_STATUSES",
    "ApiConnectionError",
    "ApiError",
    "ApiKey",
    "AsyncClient",
    "Attempt",
    "Backend",
    "Breaker",
    "Budget",
    "BudgetExceeded",
    "Candidate",
    "Client",
    "Conflict",
    "DeliveryPage",
    "ErrorInfo",
    "Excluded",
    "Forbidden",
    "InvalidRequest",
    "Job",
    "JobEvent",
    "JobResult",
    "NoEligibleBackend",
    "NotFound",
    "NotReadyYet",
    "Page",
    "Quote",
    "RateLimited",
    "ResultExpired",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WebhookDelivery",
]
