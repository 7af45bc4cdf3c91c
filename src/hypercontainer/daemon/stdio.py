"""Attaching a client's websocket to a guest process: output and exit out, stdin, signals and resizes in.

Frames to the client: binary `0x01 data` (stdout), `0x02 data` (stderr); text JSON `{"type": "exit", "code"}`
or `{"type": "error", ...}` last. From the client: binary `0x00 data` (stdin); text JSON `{"type": "stdin_eof"}`,
`{"type": "signal", "signal": N}`, `{"type": "resize", "rows", "cols"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from fastapi import WebSocket, WebSocketDisconnect

from ..errors import HCError
from ..pod.container import Container, Event
from ..pod.pod import Pod
from ..protocol.client import STREAM_QUEUE, ProcessStreams

STDIN, STDOUT, STDERR = 0, 1, 2


class Target(Protocol):
    """Where client input goes."""

    async def ready(self) -> bool: ...
    async def write(self, data: bytes) -> None: ...
    async def eof(self) -> None: ...
    async def signal(self, sig: int) -> None: ...
    async def resize(self, rows: int, cols: int) -> None: ...


class ContainerTarget:
    def __init__(self, pod: Pod, c: Container) -> None:
        self.pod, self.c = pod, c

    async def ready(self) -> bool:
        """Waits until the container runs; False if it never will."""
        c = self.c
        if not c.started.is_set():
            started = asyncio.ensure_future(c.started.wait())
            done = asyncio.ensure_future(c.done.wait())
            await asyncio.wait({started, done}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            done.cancel()
        return c.started.is_set() and c.streams is not None and not c.done.is_set()

    async def write(self, data: bytes) -> None:
        await self.c.streams.write_stdin(data)  # type: ignore[union-attr]

    async def eof(self) -> None:
        await self.c.streams.close_stdin()  # type: ignore[union-attr]

    async def signal(self, sig: int) -> None:
        with contextlib.suppress(HCError):
            await self.pod.signal(self.c.name, sig)

    async def resize(self, rows: int, cols: int) -> None:
        await self.pod.resize(self.c.name, rows, cols)


class ProcessTarget:
    """An exec'd process."""

    def __init__(self, pod: Pod, proc: ProcessStreams) -> None:
        self.pod, self.proc = pod, proc

    async def ready(self) -> bool:
        return not self.proc.exit.done()

    async def write(self, data: bytes) -> None:
        await self.proc.write_stdin(data)

    async def eof(self) -> None:
        await self.proc.close_stdin()

    async def signal(self, sig: int) -> None:
        await self.pod.signal_stream(self.proc.stream, sig)

    async def resize(self, rows: int, cols: int) -> None:
        await self.pod.resize_stream(self.proc.stream, rows, cols)


EVENTS_QUEUE = STREAM_QUEUE  # an exec's output chunks held for its client before the process is slowed down


class ProcessEvents(asyncio.Queue):
    """The same events a container publishes, for one exec'd process: bounded, so a client that reads slowly slows
    the process down (through the agent's own bounded queues) instead of hyperd buffering for it. Once
    `detach()`ed (the client left), output is read and dropped so that the process never blocks on it."""

    def __init__(self) -> None:
        super().__init__(EVENTS_QUEUE)
        self.attached = True

    def detach(self) -> None:
        self.attached = False
        while not self.empty():
            self.get_nowait()


def process_events(proc: ProcessStreams) -> tuple[ProcessEvents, asyncio.Task]:
    q = ProcessEvents()

    async def pump() -> None:
        async def drain(src: asyncio.Queue[bytes | None], name: str) -> None:
            while (chunk := await src.get()) is not None:
                if q.attached:
                    await q.put((name, chunk))  # detach() empties the queue: a blocked put goes through

        await asyncio.gather(drain(proc.stdout, "stdout"), drain(proc.stderr, "stderr"))
        try:
            await q.put(("exit", await proc.exit))
        except HCError as e:
            await q.put(("error", e.message))
        finally:
            proc.client.unregister(proc.stream)

    return q, asyncio.create_task(pump())


async def send_events(ws: WebSocket, events: asyncio.Queue[Event]) -> None:
    """Relays output until the exit (or error) event, which it sends last."""
    while True:
        kind, payload = await events.get()
        if kind == "stdout":
            await ws.send_bytes(bytes([STDOUT]) + payload)  # type: ignore[operator]
        elif kind == "stderr":
            await ws.send_bytes(bytes([STDERR]) + payload)  # type: ignore[operator]
        elif kind == "exit":
            await ws.send_json({"type": "exit", "code": payload})
            return
        else:
            await ws.send_json({"type": "error", "code": "vm", "message": payload})
            return


async def client_input(ws: WebSocket, target: Target, keep_stdin: bool) -> None:
    """Reads the client's frames until it goes away; stdin is closed then (as docker does on detach)."""
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if msg.get("bytes") is not None:
                data = msg["bytes"]
                if data[:1] == bytes([STDIN]) and await target.ready():
                    await target.write(data[1:])
                continue
            ctl = json.loads(msg.get("text") or "{}")
            kind = ctl.get("type")
            if kind == "stdin_eof" and await target.ready():
                await target.eof()
            elif kind == "signal":
                await target.signal(int(ctl["signal"]))
            elif kind == "resize":
                await target.resize(int(ctl["rows"]), int(ctl["cols"]))
    except (WebSocketDisconnect, RuntimeError, ValueError, KeyError):
        pass
    finally:
        if keep_stdin and await target.ready():
            with contextlib.suppress(Exception):
                await target.eof()


async def send_error(ws: WebSocket, e: HCError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "error", **e.body()})
        await ws.close()


async def session(ws: WebSocket, events: asyncio.Queue[Event], target: Target, keep_stdin: bool,
                  before: Callable[[], Awaitable[None]] | None = None,
                  after: Callable[[], None] | None = None) -> None:
    """One attached client: input from it all along; `before` (start, resize) may fail with an error the client
    gets; then output until the exit, which ends the session."""
    reader = asyncio.create_task(client_input(ws, target, keep_stdin))
    try:
        if before:
            try:
                await before()
            except HCError as e:
                await send_error(ws, e)
                return
        await send_events(ws, events)
        with contextlib.suppress(Exception):
            await ws.close()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        reader.cancel()
        if after:
            after()
