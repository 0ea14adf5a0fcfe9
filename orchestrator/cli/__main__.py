"""``python -m orchestrator.cli``: how ``orchestrator up`` starts its children."""

from orchestrator.cli.main import main

main()
