"""Fixtures shared by the integration tests (the end-to-end rig)."""

from .e2e_support import e2e_sim, rig  # noqa: F401
