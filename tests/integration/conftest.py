"""Fixtures shared by the integration tests (the end-to-end rig, the client CLI app)."""

from .api_fixture import cli  # noqa: F401
from .e2e_support import e2e_sim, rig  # noqa: F401
