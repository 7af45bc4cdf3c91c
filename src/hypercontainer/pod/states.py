"""Pod states and the transitions allowed between them: one table."""

from __future__ import annotations

import enum

from ..errors import Conflict


class PodState(enum.StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"  # the VM's CPUs are stopped (QMP stop)
    STOPPING = "stopping"
    EXITED = "exited"
    FAILED = "failed"  # never ran: boot or container start failed


TRANSITIONS: dict[PodState, frozenset[PodState]] = {
    PodState.CREATED: frozenset({PodState.STARTING, PodState.FAILED}),
    PodState.STARTING: frozenset({PodState.RUNNING, PodState.STOPPING, PodState.FAILED}),
    PodState.RUNNING: frozenset({PodState.STOPPING, PodState.PAUSED}),
    PodState.PAUSED: frozenset({PodState.RUNNING, PodState.STOPPING}),
    PodState.STOPPING: frozenset({PodState.EXITED, PodState.FAILED}),
    PodState.EXITED: frozenset(),
    PodState.FAILED: frozenset(),
}
FINAL = frozenset({PodState.EXITED, PodState.FAILED})


def check(current: PodState, new: PodState, pod: str) -> None:
    if new not in TRANSITIONS[current]:
        raise Conflict(f"pod {pod} is {current.value}; it cannot become {new.value}")
