"""GetContainerEvents: CONTAINER_CREATED/STARTED/STOPPED/DELETED for containers and sandboxes (a sandbox's events
carry its id as container_id, as containerd sends them), to every subscriber from its subscription on.

Events come from the CRI's own actions, and STOPPED from a watch on each started container's exit (armed again
for running containers when hyperd starts). A sandbox whose VM dies on its own shows as NOTREADY in its status;
no event is sent for that."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

QUEUE_MAX = 1024  # a subscriber that falls this far behind loses the oldest events


class Events:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Any]] = set()
        self._watches: dict[str, asyncio.Task[None]] = {}

    @property
    def listening(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: Any) -> None:
        for q in self._subscribers:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue(QUEUE_MAX)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Any]) -> None:
        self._subscribers.discard(q)

    def watch(self, key: str, done: asyncio.Event, then: Any) -> None:
        """Calls then() once `done` is set (a container's exit); one watch per key."""
        if key in self._watches and not self._watches[key].done():
            return

        async def wait() -> None:
            await done.wait()
            then()

        task = asyncio.ensure_future(wait())
        self._watches[key] = task
        task.add_done_callback(lambda _t: self._watches.pop(key, None) if self._watches.get(key) is _t else None)

    def unwatch(self, key: str) -> None:
        task = self._watches.pop(key, None)
        if task:
            task.cancel()

    def close(self) -> None:
        for task in self._watches.values():
            task.cancel()
        self._watches.clear()
