"""Imported by the check processes' fork server only, after the rules.

Every check process is forked from that server and inherits what is done here, once:

* Arrow's memory pool becomes jemalloc (the system allocator where a wheel has no jemalloc). Arrow's
  default, mimalloc, reserves a 1 GiB arena on its first allocation; made in the server, that
  reservation would count against every check process's address-space limit
  (`checks.worker_memory_bytes`) before a rule had read a byte.
* Arrow's first regex match, which costs about 0.2 s in a fresh process (it builds its tables then),
  so that a hold's check processes start warm.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

try:
    pa.set_memory_pool(pa.jemalloc_memory_pool())
except NotImplementedError:
    pa.set_memory_pool(pa.system_memory_pool())

pc.match_substring_regex(pa.array(["warm"]), "w")
