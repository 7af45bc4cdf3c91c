"""Port-forward once streams are open: one TCP connection per (data, error) pair, as the kubelet's
cri/streaming/portforward does.

SPDY (`portforward.k8s.io`): for every local connection the client opens an error stream then a data stream, both
with headers `port` and `requestID`; we pair them, connect, and copy both ways. The client's FIN on the data
stream half-closes the connection to the pod; the pod's end of it ends our side (FIN), the client then resets the
data stream. A failure is text on the error stream; the error stream ends (FIN) when the forward does.

WebSocket channel protocol (`v4.channel.k8s.io`, kubelet's `handleWebSocketStreams`): the ports come with the
request (PortForwardRequest.port, else the `port` query parameter); channel 2i carries port i's data, 2i+1 its
errors; we first write the port, 16 bits little-endian, on both. The connection ends once every port's has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend
from .session import SpdySession, SpdyStream
from .transport import Inbound, Outbound, StreamClosed
from .websocket import ChannelConn, WsConn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...]


async def forward(backend: Backend, sandbox_id: str, port: int, data_in: Inbound, data_out: Outbound,
                  error_out: Outbound, stop: asyncio.Event) -> None:
    """Connects to the port and copies both ways until the pod's side ends, or `stop` (the client reset the
    stream or went away). Writes a failure on error_out; ends neither stream."""
    try:
        reader, writer = await backend.port_forward(sandbox_id, port)
    except Exception as e:
        log.info("port-forward to %s:%d: %s", sandbox_id, port, e)
        data_in.discard()
        with contextlib.suppress(StreamClosed, ConnectionError, OSError):
            await error_out.write(f"error forwarding port {port} to pod {sandbox_id}, uid : {e}".encode())
        return

    async def up() -> None:  # client -> pod
        try:
            while (data := await data_in.read()) is not None:
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError) as e:
            log.debug("port-forward to %s:%d: writing: %s", sandbox_id, port, e)
        data_in.discard()

    async def down() -> None:  # pod -> client
        try:
            while data := await reader.read(1 << 16):
                await data_out.write(data)
            await data_out.close()
        except (StreamClosed, ConnectionError, OSError) as e:
            log.debug("port-forward to %s:%d: reading: %s", sandbox_id, port, e)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        data_in.discard()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# ---- SPDY ---------------------------------------------------------------------------------------------------------
@dataclass
class _Pair:
    request_id: str
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class SpdyPortForward:
    """The stream handler and forwards of one port-forward SPDY connection."""

    def __init__(self, backend: Backend, req: PortForwardRequest, creation_timeout: float) -> None:
        self.backend = backend
        self.req = req
        self.creation_timeout = creation_timeout
        self.session: SpdySession | None = None
        self.pairs: dict[str, _Pair] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_stream(self, stream: SpdyStream) -> bool:
        port_s, kind = stream.header("port"), stream.header("streamtype")
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            log.info("port-forward: stream %d with port %r", stream.id, port_s)
            return False
        if kind not in ("error", "data"):
            log.info("port-forward: stream %d of type %r", stream.id, kind)
            return False
        # clients before requestID opened the error stream, then the data stream, with consecutive ids
        rid = stream.header("requestid") or str(stream.id if kind == "error" else stream.id - 2)
        pair = self.pairs.get(rid)
        if pair is None:
            pair = self.pairs[rid] = _Pair(rid)
            self._spawn(self._expire(pair))
        if getattr(pair, kind) is not None:
            log.info("port-forward: a second %s stream for request %s", kind, rid)
            return False
        setattr(pair, kind, stream)
        if pair.error and pair.data:
            self._spawn(self._run(pair, int(pair.data.header("port"))))
        return True

    async def _expire(self, pair: _Pair) -> None:
        await asyncio.sleep(self.creation_timeout)
        if pair.error and pair.data:
            return
        self.pairs.pop(pair.request_id, None)
        log.info("port-forward: request %s: timed out waiting for streams", pair.request_id)
        if pair.error:
            with contextlib.suppress(StreamClosed, ConnectionError, OSError):
                await pair.error.write(f"request {pair.request_id}: timed out waiting for streams".encode())
            await pair.error.close()
        if pair.data:
            pair.data.reset()

    async def _run(self, pair: _Pair, port: int) -> None:
        assert pair.error and pair.data
        self.pairs.pop(pair.request_id, None)
        pair.error.discard()  # the client closes its side of the error stream at once
        try:
            await forward(self.backend, self.req.sandbox_id, port, pair.data, pair.data, pair.error,
                          pair.data.aborted)
        finally:
            await pair.data.close()
            await pair.error.close()

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ---- WebSocket channels --------------------------------------------------------------------------------------------
async def serve_channels(backend: Backend, req: PortForwardRequest, ws: WsConn, linger: float) -> None:
    ports = req.ports
    conn = ChannelConn(ws, readable={2 * i for i in range(len(ports))})
    reader = asyncio.create_task(conn.run())
    try:
        for i, port in enumerate(ports):
            for ch in (2 * i, 2 * i + 1):
                await conn.send(ch, struct.pack("<H", port))
        await asyncio.gather(*(forward(backend, req.sandbox_id, port, conn.inbound[2 * i], conn.out(2 * i),
                                       conn.out(2 * i + 1), ws.gone) for i, port in enumerate(ports)))
    except (StreamClosed, ConnectionError, OSError) as e:
        log.debug("port-forward: %s", e)
    finally:
        await ws.close(linger)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
