"""SPDY/3.1 framing, as Kubernetes clients speak it (github.com/moby/spdystream under k8s.io/streaming).

Only the standard library: frames are fixed-layout big-endian records, header blocks are zlib-compressed with the
dictionary of SPDY draft 3 section 2.6.10.1, one compression context per direction for the whole connection (each
block ends in a sync flush, as Go's compress/zlib Flush does).

Flow control: SPDY/3.1 gives every stream and the session a 64 KiB window that WINDOW_UPDATE frames reopen.
spdystream, the only SPDY the Kubernetes clients use, implements none of it: it never sends WINDOW_UPDATE or
SETTINGS and ignores those it receives. A sender that honoured the windows would stall after 64 KiB, so the
session (session.py) parses both frames, keeps SETTINGS' values for the record, and limits nothing; back-pressure
comes from TCP, as it does for spdystream.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

VERSION = 3
MAX_LENGTH = (1 << 24) - 1  # a frame's length field is 24 bits
MAX_STREAM_ID = (1 << 31) - 1
MAX_CONTROL_LENGTH = 1 << 20  # we refuse larger control frames (spdystream: 16 MiB); ours are a few bytes
MAX_HEADER_BLOCK = 1 << 20  # decompressed header block limit (a zlib bomb stops here)
MAX_HEADER_COUNT = 1000  # spdystream's defaults

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingsId(IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


# ---- the header compression dictionary (SPDY draft 3, 2.6.10.1) -------------------------------------------------
# 65 length-prefixed words, then one run of text; 1423 bytes whose SHA-256 tests/test_streaming.py checks, and
# compares byte for byte with Go's github.com/moby/spdystream/spdy/dictionary.go where the module cache has it.
_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
    "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
    "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
    "keep-alive", "origin",
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    """The connection broke the protocol: the session ends (GOAWAY with PROTOCOL_ERROR)."""


class StreamError(ProtocolError):
    """One stream broke the protocol: that stream is reset, the session goes on."""

    def __init__(self, stream_id: int, status: RstStatus, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


# ---- frames -----------------------------------------------------------------------------------------------------
Headers = dict[str, list[str]]  # lower-case names; one name may carry several values (NUL-separated on the wire)


class _Finishing:
    """Frames whose FLAG_FIN ends the sender's side of the stream."""

    flags: int

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True)
class DataFrame(_Finishing):
    stream_id: int
    data: bytes = b""
    flags: int = 0


@dataclass(frozen=True)
class SynStream(_Finishing):
    stream_id: int
    headers: Headers = field(default_factory=dict)
    associated_to: int = 0
    priority: int = 0  # 3 bits, 0 highest
    slot: int = 0
    flags: int = 0


@dataclass(frozen=True)
class SynReply(_Finishing):
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True)
class Settings:
    values: tuple[Setting, ...] = ()
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True)
class HeadersFrame(_Finishing):
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int  # 0: the session's window (SPDY/3.1)
    delta: int


Frame = DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate


def headers_of(pairs: Mapping[str, str | Iterable[str]]) -> Headers:
    """A Headers value from {name: value or values}, names lower-cased (SPDY requires it)."""
    out: Headers = {}
    for name, value in pairs.items():
        out.setdefault(name.lower(), []).extend([value] if isinstance(value, str) else list(value))
    return out


# ---- header blocks ----------------------------------------------------------------------------------------------
def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: count, then (length, name, length, value) with 32-bit lengths; several
    values of one name are joined with NUL."""
    merged: dict[str, list[str]] = {}
    for name, values in headers.items():
        merged.setdefault(name.lower(), []).extend(values)
    parts = [struct.pack(">I", len(merged))]
    for name in sorted(merged):
        n, v = name.encode(), "\x00".join(merged[name]).encode()
        if not n:
            raise ValueError("empty header name")
        parts += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(parts)


def decode_header_block(block: bytes, stream_id: int) -> Headers:
    """The name/value block; names must be lower-case, non-empty and not repeated (spdystream's checks)."""
    def fail(why: str) -> StreamError:
        return StreamError(stream_id, RstStatus.PROTOCOL_ERROR, f"header block of stream {stream_id}: {why}")

    if len(block) < 4:
        raise fail("truncated")
    (count,) = struct.unpack_from(">I", block)
    if count > MAX_HEADER_COUNT:
        raise fail(f"{count} headers (at most {MAX_HEADER_COUNT})")
    pos, headers = 4, {}
    for _ in range(count):
        fields: list[bytes] = []
        for _what in ("name", "value"):
            if pos + 4 > len(block):
                raise fail("truncated")
            (n,) = struct.unpack_from(">I", block, pos)
            pos += 4
            if pos + n > len(block):
                raise fail("truncated")
            fields.append(block[pos : pos + n])
            pos += n
        try:
            name, value = fields[0].decode(), fields[1].decode()
        except UnicodeDecodeError:
            raise fail("not UTF-8") from None
        if not name:
            raise fail("empty header name")
        if name != name.lower():
            raise fail(f"header name {name!r} is not lower-case")
        if name in headers:
            raise fail(f"header {name!r} repeated")
        headers[name] = value.split("\x00")
    if pos != len(block):
        raise fail(f"{len(block) - pos} bytes after the last header")
    return headers


class HeaderCompressor:
    """One direction's compression context: a single zlib stream for the connection, sync-flushed per block."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_header_block(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self, limit: int = MAX_HEADER_BLOCK) -> None:
        self._z = zlib.decompressobj(15, DICTIONARY)
        self._limit = limit

    def decompress(self, data: bytes, stream_id: int) -> Headers:
        try:
            raw = self._z.decompress(data, self._limit + 1)
        except zlib.error as e:  # the shared context is broken: nothing later can be read
            raise ProtocolError(f"header block of stream {stream_id}: {e}") from None
        if len(raw) > self._limit or self._z.unconsumed_tail:
            raise ProtocolError(f"header block of stream {stream_id} exceeds {self._limit} bytes")
        return decode_header_block(raw, stream_id)


# ---- encoding ---------------------------------------------------------------------------------------------------
def _control(frame_type: FrameType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"control frame of {len(payload)} bytes")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def _check_id(stream_id: int, zero_ok: bool = False) -> None:
    if not (0 if zero_ok else 1) <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} out of range")


class Encoder:
    """Frames to bytes, with this side's header compression context (frames must be written in encode order)."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            _check_id(frame.stream_id)
            if len(frame.data) > MAX_LENGTH:
                raise ValueError(f"data frame of {len(frame.data)} bytes")
            return struct.pack(">II", frame.stream_id, (frame.flags << 24) | len(frame.data)) + frame.data
        if isinstance(frame, SynStream):
            _check_id(frame.stream_id)
            _check_id(frame.associated_to, zero_ok=True)
            head = struct.pack(">IIBB", frame.stream_id, frame.associated_to, (frame.priority & 7) << 5, frame.slot)
            return _control(FrameType.SYN_STREAM, frame.flags, head + self._headers.compress(frame.headers))
        if isinstance(frame, SynReply | HeadersFrame):
            _check_id(frame.stream_id)
            kind = FrameType.SYN_REPLY if isinstance(frame, SynReply) else FrameType.HEADERS
            return _control(kind, frame.flags,
                            struct.pack(">I", frame.stream_id) + self._headers.compress(frame.headers))
        if isinstance(frame, RstStream):
            _check_id(frame.stream_id)
            return _control(FrameType.RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = b"".join(struct.pack(">II", (s.flags << 24) | s.id, s.value) for s in frame.values)
            return _control(FrameType.SETTINGS, frame.flags, struct.pack(">I", len(frame.values)) + body)
        if isinstance(frame, Ping):
            return _control(FrameType.PING, 0, struct.pack(">I", frame.id))
        if isinstance(frame, GoAway):
            _check_id(frame.last_good_stream_id, zero_ok=True)
            return _control(FrameType.GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
        if isinstance(frame, WindowUpdate):
            _check_id(frame.stream_id, zero_ok=True)
            if not 1 <= frame.delta <= MAX_STREAM_ID:
                raise ValueError(f"window delta {frame.delta} out of range")
            return _control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")


# ---- decoding ---------------------------------------------------------------------------------------------------
class Decoder:
    """Bytes to frames, incrementally: feed() what arrived, get the frames it completed. Unknown control frame
    types are skipped, as SPDY/3 requires. Errors: ProtocolError (the session must end) or StreamError (that stream
    is reset); either way the decoder stays in step with the byte stream after a StreamError."""

    def __init__(self, max_control_length: int = MAX_CONTROL_LENGTH) -> None:
        self._buf = bytearray()
        self._headers = HeaderDecompressor()
        self._max_control = max_control_length

    def feed(self, data: bytes) -> list[Frame | StreamError]:
        """The frames completed by data; a StreamError stands in the list where its bad frame was."""
        self._buf += data
        out: list[Frame | StreamError] = []
        while len(self._buf) >= 8:
            first, flags_len = struct.unpack_from(">II", self._buf)
            flags, length = flags_len >> 24, flags_len & 0xFFFFFF
            control = bool(first & 0x80000000)
            if control and length > self._max_control:
                raise ProtocolError(f"control frame of {length} bytes (at most {self._max_control})")
            if len(self._buf) < 8 + length:
                break
            payload = bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            try:
                if control:
                    frame = self._control((first >> 16) & 0x7FFF, first & 0xFFFF, flags, payload)
                    if frame is not None:
                        out.append(frame)
                else:
                    stream_id = first & 0x7FFFFFFF
                    if stream_id == 0:
                        raise ProtocolError("data frame on stream 0")
                    out.append(DataFrame(stream_id, payload, flags))
            except StreamError as e:
                out.append(e)
        return out

    def _control(self, version: int, kind: int, flags: int, p: bytes) -> Frame | None:
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version} (we speak {VERSION})")

        def need(n: int, exact: bool = True) -> None:
            if len(p) < n or (exact and len(p) != n):
                raise ProtocolError(f"{FrameType(kind).name} frame of {len(p)} bytes")

        if kind == FrameType.SYN_STREAM:
            need(10, exact=False)
            sid, assoc, prio, slot = struct.unpack_from(">IIBB", p)
            sid, assoc = sid & MAX_STREAM_ID, assoc & MAX_STREAM_ID
            headers = self._headers.decompress(p[10:], sid)  # always: the context must stay in step
            if sid == 0:
                raise ProtocolError("SYN_STREAM for stream 0")
            return SynStream(sid, headers, assoc, prio >> 5, slot, flags)
        if kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
            need(4, exact=False)
            sid = struct.unpack_from(">I", p)[0] & MAX_STREAM_ID
            headers = self._headers.decompress(p[4:], sid)
            if sid == 0:
                raise ProtocolError(f"{FrameType(kind).name} for stream 0")
            return (SynReply if kind == FrameType.SYN_REPLY else HeadersFrame)(sid, headers, flags)
        if kind == FrameType.RST_STREAM:
            need(8)
            sid, status = struct.unpack(">II", p)
            sid &= MAX_STREAM_ID
            if sid == 0 or status == 0:
                raise ProtocolError(f"RST_STREAM for stream {sid} with status {status}")
            return RstStream(sid, status)
        if kind == FrameType.SETTINGS:
            need(4, exact=False)
            (n,) = struct.unpack_from(">I", p)
            if len(p) != 4 + 8 * n:
                raise ProtocolError(f"SETTINGS of {len(p)} bytes for {n} values")
            values = []
            for i in range(n):
                flag_id, value = struct.unpack_from(">II", p, 4 + 8 * i)
                values.append(Setting(flag_id & 0xFFFFFF, value, flag_id >> 24))
            return Settings(tuple(values), flags)
        if kind == FrameType.PING:
            need(4)
            (ping_id,) = struct.unpack(">I", p)
            if ping_id == 0:
                raise ProtocolError("PING with id 0")
            return Ping(ping_id)
        if kind == FrameType.GOAWAY:
            need(8)
            last, status = struct.unpack(">II", p)
            return GoAway(last & MAX_STREAM_ID, status)
        if kind == FrameType.WINDOW_UPDATE:
            need(8)
            sid, delta = struct.unpack(">II", p)
            sid, delta = sid & MAX_STREAM_ID, delta & MAX_STREAM_ID
            if delta == 0:
                raise StreamError(sid, RstStatus.FLOW_CONTROL_ERROR, f"WINDOW_UPDATE of 0 for stream {sid}")
            return WindowUpdate(sid, delta)
        return None  # an unknown control frame: ignored (SPDY/3 2.2.1)

