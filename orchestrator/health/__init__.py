"""Shared, atomic breaker and health state in Redis (see ``store``)."""

from orchestrator.health.store import HealthStore, Ticket

__all__ = ["HealthStore", "Ticket"]
