"""Named points at which a test can have this process killed with SIGKILL (RELIABILITY 24).

`FIVESAFES_FAILPOINTS` (`settings.FaultInjectionSettings`, for tests only) lists points as `name` or
`name:N` (die the N-th time the point is reached), comma-separated; it is read once, when the first
point is reached. It exists for the crash tests, which start the gateway or an agent with it and
restart the process without it. Unset, as in any deployment, reaching a point costs one dictionary
lookup.

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

import functools
import os
import signal
from collections import Counter

ENV = "FIVESAFES_FAILPOINTS"  # FaultInjectionSettings.failpoints: the crash tests set it by name

_reached: Counter[str] = Counter()


@functools.cache
def _plan() -> dict[str, int]:
    """The points asked for, read once: on the first point reached (settings imports the modules that
    reach points, so this module cannot read them at import)."""
    from fivesafes_tes.settings import FaultInjectionSettings

    plan: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in FaultInjectionSettings().failpoints.split(","))):
        name, _, nth = item.partition(":")
        plan[name] = int(nth) if nth else 1
    return plan


def reach(name: str) -> None:
    """Die here with SIGKILL if the test that started this process asked for it."""
    plan = _plan()
    if name not in plan:
        return
    _reached[name] += 1
    if _reached[name] == plan[name]:
        os.kill(os.getpid(), signal.SIGKILL)
