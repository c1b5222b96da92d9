"""Synthetic datasets for the dev stack and the tests. Nothing here describes a real person.

The names below are loaded lazily from `fivesafes_tes.synthetic.omop`, so that
``python -m fivesafes_tes.synthetic.omop`` runs without the module being imported twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fivesafes_tes.synthetic.omop import (
        COLUMNS,
        CONCEPTS,
        NOTICE,
        PROFILES,
        DatasetInfo,
        TableInfo,
        TreProfile,
        generate,
        load_info,
        verify_dataset,
    )

__all__ = [
    "COLUMNS",
    "CONCEPTS",
    "NOTICE",
    "PROFILES",
    "DatasetInfo",
    "TableInfo",
    "TreProfile",
    "generate",
    "load_info",
    "verify_dataset",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fivesafes_tes.synthetic.omop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
