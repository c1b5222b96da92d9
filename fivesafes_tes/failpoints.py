"""Named points at which a test can have this process killed with SIGKILL (RELIABILITY 24).

`FIVESAFES_FAILPOINTS` lists points as `name` or `name:N` (die the N-th time the point is reached),
comma-separated; it is read once, at import. It exists for the crash tests, which start the gateway
or an agent with it and restart the process without it. Unset, as in any deployment, reaching a
point costs one dictionary lookup.

The points, in the order a release passes them:

=========================  =======  ==============================================================
point                      process  reached
=========================  =======  ==============================================================
release.copied             agent    every approved file copied out of the airlock and verified
release.stored             gateway  an uploaded file stored in the results store, not yet recorded
release.recorded           gateway  an uploaded file recorded, before the agent hears so
release.uploaded           agent    the gateway confirmed one uploaded file
release.ended              gateway  the child's final event committed, before any delivery
release.delivered          gateway  one file copied to the destination its TES output url names
release.final_sent         agent    the gateway took the final event, airlock not yet emptied
airlock.discarded          agent    the manifest deleted while the airlock is emptied, its files not yet
=========================  =======  ==============================================================
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "FIVESAFES_FAILPOINTS"


def _plan(text: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, nth = item.partition(":")
        plan[name] = int(nth) if nth else 1
    return plan


_PLAN = _plan(os.environ.get(ENV, ""))
_reached: Counter[str] = Counter()


def reach(name: str) -> None:
    """Die here with SIGKILL if the test that started this process asked for it."""
    if not _PLAN or name not in _PLAN:
        return
    _reached[name] += 1
    if _reached[name] == _PLAN[name]:
        os.kill(os.getpid(), signal.SIGKILL)
