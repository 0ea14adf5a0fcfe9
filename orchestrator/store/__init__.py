"""SQLAlchemy models, the engine, and repositories."""
