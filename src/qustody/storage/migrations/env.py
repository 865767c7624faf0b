"""Alembic environment: migrations run on a connection handed in by
:meth:`qustody.storage.db.Database.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from qustody.storage.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` command line: used only to autogenerate
    connection = create_engine(config.get_main_option("sqlalchemy.url") or "").connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
