"""A few threads for the heavy part of a rule's pass over a large file.

Arrow's CSV parser and its RE2 matching release the GIL, so pieces of one file can be worked on at
once while the rule itself sees the results one by one, in file order. At most `threads() + 1`
pieces are in flight, so memory stays bounded however large the file.

The check process sets the count from the TRE's `checks.threads` before running any rule; a rule
called directly (tests, benchmarks) uses up to two of the CPUs it may run on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DEFAULT_MAX = 2
_threads: int | None = None


def set_threads(count: int) -> None:
    """Threads each rule may use in this process (1: work serially)."""
    global _threads
    _threads = max(1, count)


def threads() -> int:
    if _threads is not None:
        return _threads
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(_DEFAULT_MAX, available))


def ordered(work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """`map(work, items)` on `threads()` threads: results in the order of `items`, an exception
    raised where its item's result would have been. Items are drawn only as results are taken."""
    count = threads()
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
