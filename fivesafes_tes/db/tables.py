"""Every table of the gateway, imported so that Base.metadata is complete for Alembic."""

from fivesafes_tes.audit import tables as _audit  # noqa: F401
from fivesafes_tes.auth import tables as _auth  # noqa: F401
from fivesafes_tes.db.base import Base
from fivesafes_tes.submission import tables as _submission  # noqa: F401

metadata = Base.metadata
