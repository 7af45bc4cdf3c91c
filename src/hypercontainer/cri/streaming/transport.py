"""Byte transports under a SPDY session (the upgraded TCP connection, or a WebSocket tunnelling SPDY) and the
inbound/outbound stream halves the exec, attach and port-forward logic is written against."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

INBOUND_CHUNKS = 64  # chunks buffered per inbound stream before the connection stops being read (TCP back-pressure)


class StreamClosed(ConnectionError):
    """A write to a stream (or connection) that is closed or reset."""


class Activity:
    """When the connection last carried anything, for the idle timeout."""

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()

    async def idle(self, timeout: float) -> None:
        """Returns once nothing moved for `timeout` seconds."""
        loop = asyncio.get_running_loop()
        while (left := self.last + timeout - loop.time()) > 0:
            await asyncio.sleep(left)


class ByteTransport(Protocol):
    async def read(self) -> bytes:
        """The next bytes; b"" at the end."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


class TcpTransport:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: Activity) -> None:
        self.reader, self.writer, self.activity = reader, writer, activity

    async def read(self) -> bytes:
        data = await self.reader.read(1 << 16)
        self.activity.touch()
        return data

    def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise StreamClosed("the connection is closed")
        self.writer.write(data)
        self.activity.touch()

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Inbound(Protocol):
    """A stream from the client: stdin, resize, port-forward data."""

    async def read(self) -> bytes | None:
        """The next chunk; None at the end (the client closed or reset it, or went away)."""
        ...

    def discard(self) -> None:
        """Nobody will read on: drop what is buffered and what comes, so the connection is never held up."""
        ...


class Outbound(Protocol):
    """A stream to the client: stdout, stderr, the error (status) stream, port-forward data."""

    async def write(self, data: bytes) -> None:
        """Raises StreamClosed (a ConnectionError) when the stream or the connection is gone."""
        ...

    async def close(self) -> None:
        """The end of this stream (SPDY: FIN; WebSocket channels have none to send)."""
        ...


class InboundQueue:
    """An Inbound fed by a connection's reader task: bounded (the reader waits, so TCP pushes back), ended by
    end() (clean) or abort() (a reset: what is buffered is dropped)."""

    def __init__(self, limit: int = INBOUND_CHUNKS) -> None:
        self._q: asyncio.Queue[bytes | None] = asyncio.Queue(limit)
        self._ended = False
        self._discarding = False

    @property
    def ended(self) -> bool:
        return self._ended

    async def read(self) -> bytes | None:
        if self._discarding:
            return None
        return await self._q.get()

    def discard(self) -> None:
        self._discarding = True
        self._drop()
        if self._ended:
            self._q.put_nowait(None)

    async def feed(self, data: bytes) -> None:
        if self._ended or self._discarding or not data:
            return
        await self._q.put(data)

    async def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._discarding:
            self._drop()
            self._q.put_nowait(None)
        else:
            await self._q.put(None)

    def end_nowait(self) -> None:
        """Ends it now: after what is buffered if there is room for the end mark, else dropping it."""
        if self._ended:
            return
        if self._q.full():
            self.abort()
        else:
            self._ended = True
            self._q.put_nowait(None)

    def abort(self) -> None:
        """Ends it now, dropping what was buffered (never waits)."""
        if not self._ended:
            self._ended = True
            self._drop()
            self._q.put_nowait(None)

    def _drop(self) -> None:
        while not self._q.empty():
            self._q.get_nowait()

