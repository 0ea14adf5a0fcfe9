"""The budget ledger: two-phase holds in PostgreSQL that can never overspend (DESIGN §6)."""

from orchestrator.ledger.service import HoldReceipt, Ledger, StepReceipt

__all__ = ["HoldReceipt", "Ledger", "StepReceipt"]
