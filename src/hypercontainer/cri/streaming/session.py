"""The server side of one SPDY/3.1 connection, as spdystream's client expects it.

The client opens every stream (odd ids, increasing) and waits for our SYN_REPLY before it writes; we reply at once
or refuse with RST_STREAM. Either side half-closes with FIN; RST_STREAM ends a stream both ways. The client pings
every few seconds (odd ids): we echo. GOAWAY from the client, or the end of the connection, is a hang-up.
Flow control: none, like spdystream (see spdy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from . import spdy
from .transport import ByteTransport, InboundQueue, StreamClosed

log = logging.getLogger(__name__)
MAX_DATA_FRAME = 1 << 16  # our data frames' size (spdystream reads up to 16 MiB)


class SpdyStream:
    """One client-opened stream: an Inbound (what the client sends) and an Outbound (what we send)."""

    def __init__(self, session: SpdySession, stream_id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.inbound = InboundQueue()
        self.local_closed = False  # we sent FIN or RST
        self.aborted = asyncio.Event()  # reset (by either side) or the connection is gone

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def read(self) -> bytes | None:
        return await self.inbound.read()

    def discard(self) -> None:
        self.inbound.discard()

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise StreamClosed(f"stream {self.id} is closed")
        await self.session.send_data(self.id, data)

    async def close(self) -> None:
        """FIN: we send no more (the client may still send)."""
        if not self.local_closed:
            self.local_closed = True
            with contextlib.suppress(StreamClosed, ConnectionError):
                await self.session.send_data(self.id, b"", fin=True)

    def reset(self, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None:
        self.inbound.abort()
        self.aborted.set()
        if not self.local_closed:
            self.local_closed = True
            self.session.send_control(spdy.RstStream(self.id, status))

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} {self.headers}>"


StreamHandler = Callable[[SpdyStream], bool]  # True: accepted (we reply); False: refused (RST_STREAM)


class SpdySession:
    def __init__(self, transport: ByteTransport, on_stream: StreamHandler, name: str = "spdy") -> None:
        self.transport = transport
        self.on_stream = on_stream
        self.name = name
        self.streams: dict[int, SpdyStream] = {}
        self.gone = asyncio.Event()  # the client hung up (GOAWAY, end of connection, protocol error)
        self.settings: dict[int, int] = {}  # what the client's SETTINGS said (kept, not acted on)
        self._encoder = spdy.Encoder()
        self._decoder = spdy.Decoder()
        self._last_id = 0
        self._goaway_sent = False
        self._dead = False  # the connection cannot be written to any more

    # ---- sending ---------------------------------------------------------------------------------------------
    def send_control(self, frame: spdy.Frame) -> None:
        """Encodes and writes a frame now (header compression requires frames on the wire in encode order)."""
        if self._dead:
            return
        try:
            self.transport.write(self._encoder.encode(frame))
        except (ConnectionError, OSError):
            self._dead = True

    async def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        if self._dead:
            raise StreamClosed("the connection is closed")
        view = memoryview(data)
        try:
            while True:
                chunk, view = view[:MAX_DATA_FRAME], view[MAX_DATA_FRAME:]
                last = not view
                self.transport.write(self._encoder.encode(
                    spdy.DataFrame(stream_id, bytes(chunk), spdy.FLAG_FIN if fin and last else 0)))
                await self.transport.drain()
                if last:
                    return
        except (ConnectionError, OSError) as e:
            self._dead = True
            raise StreamClosed(f"the connection is closed: {e}") from None

    def goaway(self, status: spdy.GoAwayStatus = spdy.GoAwayStatus.OK) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self.send_control(spdy.GoAway(self._last_id, status))

    # ---- receiving -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Reads frames until the client hangs up; every stream's inbound side then ends."""
        try:
            while data := await self.transport.read():
                for item in self._decoder.feed(data):
                    if isinstance(item, spdy.StreamError):
                        log.info("%s: %s", self.name, item)
                        self._reset(item.stream_id, item.status)
                    elif isinstance(item, spdy.GoAway):
                        log.debug("%s: GOAWAY from the client (last stream %d)", self.name, item.last_good_stream_id)
                        return
                    else:
                        await self._on_frame(item)
        except spdy.ProtocolError as e:
            log.warning("%s: protocol error: %s", self.name, e)
            self.goaway(spdy.GoAwayStatus.PROTOCOL_ERROR)
        except (ConnectionError, OSError) as e:
            log.debug("%s: connection lost: %s", self.name, e)
        finally:
            self.gone.set()
            for s in self.streams.values():
                s.inbound.end_nowait()
                s.aborted.set()

    def _reset(self, stream_id: int, status: spdy.RstStatus) -> None:
        s = self.streams.get(stream_id)
        if s:
            s.reset(status)
        else:
            self.send_control(spdy.RstStream(stream_id, status))

    async def _on_frame(self, frame: spdy.Frame) -> None:
        if isinstance(frame, spdy.DataFrame):
            s = self.streams.get(frame.stream_id)
            if s is None:
                log.debug("%s: %d bytes for unknown stream %d", self.name, len(frame.data), frame.stream_id)
                return
            await s.inbound.feed(frame.data)
            if frame.fin:
                await s.inbound.end()
        elif isinstance(frame, spdy.SynStream):
            await self._on_syn_stream(frame)
        elif isinstance(frame, spdy.RstStream):
            s = self.streams.get(frame.stream_id)
            if s:
                log.debug("%s: stream %d reset by the client (%d)", self.name, s.id, frame.status)
                s.inbound.abort()
                s.local_closed = True
                s.aborted.set()
        elif isinstance(frame, spdy.HeadersFrame):
            s = self.streams.get(frame.stream_id)
            if s and frame.fin:
                await s.inbound.end()
        elif isinstance(frame, spdy.Ping):
            if frame.id % 2 == 1:  # the client's: echo it (even ids would be answers to ours; we send none)
                self.send_control(frame)
        elif isinstance(frame, spdy.Settings):
            for v in frame.values:
                self.settings[v.id] = v.value
        elif isinstance(frame, spdy.SynReply):
            log.debug("%s: SYN_REPLY for stream %d, which we never opened", self.name, frame.stream_id)
        # WindowUpdate: no flow control (spdy.py's doc)

    async def _on_syn_stream(self, frame: spdy.SynStream) -> None:
        sid = frame.stream_id
        if sid % 2 == 0 or sid <= self._last_id:
            log.info("%s: SYN_STREAM %d out of order (last %d)", self.name, sid, self._last_id)
            self.send_control(spdy.RstStream(sid, spdy.RstStatus.PROTOCOL_ERROR))
            return
        self._last_id = sid
        if self._goaway_sent:
            self.send_control(spdy.RstStream(sid, spdy.RstStatus.REFUSED_STREAM))
            return
        stream = SpdyStream(self, sid, frame.headers)
        if frame.flags & spdy.FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        if frame.fin:
            await stream.inbound.end()
        try:
            accepted = self.on_stream(stream)
        except Exception:
            log.exception("%s: stream handler failed", self.name)
            accepted = False
        if not accepted:
            stream.inbound.abort()
            self.send_control(spdy.RstStream(sid, spdy.RstStatus.REFUSED_STREAM))
            return
        self.streams[sid] = stream
        if not stream.local_closed:
            self.send_control(spdy.SynReply(sid, {}))

    # ---- the end ---------------------------------------------------------------------------------------------
    async def finish(self, linger: float) -> None:
        """Our side is done (status written, every stream closed): let the client close first (it does at once
        once it has read everything; a server that closed first could lose the last frames to a TCP reset), then
        GOAWAY and close the connection."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), linger)
        if not self.gone.is_set():
            self.goaway()
            with contextlib.suppress(ConnectionError, OSError):
                await self.transport.drain()
        self._dead = True
        await self.transport.close()
