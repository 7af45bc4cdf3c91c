"""WebSocket connections on our own HTTP front (the `websockets` library's Sans-I/O protocol, so one listener serves
SPDY and WebSocket upgrades alike), and the Kubernetes protocols carried over them:

- the channel protocols (k8s.io/streaming's wsstream, as the kubelet serves them): every binary message is one
  channel byte then data (base64 variants: a text message, an ASCII digit then base64). `v5.channel.k8s.io` adds
  the half-close message [255, channel]; the others end a stream only with the connection.
- SPDY tunnelled in WebSocket binary messages (`SPDY/3.1+<protocol>`): what client-go's port-forward speaks over
  WebSockets (crictl and critest `-websocket-portforward`, kubectl through the API server).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from .transport import Activity, InboundQueue, StreamClosed

log = logging.getLogger(__name__)
MAX_MESSAGE = 1 << 24
CLOSE_SIGNAL = 255  # v5.channel.k8s.io: [255, channel] half-closes a channel


class WsConn:
    """An accepted WebSocket connection: whole messages in, frames out."""

    def __init__(self, proto: ServerProtocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 activity: Activity) -> None:
        self.proto, self.reader, self.writer, self.activity = proto, reader, writer, activity
        self.subprotocol = proto.subprotocol or ""
        self.gone = asyncio.Event()  # reading ended: the client closed, hung up, or broke the protocol
        self._messages: asyncio.Queue[bytes | str | None] = asyncio.Queue(64)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop())

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self.writer.write(chunk)
            elif self.writer.can_write_eof() and not self.writer.is_closing():
                self.writer.write_eof()  # the protocol's "half-close now"
        self.activity.touch()

    async def _read_loop(self) -> None:
        opcode: Opcode | None = None
        parts: list[bytes] = []
        try:
            while True:
                data = await self.reader.read(1 << 16)
                self.activity.touch()
                try:
                    if data:
                        self.proto.receive_data(data)
                    else:
                        self.proto.receive_eof()
                except EOFError:  # the protocol already saw the end
                    return
                self._flush()
                for event in self.proto.events_received():
                    if not isinstance(event, Frame):
                        continue
                    if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                        opcode, parts = event.opcode, [bytes(event.data)]
                    elif event.opcode == Opcode.CONT:
                        parts.append(bytes(event.data))
                    else:
                        continue
                    if event.fin and opcode is not None:
                        message = b"".join(parts)
                        parts = []
                        await self._messages.put(message.decode() if opcode == Opcode.TEXT else message)
                if not data or self.proto.state is State.CLOSED:
                    return
        except (ConnectionError, OSError) as e:
            log.debug("websocket: connection lost: %s", e)
        except Exception:
            log.exception("websocket: reading failed")
        finally:
            self.gone.set()
            with contextlib.suppress(asyncio.QueueFull):
                self._messages.put_nowait(None)

    async def recv(self) -> bytes | str | None:
        """The next message; None once the connection is closing."""
        if self.gone.is_set() and self._messages.empty():
            return None
        return await self._messages.get()

    def send_nowait(self, data: bytes | str) -> None:
        try:
            if isinstance(data, str):
                self.proto.send_text(data.encode())
            else:
                self.proto.send_binary(data)
        except InvalidState:
            raise StreamClosed("the websocket is closing") from None
        if self.writer.is_closing():
            raise StreamClosed("the connection is closed")
        self._flush()

    async def send(self, data: bytes | str) -> None:
        self.send_nowait(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise StreamClosed(f"the connection is closed: {e}") from None

    async def close(self, linger: float, code: int = 1000, reason: str = "") -> None:
        """The closing handshake (bounded by linger), then the connection."""
        if self.proto.state is State.OPEN:
            with contextlib.suppress(InvalidState):
                self.proto.send_close(code, reason)
            with contextlib.suppress(ConnectionError, OSError):
                self._flush()
                await self.writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), linger)
        if self._task and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class WsTunnel:
    """A ByteTransport over a WebSocket: every binary message carries the next bytes of the SPDY connection."""

    def __init__(self, ws: WsConn, linger: float) -> None:
        self.ws = ws
        self.linger = linger

    async def read(self) -> bytes:
        while True:
            message = await self.ws.recv()
            if message is None:
                return b""
            if isinstance(message, str):
                raise ConnectionError("a text message in a SPDY tunnel")
            if message:  # Go writes a frame field by field, an empty field as an empty message
                return message

    def write(self, data: bytes) -> None:
        self.ws.send_nowait(data)

    async def drain(self) -> None:
        await self.ws.writer.drain()

    async def close(self) -> None:
        await self.ws.close(self.linger)


class ChannelOut:
    """One channel we write (an Outbound); the channel protocols have no end-of-stream to send."""

    def __init__(self, conn: ChannelConn, channel: int) -> None:
        self.conn, self.channel = conn, channel

    async def write(self, data: bytes) -> None:
        await self.conn.send(self.channel, data)

    async def close(self) -> None:
        return None


class ChannelConn:
    """The channel protocol on one WebSocket: reads messages into the readable channels' inbound queues."""

    def __init__(self, ws: WsConn, readable: set[int]) -> None:
        self.ws = ws
        proto = ws.subprotocol
        self.base64 = "base64" in proto
        self.close_signal = proto == "v5.channel.k8s.io"
        self.inbound = {ch: InboundQueue() for ch in readable}

    def out(self, channel: int) -> ChannelOut:
        return ChannelOut(self, channel)

    async def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self.ws.send(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send(bytes([channel]) + data)

    async def run(self) -> None:
        """Dispatches until the connection closes; every inbound channel then ends."""
        try:
            while (message := await self.ws.recv()) is not None:
                if not message:
                    continue
                if self.base64:  # text or binary: an ASCII digit, then base64
                    text = message if isinstance(message, str) else message.decode("latin-1")
                    try:
                        channel, data = ord(text[0]) - ord("0"), base64.b64decode(text[1:], validate=True)
                    except (binascii.Error, ValueError):
                        log.info("websocket: a message that is not base64; ignored")
                        continue
                elif isinstance(message, str):
                    log.info("websocket: a text message on a binary channel protocol; ignored")
                    continue
                else:
                    if self.close_signal and message[0] == CLOSE_SIGNAL:
                        if len(message) == 2 and message[1] in self.inbound:
                            await self.inbound[message[1]].end()
                        continue
                    channel, data = message[0], message[1:]
                queue = self.inbound.get(channel)
                if queue is not None:
                    await queue.feed(data)
        finally:
            for q in self.inbound.values():
                q.end_nowait()
