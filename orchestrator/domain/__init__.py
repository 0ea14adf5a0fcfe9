"""Pure decisions: no I/O here, only stdlib and pydantic."""
