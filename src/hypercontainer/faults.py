"""Crash points for tests: at a named step of a pod start, hyperd is killed (SIGKILL, no clean-up) so a test can
show that the next hyperd finds and removes everything the dead one had made; or, with a victim (`POINT:qemu`,
`POINT:virtiofsd`), that process of the starting pod is killed there, once, and hyperd must fail that start cleanly
and serve on. Armed once at start from hyperd's configuration (the hidden `--crash-at POINT[:VICTIM]` flag);
unarmed, a point costs one comparison."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

POINTS = ("network", "rootfs", "share", "qemu", "restored", "agent", "start-pod", "container")
VICTIMS = ("hyperd", "qemu", "virtiofsd")
_armed: str | None = None
_victim = "hyperd"
_pids: Callable[[], dict[str, int | None]] = dict  # the starting pod's processes (track)


def parse(spec: str) -> tuple[str, str]:
    """'POINT' or 'POINT:VICTIM' -> (point, victim); ValueError naming what is wrong."""
    name, _, victim = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r} (one of {', '.join(POINTS)})")
    if victim and victim not in VICTIMS:
        raise ValueError(f"unknown victim {victim!r} (one of {', '.join(VICTIMS)})")
    return name, victim or "hyperd"


def arm(spec: str | None) -> None:
    global _armed, _victim
    _armed, _victim = parse(spec) if spec is not None else (None, "hyperd")


def track(pids: Callable[[], dict[str, int | None]]) -> None:
    """The pod that starts now: `pids()` gives its QEMU's and virtiofsd's pids (None until they exist)."""
    global _pids
    if _armed is not None:
        _pids = pids


def point(name: str) -> None:
    """Dies here, as `kill -9` would, if armed for `name`; with a victim, kills that process of the pod tracked
    instead, the first time only."""
    global _armed
    if _armed != name:
        return
    if _victim == "hyperd":
        os.kill(os.getpid(), signal.SIGKILL)
    pid = _pids().get(_victim)
    if pid:
        _armed = None
        logging.getLogger(__name__).warning("crash point %s: killing %s (pid %d)", name, _victim, pid)
        os.kill(pid, signal.SIGKILL)
