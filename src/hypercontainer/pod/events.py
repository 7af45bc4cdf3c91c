"""Pod events (create, start, running, pause, unpause, restart, exec, die, fail, destroy) for `hyperctl events`:
the recent ones kept in memory, the new ones handed to every subscriber."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Protocol

# One event, as `hyperctl events` prints it: a JSON object (time, type, action, id, name, then the action's
# attributes).
Event = dict[str, Any]


class Subject(Protocol):
    """What an event is about: a pod."""
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


class EventLog:
    def __init__(self, keep: int = 1024) -> None:
        self.recent: collections.deque[Event] = collections.deque(maxlen=keep)
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def record(self, pod: Subject, action: str, attrs: dict[str, object]) -> None:
        ev: Event = {"time": time.time(), "type": "pod", "action": action, "id": pod.id, "name": pod.name,
                     **{k: v for k, v in attrs.items() if v is not None}}
        self.recent.append(ev)
        for q in self._subscribers:
            q.put_nowait(ev)

    def subscribe(self) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(q)
