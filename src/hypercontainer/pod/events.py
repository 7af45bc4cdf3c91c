"""Pod events (create, start, running, pause, unpause, restart, exec, die, fail, destroy) and hyperd's own
(`daemon` events: kernel-switch) for `hyperctl events`: the recent ones kept in memory, the new ones handed to every
subscriber."""

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
        self._add({"time": time.time(), "type": "pod", "action": action, "id": pod.id, "name": pod.name,
                   **{k: v for k, v in attrs.items() if v is not None}})

    def record_daemon(self, action: str, attrs: dict[str, object]) -> None:
        """An event of hyperd itself (no tenant's: only the administrator's stream shows it)."""
        self._add({"time": time.time(), "type": "daemon", "action": action, "id": "hyperd", "name": "hyperd",
                   **{k: v for k, v in attrs.items() if v is not None}})

    def _add(self, ev: Event) -> None:
        self.recent.append(ev)
        for q in self._subscribers:
            q.put_nowait(ev)

    def subscribe(self) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(q)
