"""The node's database: typed models, engine creation, and migrations (schema only through Alembic)."""
