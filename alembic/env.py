"""Alembic environment: URL from storage.db.upgrade (or the env), metadata from the models."""

from __future__ import annotations

import os

from sqlalchemy import engine_from_config, pool

from alembic import context
from storage.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("WECARE_STORAGE__DATABASE_URL")
if not url:
    raise SystemExit(
        "alembic: no database URL (set sqlalchemy.url or WECARE_STORAGE__DATABASE_URL)"
    )


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        {"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
