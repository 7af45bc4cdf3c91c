"""The CRI streaming server (cri/streaming): SPDY/3.1 framing and sessions, the WebSocket channel protocols, the HTTP
front, and end to end with the real client: crictl v1.37.0 (built from the Go module proxy, as test_cri.py does)
against a gRPC endpoint that serves only what crictl needs (Version, ImageFsInfo, Exec, Attach, PortForward) with
our server's URLs, over a Backend of real host processes (pipes, or a pty for -t) and a real TCP echo server.
Every crictl flow runs over both transports, `--transport spdy` and `--transport websocket`. No VM is booted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pty
import re
import signal
import socket
import struct
import termios
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from hypercontainer.cri.streaming import StreamingServer, Timing, spdy, status
from hypercontainer.cri.streaming.remotecommand import Resizes
from hypercontainer.cri.streaming.session import SpdySession, SpdyStream
from hypercontainer.errors import InvalidArgument

from .crictl import build_crictl

GOMODCACHE = Path(os.environ.get("GOMODCACHE", Path.home() / "go/pkg/mod"))
DICTIONARY_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"  # 1423 bytes, SPDY/3
TRANSPORTS = ["spdy", "websocket"]
TIMING = Timing(grace=0.3, drain=2.0, linger=2.0, creation=5.0)


# ==== SPDY framing ===================================================================================================
FRAMES: list[spdy.Frame] = [
    spdy.DataFrame(1, b"hello"),
    spdy.DataFrame(0x7FFFFFFF, b"", spdy.FLAG_FIN),
    spdy.SynStream(1, {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]}),
    spdy.SynStream(3, {"multi": ["a", "b", ""]}, associated_to=1, priority=7, slot=2, flags=spdy.FLAG_FIN),
    spdy.SynStream(5, {}, flags=spdy.FLAG_UNIDIRECTIONAL),
    spdy.SynReply(1, {}),
    spdy.SynReply(3, {"x": ["y"]}, spdy.FLAG_FIN),
    spdy.RstStream(1, spdy.RstStatus.CANCEL),
    spdy.RstStream(0x7FFFFFFF, spdy.RstStatus.FRAME_TOO_LARGE),
    spdy.Settings((spdy.Setting(spdy.SettingsId.INITIAL_WINDOW_SIZE, 1 << 20, 1),
                   spdy.Setting(spdy.SettingsId.MAX_CONCURRENT_STREAMS, 100))),
    spdy.Settings((), spdy.FLAG_CLEAR_SETTINGS),
    spdy.Ping(1),
    spdy.Ping(0xFFFFFFFF),
    spdy.GoAway(0),
    spdy.GoAway(7, spdy.GoAwayStatus.INTERNAL_ERROR),
    spdy.HeadersFrame(3, {"a": ["b"]}, spdy.FLAG_FIN),
    spdy.WindowUpdate(0, 1),
    spdy.WindowUpdate(5, 0x7FFFFFFF),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_frame_round_trip(frame: spdy.Frame) -> None:
    data = spdy.Encoder().encode(frame)
    assert spdy.Decoder().feed(data) == [frame]


def test_frames_round_trip_byte_by_byte_on_one_connection() -> None:
    """All frames on one connection (one compression context each way), fed one byte at a time."""
    enc, dec = spdy.Encoder(), spdy.Decoder()
    wire = b"".join(enc.encode(f) for f in FRAMES * 3)
    got: list[Any] = []
    for i in range(len(wire)):
        got += dec.feed(wire[i : i + 1])
    assert got == FRAMES * 3


def test_frame_layout() -> None:
    """The bytes, against SPDY/3 section 2.2 (control bit, version 3, type, flags, 24-bit length)."""
    enc = spdy.Encoder()
    assert enc.encode(spdy.DataFrame(5, b"ab", spdy.FLAG_FIN)) == bytes.fromhex("00000005 01000002 6162")
    assert enc.encode(spdy.Ping(7)) == bytes.fromhex("80030006 00000004 00000007")
    assert enc.encode(spdy.RstStream(3, 5)) == bytes.fromhex("80030003 00000008 00000003 00000005")
    assert enc.encode(spdy.GoAway(9, 1)) == bytes.fromhex("80030007 00000008 00000009 00000001")
    assert enc.encode(spdy.WindowUpdate(1, 65536)) == bytes.fromhex("80030009 00000008 00000001 00010000")
    assert enc.encode(spdy.Settings((spdy.Setting(7, 10, 1),))) == bytes.fromhex(
        "80030004 0000000c 00000001 01000007 0000000a")
    syn = enc.encode(spdy.SynStream(1, {}, priority=3, slot=4, flags=spdy.FLAG_FIN))
    assert syn[:4] == bytes.fromhex("80030001") and syn[4] == spdy.FLAG_FIN
    assert int.from_bytes(syn[5:8], "big") == len(syn) - 8
    assert syn[8:18] == bytes.fromhex("00000001 00000000 6004")  # ids, priority in the top 3 bits, slot


def test_dictionary() -> None:
    d = spdy.DICTIONARY
    assert len(d) == 1423 and hashlib.sha256(d).hexdigest() == DICTIONARY_SHA256
    assert d.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head") and d.endswith(b"utf-,*,enq=0.")
    go = sorted(GOMODCACHE.glob("github.com/moby/spdystream@*/spdy/dictionary.go"))
    if go:  # byte for byte what the Go side compresses with
        body = go[-1].read_text()
        assert bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", body[body.index("[]byte{"):])) == d


def test_header_compression_shares_one_context() -> None:
    """Each block is a sync-flushed piece of one zlib stream with the dictionary, as Go's compress/zlib writes."""
    c = spdy.HeaderCompressor()
    headers = {"streamtype": ["stdout"], "port": ["80"]}
    first, second = c.compress(headers), c.compress(headers)
    assert len(second) < len(first) and first[:2] == b"\x78\xf9"  # zlib header: best compression, FDICT
    assert zlib.adler32(spdy.DICTIONARY) == int.from_bytes(first[2:6], "big")  # the dictionary's id
    d = spdy.HeaderDecompressor()
    assert d.decompress(first, 1) == headers and d.decompress(second, 3) == headers
    z = zlib.decompressobj(zdict=spdy.DICTIONARY)  # any zlib reads it
    assert z.decompress(first) == spdy.encode_header_block(headers)
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderDecompressor().decompress(second, 3)  # without the first block's context


def test_header_block_rules() -> None:
    block = spdy.encode_header_block({"b": ["2"], "a": ["1", "x"]})
    assert block == (b"\x00\x00\x00\x02" b"\x00\x00\x00\x01a\x00\x00\x00\x031\x00x"
                     b"\x00\x00\x00\x01b\x00\x00\x00\x012")
    assert spdy.decode_header_block(block, 1) == {"a": ["1", "x"], "b": ["2"]}

    def raw(*pairs: tuple[bytes, bytes]) -> bytes:
        return struct.pack(">I", len(pairs)) + b"".join(
            struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v for n, v in pairs)

    for bad in (raw((b"Port", b"1")), raw((b"a", b"1"), (b"a", b"2")), raw((b"", b"1")), raw((b"a", b"1"))[:-1],
                raw((b"a", b"1")) + b"x", b"\x00\x00", struct.pack(">I", 1001), raw((b"\xff", b"1"))):
        with pytest.raises(spdy.StreamError):
            spdy.decode_header_block(bad, 1)


def test_decoder_errors() -> None:
    def control(kind: int, payload: bytes, version: int = 3, flags: int = 0) -> bytes:
        return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(payload)) + payload

    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.Decoder().feed(control(6, b"\x00\x00\x00\x01", version=2))
    with pytest.raises(spdy.ProtocolError, match="stream 0"):
        spdy.Decoder().feed(struct.pack(">II", 0, 1) + b"x")
    with pytest.raises(spdy.ProtocolError, match="control frame of"):
        spdy.Decoder().feed(struct.pack(">HHI", 0x8003, 1, 2 << 20))  # refused from its header alone
    for kind, payload in ((3, struct.pack(">II", 1, 0)), (3, struct.pack(">II", 0, 5)), (6, b"\x00" * 4),
                          (6, b"\x00" * 5), (7, b"\x00" * 4), (4, struct.pack(">I", 2) + b"\x00" * 8)):
        with pytest.raises(spdy.ProtocolError):
            spdy.Decoder().feed(control(kind, payload))
    # an unknown control type is skipped; a WINDOW_UPDATE of 0 fails that stream only; the decoder stays in step
    dec = spdy.Decoder()
    out = dec.feed(control(0x0A, b"whatever") + control(9, struct.pack(">II", 3, 0)) + control(6, b"\x00\x00\x00\x03"))
    assert isinstance(out[0], spdy.StreamError) and out[0].stream_id == 3
    assert out[0].status == spdy.RstStatus.FLOW_CONTROL_ERROR and out[1:] == [spdy.Ping(3)]
    # a header block that decompresses past the limit (a zlib bomb) ends the session
    bomb = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    block = bomb.compress(struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 3 << 20)
                          + b"\x00" * (3 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.ProtocolError, match="exceeds"):
        spdy.Decoder().feed(control(2, struct.pack(">I", 1) + block))


def test_encoder_refuses_what_the_wire_cannot_carry() -> None:
    enc = spdy.Encoder()
    for frame in (spdy.DataFrame(0, b""), spdy.SynStream(0), spdy.SynReply(1 << 31), spdy.WindowUpdate(1, 0),
                  spdy.DataFrame(1, b"\x00" * (1 << 24))):
        with pytest.raises(ValueError):
            enc.encode(frame)


# ==== the SPDY session, with the test as the client ================================================================
class Wire:
    """An in-memory ByteTransport for the server side; the test speaks SPDY on the other end."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent = bytearray()
        self.closed = False
        self.client = spdy.Encoder()
        self.decoder = spdy.Decoder()
        self.seen = 0

    async def read(self) -> bytes:
        return await self.inbox.get()

    def write(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    async def close(self) -> None:
        self.closed = True

    def send(self, *frames: spdy.Frame) -> None:
        for f in frames:
            self.inbox.put_nowait(self.client.encode(f))

    async def received(self) -> list[Any]:
        """What the server wrote since the last call (after letting it run)."""
        for _ in range(20):
            await asyncio.sleep(0)
        new, self.seen = bytes(self.sent[self.seen :]), len(self.sent)
        return self.decoder.feed(new)


async def test_session_streams_pings_and_goaway() -> None:
    wire, opened = Wire(), []

    def on_stream(s: SpdyStream) -> bool:
        opened.append(s)
        return s.header("streamtype") != "refuse"

    session = SpdySession(wire, on_stream)
    run = asyncio.create_task(session.run())
    wire.send(spdy.SynStream(1, {"streamtype": ["stdin"]}), spdy.SynStream(3, {"streamtype": ["refuse"]}),
              spdy.SynStream(4, {}), spdy.SynStream(3, {}), spdy.Ping(5), spdy.Ping(6),
              spdy.Settings((spdy.Setting(7, 1 << 20),)), spdy.WindowUpdate(1, 100))
    assert await wire.received() == [
        spdy.SynReply(1, {}), spdy.RstStream(3, spdy.RstStatus.REFUSED_STREAM),
        spdy.RstStream(4, spdy.RstStatus.PROTOCOL_ERROR),  # even: the server's ids
        spdy.RstStream(3, spdy.RstStatus.PROTOCOL_ERROR),  # not above the last one
        spdy.Ping(5)]  # the client's ping echoed; 6 would answer one of ours: ignored
    assert session.settings == {7: 1 << 20}
    stream = opened[0]
    wire.send(spdy.DataFrame(1, b"abc"), spdy.DataFrame(1, b"def", spdy.FLAG_FIN), spdy.DataFrame(9, b"??"))
    assert [await stream.read(), await stream.read(), await stream.read()] == [b"abc", b"def", None]
    await stream.write(b"out")
    await stream.close()
    await stream.close()  # once
    assert await wire.received() == [spdy.DataFrame(1, b"out"), spdy.DataFrame(1, b"", spdy.FLAG_FIN)]
    wire.send(spdy.SynStream(7, {}), spdy.RstStream(7, spdy.RstStatus.CANCEL))
    await wire.received()
    assert opened[-1].aborted.is_set() and await opened[-1].read() is None
    assert not session.gone.is_set()
    wire.send(spdy.GoAway(7))
    await asyncio.wait_for(run, 1)
    assert session.gone.is_set() and stream.aborted.is_set()
    await session.finish(1)
    assert wire.closed


async def test_session_ignores_flow_control_windows() -> None:
    """spdystream never sends WINDOW_UPDATE: 1 MiB each way on one stream (16 of SPDY/3.1's 64 KiB windows) must
    pass without one, and the server must not send any either."""
    wire, opened = Wire(), []
    session = SpdySession(wire, lambda s: opened.append(s) is None)
    run = asyncio.create_task(session.run())
    wire.send(spdy.SynStream(1, {}))
    await wire.received()
    payload = os.urandom(1 << 20)

    async def read_all() -> bytes:
        got = bytearray()
        while (chunk := await opened[0].read()) is not None:
            got += chunk
        return bytes(got)

    reader = asyncio.create_task(read_all())
    for i in range(0, len(payload), 16384):
        wire.send(spdy.DataFrame(1, payload[i : i + 16384]))
    wire.send(spdy.DataFrame(1, b"", spdy.FLAG_FIN))
    assert await asyncio.wait_for(reader, 5) == payload
    await asyncio.wait_for(opened[0].write(payload), 5)
    frames = await wire.received()
    assert b"".join(f.data for f in frames if isinstance(f, spdy.DataFrame)) == payload
    assert not any(isinstance(f, spdy.WindowUpdate) for f in frames)
    wire.inbox.put_nowait(b"")  # the client hangs up
    await asyncio.wait_for(run, 1)


async def test_session_protocol_error_ends_it() -> None:
    wire = Wire()
    session = SpdySession(wire, lambda s: True)
    run = asyncio.create_task(session.run())
    wire.inbox.put_nowait(struct.pack(">HHI", 0x8002, 6, 4) + b"\x00\x00\x00\x01")  # SPDY/2
    await asyncio.wait_for(run, 1)
    assert session.gone.is_set() and await wire.received() == [spdy.GoAway(0, spdy.GoAwayStatus.PROTOCOL_ERROR)]


# ==== remote command details ========================================================================================
def test_resize_stream_parsing() -> None:
    r = Resizes()
    assert r.feed(b'{"Width":80,"Hei') == []
    assert r.feed(b'ght":24}\n{"width": 100, "height": 30}  {"Width":1') == [(24, 80), (30, 100)]
    assert r.feed(b',"Height":2}') == [(2, 1)]
    for bad in (b"[1]\n", b'{"Width":-1,"Height":2}', b'{"Width":"x"}', b"{" + b" " * 5000):
        with pytest.raises(ValueError):
            Resizes().feed(bad)


def test_status_as_the_kubelet_writes_it() -> None:
    """client-go's errorDecoderV4: Success; Failure + NonZeroExitCode + an ExitCode cause; else the message."""
    assert json.loads(status.encode(status.success(), True)) == {"metadata": {}, "status": "Success"}
    failed = json.loads(status.encode(status.exit_code(3, ["sh", "-c", "exit 3"]), True))
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert failed["message"] == ("command terminated with non-zero exit code: error executing command "
                                 "[sh -c exit 3], exit code 3")
    internal = status.internal_error("boom")
    assert json.loads(status.encode(internal, True))["code"] == 500
    assert status.encode(status.success(), False) == b""  # v1-v3: nothing on success, the message on failure
    assert status.encode(internal, False) == b"Internal error occurred: boom"


# ==== a Backend of host processes =====================================================================================
class HostProcess:
    """A Process on a host command: pipes, or a pty when tty (its own session, the pty its controlling terminal)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stderr: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.proc: asyncio.subprocess.Process | None = None
        self.master = -1
        self.tasks: list[asyncio.Task[None]] = []
        self.killed = self.closed = self.stdin_closed = False
        self.sizes: list[tuple[int, int]] = []

    @classmethod
    async def start(cls, cmd: list[str], tty: bool, stdin: bool) -> HostProcess:
        p = cls(tty)
        if tty:
            p.master, slave = pty.openpty()
            p.proc = await asyncio.create_subprocess_exec("setsid", "-c", *cmd, stdin=slave, stdout=slave,
                                                          stderr=slave)
            os.close(slave)
            os.set_blocking(p.master, False)
            p.stderr.put_nowait(None)
            p.tasks.append(asyncio.create_task(p._read_pty()))
        else:
            p.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
            assert p.proc.stdout and p.proc.stderr
            p.tasks += [asyncio.create_task(p._read(p.proc.stdout, p.stdout)),
                        asyncio.create_task(p._read(p.proc.stderr, p.stderr))]
        p.tasks.append(asyncio.create_task(p._wait()))
        return p

    async def _read(self, stream: asyncio.StreamReader, q: asyncio.Queue[bytes | None]) -> None:
        while data := await stream.read(65536):
            await q.put(data)
        await q.put(None)

    async def _read_pty(self) -> None:
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        loop.add_reader(self.master, ready.set)
        try:
            while True:
                await ready.wait()
                ready.clear()
                try:
                    data = os.read(self.master, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every process holding the pty has exited
                    data = b""
                if not data:
                    break
                await self.stdout.put(data)
        finally:
            loop.remove_reader(self.master)
        await self.stdout.put(None)

    async def _wait(self) -> None:
        assert self.proc
        code = await self.proc.wait()
        self.exit.set_result(code if code >= 0 else 128 - code)

    async def write_stdin(self, data: bytes) -> None:
        if self.tty:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self.master, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            return
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        self.stdin_closed = True
        if self.tty:
            os.write(self.master, b"\x04")  # EOF for a terminal in canonical mode
        elif self.proc and self.proc.stdin:
            self.proc.stdin.close()

    async def resize(self, rows: int, cols: int) -> None:
        self.sizes.append((rows, cols))
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def kill(self) -> None:
        self.killed = True
        assert self.proc
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        self.closed = True
        await asyncio.sleep(0)
        for t in self.tasks[:-1]:
            t.cancel()
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = -1


class Container:
    """A container's main process for attach: output fanned out to attachments, stdin once (StdinOnce)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.subscribers: list[Attachment] = []
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.eof: set[str] = set()
        self.tasks = [asyncio.create_task(self._fan(proc.stdout, "stdout")),
                      asyncio.create_task(self._fan(proc.stderr, "stderr")), asyncio.create_task(self._wait())]

    @classmethod
    async def start(cls, script: str) -> Container:
        return cls(await asyncio.create_subprocess_exec(
            "sh", "-c", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True))

    async def _fan(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream
        while data := await stream.read(65536):
            for a in self.subscribers:
                getattr(a, name).put_nowait(data)
        self.eof.add(name)
        for a in self.subscribers:
            getattr(a, name).put_nowait(None)

    async def _wait(self) -> None:
        self.exit.set_result(await self.proc.wait())

    def attach(self) -> Attachment:
        a = Attachment(self)
        self.subscribers.append(a)
        for name in self.eof:  # attached after its output ended
            getattr(a, name).put_nowait(None)
        return a

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Attachment:
    def __init__(self, container: Container) -> None:
        self.container = container
        self.stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stderr: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.exit = container.exit
        self.closed = False

    async def write_stdin(self, data: bytes) -> None:
        assert self.container.proc.stdin
        self.container.proc.stdin.write(data)
        await self.container.proc.stdin.drain()

    async def close_stdin(self) -> None:
        assert self.container.proc.stdin
        self.container.proc.stdin.close()  # StdinOnce

    async def resize(self, rows: int, cols: int) -> None:
        return None

    async def kill(self) -> None:
        raise AssertionError("an attachment is never killed")

    async def close(self) -> None:
        self.closed = True
        with contextlib.suppress(ValueError):
            self.container.subscribers.remove(self)


class HostBackend:
    def __init__(self, echo_port: int) -> None:
        self.echo_port = echo_port
        self.procs: list[HostProcess] = []
        self.containers: dict[str, Container] = {}
        self.attachments: list[Attachment] = []
        self.forwards: list[tuple[str, int]] = []

    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: bool) -> HostProcess:
        if container_id != "c1":
            raise LookupError(f"container {container_id} not found")
        p = await HostProcess.start(cmd, tty, stdin)
        self.procs.append(p)
        return p

    async def attach(self, container_id: str, tty: bool, stdin: bool) -> Attachment:
        a = self.containers[container_id].attach()
        self.attachments.append(a)
        return a

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.forwards.append((sandbox_id, port))
        if (sandbox_id, port) != ("sb", 8080):
            raise ConnectionRefusedError(f"nothing listens on port {port} in {sandbox_id}")
        return await asyncio.open_connection("127.0.0.1", self.echo_port)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes until the client's EOF, then closes: a half-close travels both ways."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


# ==== crictl and its endpoint ========================================================================================


@pytest.fixture(scope="module")
def crictl_bin() -> Path:
    return build_crictl()


class Env:
    def __init__(self, crictl: Path, sock: Path, server: StreamingServer, backend: HostBackend) -> None:
        self.bin, self.sock, self.server, self.backend = crictl, sock, server, backend

    def argv(self, *args: str) -> list[str]:
        ep = f"unix://{self.sock}"
        config = self.sock.with_name("crictl.yaml")  # one of our own: crictl warns when it finds none
        if not config.exists():
            config.write_text(f"runtime-endpoint: {ep}\nimage-endpoint: {ep}\ntimeout: 20\n")
        return [str(self.bin), "--config", str(config), "--runtime-endpoint", ep, "--image-endpoint", ep,
                "--timeout", "20s", *args]

    async def crictl(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> tuple[int, str, str]:
        p = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(p.communicate(stdin), timeout)
        except TimeoutError:
            p.kill()
            out, err = await p.communicate()
            raise AssertionError(f"crictl {args} hung:\n{out.decode()}\n{err.decode()}") from None
        assert p.returncode is not None
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture
async def env(crictl_bin: Path, tmp_path: Path) -> AsyncIterator[Env]:
    try:
        import grpc

        from hypercontainer.cri.api import pb, rpc
    except Exception as e:
        pytest.skip(f"the CRI API is not built ({e}): run `make cri-api`")
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    backend = HostBackend(echo.sockets[0].getsockname()[1])
    server = StreamingServer(backend, timing=TIMING)
    await server.start()

    class Runtime(rpc.RuntimeServiceServicer):
        async def Version(self, request: Any, context: Any) -> Any:
            return pb.VersionResponse(version="0.1.0", runtime_name="streaming-test", runtime_version="0",
                                      runtime_api_version="v1")

        async def Exec(self, request: Any, context: Any) -> Any:
            return pb.ExecResponse(url=server.url_for_exec(request))

        async def Attach(self, request: Any, context: Any) -> Any:
            return pb.AttachResponse(url=server.url_for_attach(request))

        async def PortForward(self, request: Any, context: Any) -> Any:
            return pb.PortForwardResponse(url=server.url_for_port_forward(request))

    class Images(rpc.ImageServiceServicer):
        async def ImageFsInfo(self, request: Any, context: Any) -> Any:
            return pb.ImageFsInfoResponse()

    grpc_server = grpc.aio.server()
    rpc.add_RuntimeServiceServicer_to_server(Runtime(), grpc_server)
    rpc.add_ImageServiceServicer_to_server(Images(), grpc_server)
    sock = tmp_path / "cri.sock"
    grpc_server.add_insecure_port(f"unix://{sock}")
    await grpc_server.start()
    try:
        yield Env(crictl_bin, sock, server, backend)
    finally:
        await grpc_server.stop(None)
        await server.stop()
        for c in backend.containers.values():
            await c.stop()
        for p in backend.procs:
            if p.proc and p.proc.returncode is None:
                await p.kill()
        echo.close()
        await echo.wait_closed()
    assert all(p.closed for p in backend.procs), "every exec'd process is closed by the server"
    assert all(a.closed for a in backend.attachments)


# ==== crictl exec ===================================================================================================
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_stdout_stderr_exit_code(env: Env, transport: str) -> None:
    rc, out, err = await env.crictl("exec", "--transport", transport, "c1", "sh", "-c", "echo out; echo err >&2")
    assert (rc, out) == (0, "out\n") and err == "err\n"
    rc, out, err = await env.crictl("exec", "-r", transport, "c1", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert rc == 1 and out == "out\n"  # crictl exits 1, saying what the status frame said
    assert err.startswith("err\n") and "command terminated with exit code 3" in err, err


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_stdin(env: Env, transport: str) -> None:
    rc, out, err = await env.crictl("exec", "-i", "--transport", transport, "c1", "sh", "-c",
                                    "tr a-z A-Z; echo done", stdin=b"hello\nworld\n")
    assert (rc, out, err) == (0, "HELLO\nWORLD\ndone\n", "")
    # 1 MiB through cat and back: 16 SPDY/3.1 windows with no WINDOW_UPDATE; WebSocket messages of any size
    data = os.urandom(1 << 20)
    p = await asyncio.create_subprocess_exec(*env.argv("exec", "-i", "--transport", transport, "c1", "cat"),
                                             stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    got, err_b = await asyncio.wait_for(p.communicate(data), 60)
    assert p.returncode == 0 and hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), err_b


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_tty_with_resize(env: Env, transport: str) -> None:
    """crictl exec -it from a terminal (a pty whose size we set, then change): the first size arrives as the
    session starts, the change follows SIGWINCH; stdin reaches the process's terminal, stderr is merged."""
    script = ('i=0; while [ "$(stty size)" = "0 0" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; '
              'echo "size $(stty size)"; read line; echo "got:$line" >&2; '
              'i=0; while [ "$(stty size)" != "40 120" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; '
              'echo "size $(stty size)"; [ -t 0 ] && echo tty; exit 4')
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 101, 0, 0))
    p = await asyncio.create_subprocess_exec(
        "setsid", "-c", *env.argv("exec", "-it", "--transport", transport, "c1", "sh", "-c", script),
        stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    loop = asyncio.get_running_loop()

    async def expect(what: bytes, timeout: float = 20) -> None:
        deadline = loop.time() + timeout
        while what not in out:
            assert loop.time() < deadline, f"no {what!r} in {bytes(out)!r}"
            readable = asyncio.Event()
            loop.add_reader(master, readable.set)
            try:
                await asyncio.wait_for(readable.wait(), deadline - loop.time())
            finally:
                loop.remove_reader(master)
            try:
                out.extend(os.read(master, 65536))
            except OSError:  # EIO: crictl exited
                raise AssertionError(f"no {what!r} in {bytes(out)!r}") from None

    try:
        await expect(b"size 37 101")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.write(master, b"hi\r")
        await expect(b"tty")
        rc = await asyncio.wait_for(p.wait(), 20)
        with contextlib.suppress(OSError):
            out.extend(os.read(master, 65536))
    finally:
        if p.returncode is None:
            p.kill()
        os.close(master)
    text = bytes(out).replace(b"\r\n", b"\n")
    assert b"got:hi\n" in text and b"size 40 120\n" in text, text
    assert rc == 1  # exit 4, which crictl reports as an error (its own exit status is 1)
    proc = env.backend.procs[-1]
    assert proc.sizes[0] == (37, 101) and (40, 120) in proc.sizes


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_errors(env: Env, transport: str) -> None:
    rc, _, err = await env.crictl("exec", "-r", transport, "nosuch", "true")
    assert rc == 1 and "Internal error occurred: error executing command in container: " in err
    assert "container nosuch not found" in err
    rc, _, err = await env.crictl("exec", "-r", transport, "c1", "/nonexistent/binary")
    assert rc == 1 and "No such file or directory" in err, err


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_client_hangup(env: Env, transport: str) -> None:
    """A client that goes away: a process that ends when its stdin closes is left to end by itself; one that
    does not is killed after the grace period. Either way the server closes it."""
    for stdin, cmd, killed in ((True, ["cat"], False), (False, ["sleep", "300"], True)):
        argv = env.argv("exec", *(["-i"] if stdin else []), "--transport", transport, "c1", *cmd)
        p = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        n = len(env.backend.procs)
        for _ in range(200):
            if len(env.backend.procs) > n:
                break
            await asyncio.sleep(0.05)
        proc = env.backend.procs[-1]
        await asyncio.sleep(0.3)
        p.kill()  # no goodbye: the connection just ends
        await p.wait()
        await asyncio.wait_for(proc.exit, 10)
        for _ in range(100):
            if proc.closed:
                break
            await asyncio.sleep(0.05)
        assert proc.closed and proc.killed == killed, (cmd, proc.killed)
        assert proc.stdin_closed == stdin


# ==== crictl attach ===================================================================================================
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_attach(env: Env, transport: str) -> None:
    """Attach to a container whose main process reads stdin (StdinOnce): its output from now on, the client's
    stdin to it, and its end ends the session with success (the kubelet reports no exit code for attach)."""
    c = env.backend.containers["a1"] = await Container.start(
        'echo before; while read l; do echo "got:$l"; echo "err:$l" >&2; done; echo bye; exit 5')
    await asyncio.sleep(0.2)
    rc, out, err = await env.crictl("attach", "-i", "--transport", transport, "a1", stdin=b"x\ny\n")
    assert (rc, out) == (0, "got:x\ngot:y\nbye\n") and err == "err:x\nerr:y\n", err
    assert await c.exit == 5
    rc, out, err = await env.crictl("attach", "--transport", transport, "a1")  # attached after it exited
    assert rc == 0 and out == ""


# ==== crictl port-forward ============================================================================================
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _round_trip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    writer.write_eof()  # half-close: the echo server answers everything, then closes
    got = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return got


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_port_forward(env: Env, transport: str) -> None:
    local = _free_port()
    p = await asyncio.create_subprocess_exec(*env.argv("port-forward", "--transport", transport, "sb",
                                                       f"{local}:8080"),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert p.stdout
        line = await asyncio.wait_for(p.stdout.readline(), 20)
        assert line.startswith(f"Forwarding from 127.0.0.1:{local} -> 8080".encode()), line
        big = os.urandom(300_000)
        results = await asyncio.gather(_round_trip(local, b"ping\n"), _round_trip(local, big),
                                       _round_trip(local, b""))
        assert results == [b"ping\n", big, b""]
        assert await _round_trip(local, b"again") == b"again"  # the same connection serves later ones
        assert env.backend.forwards == [("sb", 8080)] * 4
    finally:
        p.send_signal(signal.SIGINT)
        await asyncio.wait_for(p.wait(), 10)
    # a port nobody listens on: the error stream says so; client-go then drops the connection
    local = _free_port()
    p = await asyncio.create_subprocess_exec(*env.argv("port-forward", "-r", transport, "sb", f"{local}:9999"),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert p.stdout and p.stderr
    await asyncio.wait_for(p.stdout.readline(), 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    # nothing sent: client-go closes this connection as soon as the error arrives, and unread input would turn
    # that close into a reset
    assert await asyncio.wait_for(reader.read(), 20) == b""
    writer.close()
    _, err = await asyncio.wait_for(p.communicate(), 20)
    assert "error forwarding port 9999 to pod sb" in err.decode() and "nothing listens on port 9999" in err.decode()
    assert p.returncode == 1


# ==== the HTTP front =================================================================================================
async def _http(port: int, head: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    top, _, body = data.decode().partition("\r\n\r\n")
    lines = top.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


class _Req:
    """Stands in for the generated CRI request messages (only attributes are read)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(dict(container_id="", cmd=[], tty=False, stdin=False, stdout=True, stderr=False,
                                  pod_sandbox_id="", port=[]) | kw)


@pytest.fixture
async def server() -> AsyncIterator[StreamingServer]:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    s = StreamingServer(HostBackend(echo.sockets[0].getsockname()[1]), timing=TIMING, token_ttl=0.5)
    await s.start()
    yield s
    await s.stop()
    echo.close()


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def test_bad_requests(server: StreamingServer) -> None:
    url = server.url_for_exec(_Req(container_id="c1", cmd=["true"]))
    assert re.fullmatch(rf"http://127\.0\.0\.1:{server.port}/exec/[A-Za-z0-9_-]{{24}}", url)
    code, _, body = await _http(server.port, "GET /exec/nonsense HTTP/1.1\nHost: x\n")
    assert code == 404 and "unknown or expired exec token" in body
    code, _, body = await _http(server.port, f"GET {_path(url).replace('exec', 'attach')} HTTP/1.1\n")
    assert code == 404  # an exec token is not an attach token (and is used up)
    spdy_head = "POST {} HTTP/1.1\nConnection: Upgrade\nUpgrade: SPDY/3.1\n"
    url = server.url_for_exec(_Req(container_id="c1"))
    code, _, body = await _http(server.port, f"GET {_path(url)} HTTP/1.1\nHost: x\n")
    assert code == 400 and "needs an HTTP upgrade to SPDY/3.1 or websocket" in body
    code, _, body = await _http(server.port, f"GET {_path(url)} HTTP/1.1\n")
    assert code == 404  # single use
    url = server.url_for_exec(_Req(container_id="c1"))
    code, _, body = await _http(server.port, f"GET {_path(url)} HTTP/1.1\nConnection: Upgrade\nUpgrade: h2c\n")
    assert code == 400 and "unsupported upgrade 'h2c'" in body
    url = server.url_for_exec(_Req(container_id="c1"))
    code, _, body = await _http(server.port, spdy_head.format(_path(url)))
    assert code == 400 and "X-Stream-Protocol-Version is missing" in body
    url = server.url_for_exec(_Req(container_id="c1"))
    code, headers, body = await _http(server.port, spdy_head.format(_path(url)) + "X-Stream-Protocol-Version: "
                                      "v9.channel.k8s.io\n")
    assert code == 403 and "unable to negotiate protocol" in body
    assert headers["X-Accepted-Stream-Protocol-Versions"] == "channel.k8s.io"  # the last of the list
    url = server.url_for_port_forward(_Req(pod_sandbox_id="sb"))
    code, _, body = await _http(server.port, f"PUT {_path(url)} HTTP/1.1\n")
    assert code == 405
    code, _, _ = await _http(server.port, "GET /other/x HTTP/1.1\n")
    assert code == 404
    code, _, _ = await _http(server.port, "garbage\n")
    assert code == 400
    url = server.url_for_exec(_Req(container_id="c1"))
    await asyncio.sleep(0.6)  # past the (test's) token lifetime
    code, _, body = await _http(server.port, spdy_head.format(_path(url)) + "X-Stream-Protocol-Version: "
                                "v4.channel.k8s.io\n")
    assert code == 404 and "expired" in body
    url = server.url_for_exec(_Req(container_id="c1"))
    with pytest.raises(InvalidStatus) as e:
        async with ws_connect(url.replace("http", "ws"), subprotocols=[Subprotocol("v9.channel.k8s.io")]):
            pass
    assert e.value.response.status_code == 400
    assert b"unable to negotiate protocol" in e.value.response.body


async def test_url_validation(server: StreamingServer) -> None:
    for kw, why in ((dict(container_id=""), "missing required container_id"),
                    (dict(container_id="c", tty=True, stderr=True), "tty and stderr cannot both be true"),
                    (dict(container_id="c", stdout=False), "one of stdin, stdout, or stderr must be set")):
        with pytest.raises(InvalidArgument, match=why):
            server.url_for_exec(_Req(**kw))
        with pytest.raises(InvalidArgument, match=why):
            server.url_for_attach(_Req(**kw))
    with pytest.raises(InvalidArgument, match="pod_sandbox_id"):
        server.url_for_port_forward(_Req())
    with pytest.raises(InvalidArgument, match="port 70000"):
        server.url_for_port_forward(_Req(pod_sandbox_id="sb", port=[70000]))


async def test_in_flight_limit() -> None:
    import grpc

    from hypercontainer.cri.errors import CriError

    s = StreamingServer(HostBackend(1), max_in_flight=2)
    await s.start()
    try:
        for _ in range(2):
            s.url_for_exec(_Req(container_id="c"))
        with pytest.raises(CriError) as e:
            s.url_for_exec(_Req(container_id="c"))
        assert e.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await s.stop()


# ==== the WebSocket channel protocols, message by message ============================================================
async def _messages(ws: Any) -> list[bytes | str]:
    out = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            out.append(await asyncio.wait_for(ws.recv(), 10))
    return out


async def test_ws_v5_channels(server: StreamingServer) -> None:
    """v5.channel.k8s.io: an empty message on stdout first (the kubelet's "ready"), stdin half-closed by
    [255, 0], a resize in two pieces, the status on channel 3, then a normal close."""
    url = server.url_for_exec(_Req(container_id="c1", cmd=["sh", "-c", "cat; exit 2"], stdin=True, stderr=True))
    async with ws_connect(url.replace("http", "ws"), subprotocols=[Subprotocol("v5.channel.k8s.io")]) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        await ws.send(b"\x00hello ")
        await ws.send(b"\x00world")
        await ws.send(b"\x04" + b'{"Width":5')  # not a tty: the resize channel is read and dropped
        await ws.send(b"\xff\x00")
        got = await _messages(ws)
        assert ws.close_code == 1000
    assert got[0] == b"\x01"
    assert b"".join(m[1:] for m in got if isinstance(m, bytes) and m[:1] == b"\x01") == b"hello world"
    st = json.loads(next(m for m in got if isinstance(m, bytes) and m[:1] == b"\x03")[1:])
    assert st["reason"] == "NonZeroExitCode" and st["details"]["causes"][0]["message"] == "2"


async def test_ws_base64_and_v1_channels(server: StreamingServer) -> None:
    url = server.url_for_exec(_Req(container_id="c1", cmd=["sh", "-c", "echo hi; echo oops >&2; exit 1"],
                                   stderr=True))
    async with ws_connect(url.replace("http", "ws"), subprotocols=[Subprotocol("v4.base64.channel.k8s.io")]) as ws:
        got = await _messages(ws)
    assert got[0] == "1" and "1" + base64.b64encode(b"hi\n").decode() in got
    assert "2" + base64.b64encode(b"oops\n").decode() in got
    status_msg = next(m for m in got if isinstance(m, str) and m.startswith("3"))
    assert json.loads(base64.b64decode(status_msg[1:]))["details"]["causes"][0]["message"] == "1"
    # channel.k8s.io (v1 semantics): nothing on the error channel on success, the message on failure
    for cmd, expect in ((["true"], None), (["sh", "-c", "exit 7"], b"command terminated with non-zero exit code")):
        url = server.url_for_exec(_Req(container_id="c1", cmd=cmd))
        async with ws_connect(url.replace("http", "ws"), subprotocols=[Subprotocol("channel.k8s.io")]) as ws:
            got = await _messages(ws)
        errors = [m[1:] for m in got if isinstance(m, bytes) and m[:1] == b"\x03"]
        assert (errors == []) if expect is None else (errors and errors[0].startswith(expect)), got


async def test_ws_port_forward_channels(server: StreamingServer) -> None:
    """v4.channel.k8s.io port-forward (kubelet's websocket port-forward): ports from ?port=; each channel pair
    starts with its port, 16 bits little-endian; the data channel then carries the connection."""
    url = server.url_for_port_forward(_Req(pod_sandbox_id="sb"))
    async with ws_connect(url.replace("http", "ws") + "?port=8080&port=9999",
                          subprotocols=[Subprotocol("v4.channel.k8s.io")]) as ws:
        first = [await asyncio.wait_for(ws.recv(), 10) for _ in range(4)]
        assert sorted(first) == sorted([b"\x00\x90\x1f", b"\x01\x90\x1f", b"\x02\x0f\x27", b"\x03\x0f\x27"])
        error = await asyncio.wait_for(ws.recv(), 10)
        assert error[:1] == b"\x03" and b"error forwarding port 9999 to pod sb" in error
        await ws.send(b"\x00echo me")
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00echo me"


async def test_spdy_tunnelled_in_websocket(server: StreamingServer) -> None:
    """SPDY/3.1+portforward.k8s.io (client-go's port-forward over WebSockets; crictl's real use of it is in
    test_port_forward[websocket]): SPDY in binary messages; a text message ends it. The handshake is written by
    hand: the websockets client refuses a subprotocol with a "/" in it, as its server would without our parser."""
    url = server.url_for_port_forward(_Req(pod_sandbox_id="sb"))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {_path(url)} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    assert head.startswith("HTTP/1.1 101") and "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n" in head
    client = ClientProtocol(parse_uri("ws://x/"), state=State.OPEN)

    async def exchange(send: bytes | str | None) -> list[Frame]:
        if isinstance(send, bytes):
            client.send_binary(send)
        elif isinstance(send, str):
            client.send_text(send.encode())
        for chunk in client.data_to_send():
            writer.write(chunk)
        events: list[Frame] = []
        while not any(e.opcode in (Opcode.BINARY, Opcode.CLOSE) for e in events):
            data = await asyncio.wait_for(reader.read(65536), 10)
            client.receive_data(data) if data else client.receive_eof()
            events += [e for e in client.events_received() if isinstance(e, Frame)]
            if not data:
                break
        return events

    pong = await exchange(spdy.Encoder().encode(spdy.Ping(1)))
    assert spdy.Decoder().feed(bytes(pong[0].data)) == [spdy.Ping(1)]
    closing = await exchange("text")
    assert any(e.opcode == Opcode.CLOSE and Close.parse(e.data).code == 1000 for e in closing)
    writer.close()


# ==== the pod core Backend (pods.py), on stand-ins for the pod, its agent client and a container ===================
class FakeClient:
    def __init__(self) -> None:
        self.io: list[tuple[int, bytes]] = []
        self.unregistered: list[int] = []

    async def send_io(self, stream: int, data: bytes) -> None:
        self.io.append((stream, data))

    def unregister(self, stream: int) -> None:
        self.unregistered.append(stream)


class FakePod:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.container_obj: Any = None
        self.exec_result: Any = None

    async def resize_stream(self, stream: int, rows: int, cols: int) -> None:
        self.calls.append(("resize_stream", stream, rows, cols))

    async def signal_stream(self, stream: int, sig: int) -> None:
        self.calls.append(("signal_stream", stream, sig))

    async def resize(self, name: str, rows: int, cols: int) -> None:
        self.calls.append(("resize", name, rows, cols))

    async def exec(self, name: str, cmd: list[str], *, tty: bool, stdin: bool) -> Any:
        self.calls.append(("exec", name, cmd, tty, stdin))
        if isinstance(self.exec_result, Exception):
            raise self.exec_result
        return self.exec_result

    def container(self, name: str) -> Any:
        return self.container_obj


async def test_pod_backend_exec() -> None:
    from hypercontainer.cri.streaming.pods import ExecProcess, NotRunnable, PodBackend
    from hypercontainer.errors import CommandNotRunnable
    from hypercontainer.protocol.client import ProcessStreams

    pod, client = FakePod(), FakeClient()
    streams = ProcessStreams(client, 8, terminal=True)
    pod.exec_result = streams
    backend = PodBackend(lambda cid: (pod, "web"), lambda cid: False, lambda sid, port: None)
    proc = await backend.exec("cid", ["sh"], True, True)
    assert isinstance(proc, ExecProcess) and pod.calls == [("exec", "web", ["sh"], True, True)]
    await proc.write_stdin(b"ls\n")
    await proc.close_stdin()
    await proc.resize(24, 80)
    await proc.kill()
    assert client.io == [(8, b"ls\n"), (8, b"")]
    assert pod.calls[1:] == [("resize_stream", 8, 24, 80), ("signal_stream", 8, signal.SIGKILL)]
    # close(): the stream is unregistered, and a put blocked on the full queue goes through (the agent's channel
    # is never held up by a session that stopped reading)
    for i in range(streams.stdout.maxsize):
        streams.stdout.put_nowait(b"%d" % i)
    blocked = asyncio.create_task(streams.stdout.put(b"late"))
    await asyncio.sleep(0)
    await proc.close()
    await asyncio.wait_for(blocked, 1)
    assert client.unregistered == [8]
    pod.exec_result = CommandNotRunnable("exec: nosuch: not found", 127)
    for tty, where in ((False, "stderr"), (True, "stdout")):
        nr = await backend.exec("cid", ["nosuch"], tty, False)
        assert isinstance(nr, NotRunnable) and await nr.exit == 127
        assert (await getattr(nr, where).get()).startswith(b"exec: nosuch: not found")


async def test_pod_backend_attach() -> None:
    from hypercontainer.cri.streaming.pods import PodBackend
    from hypercontainer.errors import Conflict

    class FakeContainer:
        name = "web"

        def __init__(self, stdin: bool) -> None:
            self.spec = type("Spec", (), {"stdin": stdin})()
            self.subscribers: list[asyncio.Queue[Any]] = []
            self.streams = type("S", (), {})()
            self.stdin: list[bytes | None] = []

            async def write(data: bytes) -> None:
                self.stdin.append(data)

            async def close() -> None:
                self.stdin.append(None)

            self.streams.write_stdin, self.streams.close_stdin = write, close

        def subscribe(self) -> asyncio.Queue[Any]:
            q: asyncio.Queue[Any] = asyncio.Queue()
            self.subscribers.append(q)
            return q

        def unsubscribe(self, q: asyncio.Queue[Any]) -> None:
            self.subscribers.remove(q)

    pod = FakePod()
    pod.container_obj = c = FakeContainer(stdin=True)
    once = {"a": True, "b": False}
    backend = PodBackend(lambda cid: (pod, "web"), once.__getitem__, lambda sid, port: None)
    att = await backend.attach("a", False, True)
    for ev in (("stdout", b"o"), ("stderr", b"e"), ("exit", 3)):
        c.subscribers[0].put_nowait(ev)
    assert [await att.stdout.get(), await att.stdout.get(), await att.stderr.get(), await att.stderr.get()] == [
        b"o", None, b"e", None]
    assert await att.exit == 3
    await att.write_stdin(b"x")
    await att.close_stdin()  # StdinOnce: the container's stdin closes
    await att.resize(10, 20)
    await att.close()
    assert c.stdin == [b"x", None] and c.subscribers == [] and pod.calls == [("resize", "web", 10, 20)]
    att = await backend.attach("b", False, True)
    await att.close_stdin()  # not StdinOnce: stays open
    c.subscribers[0].put_nowait(("error", "the VM went away"))
    with pytest.raises(Exception, match="the VM went away"):
        await att.exit
    await att.close()
    assert c.stdin == [b"x", None]
    pod.container_obj = FakeContainer(stdin=False)
    with pytest.raises(Conflict, match="created without stdin"):
        await backend.attach("b", False, True)


# ==== timeouts ======================================================================================================
async def test_stream_creation_and_idle_timeouts() -> None:
    """A SPDY client that opens the error stream but not stdout within the creation timeout gets its connection
    closed and starts nothing; a connection that carries nothing for the idle timeout is closed, which to a
    running exec is a hang-up (its process is killed after the grace period)."""
    backend = HostBackend(1)
    s = StreamingServer(backend, timing=Timing(grace=0.2, drain=1, linger=1, creation=0.3, idle=0.6))
    await s.start()
    try:
        url = s.url_for_exec(_Req(container_id="c1", cmd=["true"]))
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(f"POST {_path(url)} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     "X-Stream-Protocol-Version: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n".encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert head.startswith("HTTP/1.1 101") and "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n" in head
        writer.write(spdy.Encoder().encode(spdy.SynStream(1, {"streamtype": ["error"]})))
        rest = await asyncio.wait_for(reader.read(), 5)  # the reply, then nothing until the connection ends
        assert spdy.Decoder().feed(rest)[0] == spdy.SynReply(1, {})
        assert backend.procs == []
        writer.close()

        url = s.url_for_exec(_Req(container_id="c1", cmd=["sleep", "30"]))
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with ws_connect(url.replace("http", "ws"), subprotocols=[Subprotocol("v5.channel.k8s.io")],
                              ping_interval=None) as ws:
            await _messages(ws)
        assert 0.5 < loop.time() - started < 5
        proc = backend.procs[0]
        await asyncio.wait_for(proc.exit, 5)
        assert proc.killed
    finally:
        await s.stop()
