"""``Retry-After`` header values as seconds, for the backend adapters: the SDK's parser
(``orchestrator.client.retry_after``), which lives there so that the SDK needs nothing
outside its package."""

from orchestrator.client.retry_after import parse_retry_after

__all__ = ["parse_retry_after"]
