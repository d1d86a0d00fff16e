"""The database: SQLAlchemy tables (models.py) behind one interface (storage.py)."""
from bench.db.storage import RunInfo, SchemaMismatch, Storage, default_url

__all__ = ["Storage", "RunInfo", "SchemaMismatch", "default_url"]
