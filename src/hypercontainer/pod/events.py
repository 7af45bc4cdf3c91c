"""Pod events (create, start, running, pause, unpause, restart, exec, die, fail, destroy) for `hyperctl events`:
the recent ones kept in memory, the new ones handed to every subscriber."""

from __future__ import annotations

import asyncio
import collections
import time


class EventLog:
    def __init__(self, keep: int = 1024) -> None:
        self.recent: collections.deque[dict] = collections.deque(maxlen=keep)
        self._subscribers: set[asyncio.Queue[dict]] = set()

    def record(self, pod: object, action: str, attrs: dict) -> None:
        ev = {"time": time.time(), "type": "pod", "action": action, "id": pod.id, "name": pod.name,  # type: ignore[attr-defined]
              **{k: v for k, v in attrs.items() if v is not None}}
        self.recent.append(ev)
        for q in self._subscribers:
            q.put_nowait(ev)

    def subscribe(self) -> asyncio.Queue[dict]:
        q: asyncio.Queue[dict] = asyncio.Queue()
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict]) -> None:
        self._subscribers.discard(q)
