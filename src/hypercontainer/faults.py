"""Crash points for tests: hyperd killed (SIGKILL, no clean-up) at a named step of a pod start, so a test can show
that the next hyperd finds and removes everything the dead one had made. Armed once at start from hyperd's
configuration (the hidden `--crash-at POINT` flag); unarmed, a point costs one comparison."""

from __future__ import annotations

import os
import signal

POINTS = ("network", "rootfs", "share", "qemu", "restored", "agent", "start-pod", "container")
_armed: str | None = None


def arm(point: str | None) -> None:
    if point is not None and point not in POINTS:
        raise ValueError(f"unknown crash point {point!r} (one of {', '.join(POINTS)})")
    global _armed
    _armed = point


def point(name: str) -> None:
    """Dies here, as `kill -9` would, if armed for `name`."""
    if _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)
