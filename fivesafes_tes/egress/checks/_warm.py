"""Imported by the check processes' fork server only, after the rules.

The first Arrow regex match in a process costs about 0.2 s (Arrow builds its tables then); done once
here, every check process forked from the server finds them built instead of paying it per hold.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

pc.match_substring_regex(pa.array(["warm"]), "w")
