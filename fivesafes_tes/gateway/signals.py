"""Wake an agent's long-poll the moment its TRE has new work or a cancellation.

Within one process this is immediate; across replicas the long-poll also re-reads the database
every `lease_recheck_s` (half a second by default), so pick-up stays under a second either way.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class WorkSignal:
    def __init__(self) -> None:
        self.closed = False
        self._lock = threading.Lock()
        self._waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = defaultdict(
            set
        )

    def register(self, tre_id: int) -> tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]:
        """Register before looking for work, so a notify in between is not lost."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._lock:
            self._waiters[tre_id].add(entry)
        return entry

    def unregister(self, tre_id: int, entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]) -> None:
        with self._lock:
            self._waiters[tre_id].discard(entry)

    def notify(self, tre_ids: list[int]) -> None:
        """Thread-safe: called from sync routes after their transaction commits."""
        with self._lock:
            entries = [e for tre_id in set(tre_ids) for e in self._waiters.get(tre_id, ())]
        for loop, future in entries:
            loop.call_soon_threadsafe(_resolve, future)

    def close(self) -> None:
        """Release every long-poll now (the server is stopping); later polls answer at once."""
        self.closed = True
        with self._lock:
            entries = [e for waiters in self._waiters.values() for e in waiters]
        for loop, future in entries:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
