"""Files on disk, SQLAlchemy models, job queue and outbox."""
