"""Per-TRE child stages, the TES state each shows, legal transitions, and the parent's derived state.

All of it is data: an enum and tables. `derive_parent_state` is the one rule for the parent.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from fivesafes_tes.tes import State


class Stage(StrEnum):
    RECEIVED = "received"
    LEASED = "leased"
    AWAITING_TRE_APPROVAL = "awaiting_tre_approval"
    STAGING = "staging"
    RUNNING = "running"
    CHECKING = "checking"
    AWAITING_REVIEW = "awaiting_review"
    RELEASED = "released"
    PARTIALLY_RELEASED = "partially_released"
    EXECUTOR_FAILED = "executor_failed"
    REJECTED_BY_TRE = "rejected_by_tre"
    WITHHELD = "withheld"
    SYSTEM_FAILED = "system_failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self not in _IN_PROGRESS

    def tes_state(self, *, paused_for_review: bool = False) -> State:
        if self is Stage.AWAITING_REVIEW and paused_for_review:
            return State.PAUSED
        return TES_STATE[self]


# In-progress stages in the order a child passes through them: the parent shows the one furthest behind.
_IN_PROGRESS = (
    Stage.RECEIVED,
    Stage.LEASED,
    Stage.AWAITING_TRE_APPROVAL,
    Stage.STAGING,
    Stage.RUNNING,
    Stage.CHECKING,
    Stage.AWAITING_REVIEW,
)
PROGRESS_ORDER = {stage: rank for rank, stage in enumerate(_IN_PROGRESS)}

# Where the task's own code runs or its outputs are read: a lease or an attempt lost here may be the
# task's doing, so the gateway counts lost leases and the agent counts attempts in these stages only.
TASK_ACTS = (Stage.STAGING, Stage.RUNNING, Stage.CHECKING)

TES_STATE: dict[Stage, State] = {
    Stage.RECEIVED: State.QUEUED,
    Stage.LEASED: State.QUEUED,
    Stage.AWAITING_TRE_APPROVAL: State.QUEUED,
    Stage.STAGING: State.INITIALIZING,
    Stage.RUNNING: State.RUNNING,
    Stage.CHECKING: State.RUNNING,
    Stage.AWAITING_REVIEW: State.RUNNING,
    Stage.RELEASED: State.COMPLETE,
    Stage.PARTIALLY_RELEASED: State.COMPLETE,
    Stage.EXECUTOR_FAILED: State.EXECUTOR_ERROR,
    Stage.REJECTED_BY_TRE: State.SYSTEM_ERROR,
    Stage.WITHHELD: State.SYSTEM_ERROR,
    Stage.SYSTEM_FAILED: State.SYSTEM_ERROR,
    Stage.CANCELED: State.CANCELED,
}

_ALWAYS = {Stage.CANCELED, Stage.SYSTEM_FAILED}
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.RECEIVED: frozenset({Stage.LEASED, *_ALWAYS}),
    Stage.LEASED: frozenset({Stage.AWAITING_TRE_APPROVAL, Stage.STAGING, Stage.REJECTED_BY_TRE, *_ALWAYS}),
    Stage.AWAITING_TRE_APPROVAL: frozenset({Stage.STAGING, Stage.REJECTED_BY_TRE, *_ALWAYS}),
    Stage.STAGING: frozenset({Stage.RUNNING, Stage.REJECTED_BY_TRE, *_ALWAYS}),
    Stage.RUNNING: frozenset({Stage.CHECKING, *_ALWAYS}),
    Stage.CHECKING: frozenset({Stage.AWAITING_REVIEW, *_ALWAYS}),
    Stage.AWAITING_REVIEW: frozenset(
        {Stage.RELEASED, Stage.PARTIALLY_RELEASED, Stage.WITHHELD, Stage.EXECUTOR_FAILED, *_ALWAYS}
    ),
}


def can_move(current: Stage, target: Stage) -> bool:
    """Ended stages stay ended; everything else follows TRANSITIONS."""
    return target in TRANSITIONS.get(current, frozenset())


def derive_parent_state(stages: Iterable[Stage], *, paused_for_review: bool = False) -> State:
    """The parent's TES state from its children's stages (DESIGN: "Child stages").

    Any child in progress: the furthest-behind in-progress state. All ended: COMPLETE if any child
    released something, CANCELED if all were canceled, EXECUTOR_ERROR if all failed in the executor,
    else SYSTEM_ERROR.
    """
    stages = list(stages)
    if not stages:
        return State.SYSTEM_ERROR
    in_progress = [s for s in stages if not s.is_final]
    if in_progress:
        return min(in_progress, key=PROGRESS_ORDER.__getitem__).tes_state(paused_for_review=paused_for_review)
    if any(s in (Stage.RELEASED, Stage.PARTIALLY_RELEASED) for s in stages):
        return State.COMPLETE
    if all(s is Stage.CANCELED for s in stages):
        return State.CANCELED
    if all(s is Stage.EXECUTOR_FAILED for s in stages):
        return State.EXECUTOR_ERROR
    return State.SYSTEM_ERROR
