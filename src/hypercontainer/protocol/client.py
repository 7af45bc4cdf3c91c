"""The host's connection to one guest agent: requests with replies, process streams, exit events.

Two unix sockets (QEMU's ends of the virtio-serial ports). One reader task per socket; a frame that breaks
the protocol ends the connection and fails everything waiting on it (the guest is untrusted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_mod
import logging
import os
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from ..errors import AgentError, VMError
from .codec import (
    VERSION,
    CtlFrame,
    Fields,
    FrameReader,
    IoFrame,
    Msg,
    Phase,
    ProtocolError,
    check_from_guest,
    encode_ctl,
    encode_io,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")
STREAM_QUEUE = 64  # chunks of up to 64 KiB buffered per output stream before the guest is slowed down
# A request the agent has not answered in this time: the agent is lost (a silent or stuck guest, a reply cut short).
# Every request is answered at once or within a few seconds (START_POD waits up to 2 s for a NIC); VERSION is not
# timed here (each handshake has its own budget: a cold boot under TCG takes long).
REPLY_TIMEOUT = 30.0
# The guest sends a process's EOFs before its EXITED, on the other channel: they may arrive a little after it, but
# a stream channel that stays silent this long after an EXITED whose output has not ended is dead (closed in the
# guest): the agent is lost. Not while our own consumers hold the stream reader back (a full queue).
EOF_TIMEOUT = 10.0
UNATTENDED_LOGGED = 64  # EXITED events for processes nobody is attached to that are logged each (then every 10000th)


class AgentRequestError(AgentError):
    """The agent's ERROR reply: errno, message and, for a process start, the step that failed."""

    def __init__(self, message: str, errno: int, phase: Phase | None = None) -> None:
        super().__init__(message, errno)
        self.phase = phase


class ProcessStreams:
    """The host end of one guest process: output queues (None = EOF), stdin writer, exit status."""

    def __init__(self, client: AgentClient, stream: int, terminal: bool) -> None:
        self.client = client
        self.stream = stream
        self.terminal = terminal
        self.stdout: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_QUEUE)
        self.stderr: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_QUEUE)
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.oom_killed = False  # set with the exit: the guest kernel's OOM killer ended the process
        self.pid: int | None = None  # the guest's pid, once the agent started it (Agent sets it)
        self.stdin_closed = False
        self.ended: set[int] = set()  # output streams that saw EOF: later frames are the guest's error
        if terminal:
            self.stderr.put_nowait(None)
            self.ended.add(stream + 1)

    async def write_stdin(self, data: bytes) -> None:
        for i in range(0, len(data), 65536):
            await self.client.send_io(self.stream, data[i : i + 65536])

    async def close_stdin(self) -> None:
        if not self.stdin_closed:
            self.stdin_closed = True
            await self.client.send_io(self.stream, b"")


class AgentClient:
    def __init__(self, ctl_path: Path | None = None, io_path: Path | None = None) -> None:
        self.ctl_path, self.io_path = ctl_path, io_path
        self._ctl: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._seq = 0
        self._pending: dict[int, asyncio.Future[CtlFrame]] = {}
        self._procs: dict[int, ProcessStreams] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.agent = ""
        self.guest_uptime: float | None = None  # seconds since guest kernel start, at the handshake
        # The highest stream id the host has handed out for this guest (across daemon restarts): an EXITED for an
        # unknown stream up to it is a process an earlier hyperd started; above it, the guest is making it up.
        self.max_stream = 0
        self.takeover = False  # taking over from an earlier hyperd: stale replies may still arrive
        self._echo: asyncio.Future[None] | None = None
        self._echo_token = b""
        self.reply_timeout = REPLY_TIMEOUT
        self.paused = False  # the VM's CPUs are stopped: silence is not the guest's fault (no timeout counts)
        self.eof_timeout = EOF_TIMEOUT
        self._io_frames = 0  # stream frames received: the stream channel is alive while this grows
        self._unattended = 0  # EXITED events for processes nobody was attached to
        self._io_held = False  # the stream reader waits for a consumer (a full output queue), not for the guest

    async def connect(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                assert self.ctl_path and self.io_path
                self._ctl = await asyncio.open_unix_connection(str(self.ctl_path))
                self._io = await asyncio.open_unix_connection(str(self.io_path), limit=1 << 20)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise VMError(f"cannot connect to the agent's sockets {self.ctl_path}") from None
                await asyncio.sleep(0.005)
        self._start_readers()

    async def connect_sockets(self, ctl: socket.socket, io: socket.socket) -> None:
        """Uses already connected sockets (tests drive the agent over socketpairs)."""
        self._ctl = await asyncio.open_unix_connection(sock=ctl)
        self._io = await asyncio.open_unix_connection(sock=io, limit=1 << 20)
        self._start_readers()

    async def detach(self) -> tuple[socket.socket, socket.socket]:
        """Hands the connection over (runv's factory lends a VM): copies of the two connected sockets; this
        client stops reading and closes its own (the connection stays up while a copy is open). Only for an
        idle guest (paused, nothing pending): what this client had read and not handled is dropped."""
        assert self._ctl and self._io
        socks = tuple(socket.socket(fileno=os.dup(conn[1].get_extra_info("socket").fileno()))
                      for conn in (self._ctl, self._io))
        await self.close()
        return socks[0], socks[1]

    def _start_readers(self) -> None:
        self._tasks = [asyncio.create_task(self._read("ctl")), asyncio.create_task(self._read("io"))]

    async def handshake(self, timeout: float) -> str:
        try:
            reply = await asyncio.wait_for(self.request(Msg.VERSION, {"version": VERSION}), timeout)
        except TimeoutError:
            raise VMError(f"the guest agent did not answer within {timeout:.0f} s") from None
        if reply.get("version") != VERSION:
            raise VMError(f"agent speaks protocol {reply.get('version')}, we speak {VERSION}")
        self.agent = str(reply.get("agent", ""))
        uptime = reply.get("uptime_ms")
        if isinstance(uptime, int):
            self.guest_uptime = uptime / 1000
        return self.agent

    def _fail(self, why: str) -> None:
        if self.lost.done():
            return
        self.lost.set_result(why)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(VMError(f"lost the guest agent: {why}"))
        for p in self._procs.values():
            if not p.exit.done():
                p.exit.set_exception(VMError(f"lost the guest agent: {why}"))
            for q in (p.stdout, p.stderr):
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(None)

    async def _read(self, kind: str) -> None:
        """One reader task per channel; any breach of the protocol ends the connection."""
        conn, name = (self._ctl, "control") if kind == "ctl" else (self._io, "stream")
        assert conn
        reader = FrameReader(kind)  # type: ignore[arg-type]
        try:
            while data := await conn[0].read(1 << 17):
                for frame in reader.feed(data):
                    if kind == "ctl":
                        check_from_guest(frame)  # type: ignore[arg-type]
                        self._on_ctl(frame)  # type: ignore[arg-type]
                    else:
                        self._io_frames += 1
                        await self._on_io(frame)  # type: ignore[arg-type]
            self._fail(f"{name} channel closed")
        except ProtocolError as e:
            log.error("agent protocol error on the %s channel: %s", name, e)
            self._fail(f"protocol error: {e}")
        except (ConnectionError, OSError) as e:
            self._fail(f"{name} channel: {e}")

    def _on_ctl(self, frame: CtlFrame) -> None:
        if frame.type == Msg.EXITED:
            stream, status = frame.fields["stream"], frame.fields["status"]
            if not (isinstance(stream, int) and isinstance(status, int)):  # check_from_guest has, but never -O
                raise ProtocolError("EXITED without a numeric stream and status")
            proc = self._procs.get(stream)
            if proc is None:
                if stream <= self.max_stream:
                    self._unattended += 1  # a guest repeating these must not fill hyperd's log: a few, then a count
                    if self._unattended <= UNATTENDED_LOGGED or self._unattended % 10000 == 0:
                        log.info("process on stream %d exited (status %d) while nobody was attached (%d such)",
                                 stream, status, self._unattended)
                    return
                raise ProtocolError(f"EXITED for unknown stream {stream}")
            if status > 255:
                raise ProtocolError(f"exit status {status} out of range")
            oom = int(frame.fields.get("oom_killed", 0))  # type: ignore[arg-type]
            if oom not in (0, 1):
                raise ProtocolError(f"oom_killed {oom} is not 0 or 1")
            if not proc.exit.done():
                proc.oom_killed = bool(oom)
                proc.exit.set_result(status)
                self._watch_eof(proc)
            return
        fut = self._pending.pop(frame.seq, None)
        if fut is None:
            if self.takeover:  # a reply meant for the hyperd before us, held back in the port
                log.info("dropping a reply (seq %d) meant for an earlier connection", frame.seq)
                return
            raise ProtocolError(f"reply to unknown request seq {frame.seq}")
        if not fut.done():
            fut.set_result(frame)

    def _watch_eof(self, proc: ProcessStreams) -> None:
        """After a process's EXITED its output must end (EOF on both streams) while the stream channel is alive."""
        asyncio.get_running_loop().call_later(self.eof_timeout, self._check_eof, proc, self._io_frames)

    def _check_eof(self, proc: ProcessStreams, seen: int) -> None:
        if self.lost.done() or proc.ended >= {proc.stream, proc.stream + 1} or self._procs.get(proc.stream) is not proc:
            return
        if seen != self._io_frames or self._io_held or self.paused:  # it moves, we hold it back, or it sleeps
            self._watch_eof(proc)
            return
        why = f"no end of output on stream {proc.stream} {self.eof_timeout:g} s after EXITED (stream channel silent)"
        log.error("agent: %s", why)
        self._fail(why)

    async def _on_io(self, frame: IoFrame) -> None:
        if frame.stream == 0:  # the echo of io_ping()
            if self._echo and not self._echo.done() and frame.data == self._echo_token:
                self._echo.set_result(None)
            return
        base = frame.stream & ~1
        proc = self._procs.get(base)
        if proc is None or (proc.terminal and frame.stream != base):
            log.debug("dropping %d bytes for unknown stream %d", len(frame.data), frame.stream)
            return
        if frame.stream in proc.ended:
            log.debug("dropping %d bytes after EOF on stream %d", len(frame.data), frame.stream)
            return
        if not frame.data:
            proc.ended.add(frame.stream)
        q = proc.stdout if frame.stream == base else proc.stderr
        self._io_held = q.full()
        try:
            await q.put(frame.data or None)
        finally:
            self._io_held = False

    async def request(self, msg: Msg, fields: Fields | None = None) -> Fields:
        if self.lost.done():
            raise VMError(f"lost the guest agent: {self.lost.result()}")
        assert self._ctl
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        fut: asyncio.Future[CtlFrame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            self._ctl[1].write(encode_ctl(msg, seq, fields))
            await self._timed(msg, self._ctl[1].drain())
            reply = await self._timed(msg, fut)
        except (ConnectionError, OSError) as e:  # the guest hung up while the request was written
            self._fail(f"control channel: {e}")
            if fut.done() and not fut.cancelled():
                fut.exception()  # _fail's, superseded by this one
            raise VMError(f"lost the guest agent: control channel: {e}") from None
        finally:
            self._pending.pop(seq, None)
        if reply.type == Msg.ERROR:
            code, phase = reply.fields["code"], reply.fields.get("phase")
            if not isinstance(code, int):  # check_from_guest has: present, u64, phase known
                raise ProtocolError("ERROR without a numeric code")
            raise AgentRequestError(str(reply.fields["message"]), code, Phase(str(phase)) if phase else None)
        return reply.fields

    async def _timed(self, msg: Msg, aw: Awaitable[_T]) -> _T:
        """`aw` within reply_timeout, the time the VM is paused not counted; else the agent is lost. VERSION is
        not timed here (each handshake has its own budget)."""
        task = asyncio.ensure_future(aw)
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(task), None if msg == Msg.VERSION
                                                  else self.reply_timeout)
                except TimeoutError:
                    if self.paused:
                        continue
                    why = f"no reply to {msg.name} within {self.reply_timeout:g} s"
                    log.error("agent: %s", why)
                    self._fail(why)
                    raise VMError(f"lost the guest agent: {why}") from None
        finally:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # _fail's, when it ended the wait: superseded by ours

    async def io_ping(self, timeout: float) -> None:
        """A round trip on the stream channel (stream 0 echoes): proves both directions work."""
        self._echo = asyncio.get_running_loop().create_future()
        self._echo_token = os.urandom(8)
        await self.send_io(0, self._echo_token)
        try:
            await asyncio.wait_for(asyncio.shield(self._echo), timeout)
        except TimeoutError:
            raise VMError(f"the guest agent did not echo on the stream channel within {timeout:.0f} s") from None

    def register(self, stream: int, terminal: bool) -> ProcessStreams:
        if stream in self._procs:
            raise ValueError(f"stream {stream} in use")
        p = ProcessStreams(self, stream, terminal)
        self._procs[stream] = p
        return p

    def unregister(self, stream: int) -> None:
        self._procs.pop(stream, None)

    async def send_io(self, stream: int, data: bytes) -> None:
        if self.lost.done():
            return
        assert self._io
        async with self._write_lock:
            self._io[1].write(encode_io(stream, data))
            await self._io[1].drain()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for conn in (self._ctl, self._io):
            if conn:
                conn[1].close()
                with contextlib.suppress(Exception):
                    await conn[1].wait_closed()
        if not self.lost.done():
            self.lost.set_result("closed")


def exec_failure_exit_code(err: AgentError) -> int:
    """docker's convention: 127 command not found, 126 not executable."""
    return 127 if err.errno in (errno_mod.ENOENT, errno_mod.ENOTDIR) else 126


def command_exit_code(err: AgentError) -> int | None:
    """docker's exit code when the command could not be run (phase exec or chdir): 127 not found, 126 not
    executable; None for any other failure."""
    if isinstance(err, AgentRequestError) and err.phase in (Phase.EXEC, Phase.CHDIR):
        return exec_failure_exit_code(err)
    return None
