"""A few threads for the heavy part of a rule's pass over a large file.

Arrow's CSV parser and its RE2 matching release the GIL, so pieces of one file can be worked on at
once while the rule itself sees the results one by one, in file order. At most `threads() + 1`
pieces are in flight, so memory stays bounded however large the file.

The check process sets the count from the TRE's `checks.threads` before running any rule; a rule
called directly (tests, benchmarks) uses up to two of the CPUs it may run on. Under an address-space
limit (`checks.worker_memory_bytes`) threads are used only while the limit leaves room for them:
a thread that cannot get its memory dies before `Thread.start()` returns, which then waits forever.
"""

from __future__ import annotations

import os
import re
import resource
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DEFAULT_MAX = 2
_ROOM_PER_THREAD = 128 << 20  # a thread's malloc arena (64 MiB reserved) and stack, its buffers, parse
_threads: int | None = None


def set_threads(count: int) -> None:
    """Threads each rule may use in this process (1: work serially)."""
    global _threads
    _threads = max(1, count)


def threads() -> int:
    """How many threads a rule may use now: the set count, fewer when memory is short."""
    if _threads is not None:
        count = _threads
    else:
        try:
            available = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            available = os.cpu_count() or 1
        count = max(1, min(_DEFAULT_MAX, available))
    return count if count == 1 or _room_for(count) else 1


def _room_for(count: int) -> bool:
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False  # cannot tell: one thread is always safe
    used = re.search(r"VmSize:\s+(\d+) kB", status)
    return used is not None and limit - int(used[1]) * 1024 >= (count + 1) * _ROOM_PER_THREAD


def ordered(work: Callable[[T], R], items: Iterable[T], count: int | None = None) -> Iterator[R]:
    """`map(work, items)` on `count` (by default `threads()`) threads: results in the order of
    `items`, an exception raised where its item's result would have been. Items are drawn only as
    results are taken, at most `count + 1` ahead of the one last returned."""
    count = threads() if count is None else count
    if count == 1:
        yield from map(work, items)
        return
    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(count, thread_name_prefix="rule")
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > count:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
