"""Database engine, sessions and migrations."""

from fivesafes_tes.db.base import Base, utcnow
from fivesafes_tes.db.engine import Database

__all__ = ["Base", "Database", "utcnow"]
