"""exec and attach once the client's streams are open, whatever carries them (SPDY streams or WebSocket channels):
the kubelet's cri/streaming/remotecommand semantics on a Backend's Process.

The end: the process exits -> its output is forwarded to its end (bounded by `drain`), then the status goes on the
error stream and that stream ends. The client hangs up first -> nothing more is written; its stdin ends (which
closes the process's stdin, or for an attachment what the backend decides); an exec'd process that has not exited
`grace` seconds later is killed (containerd kills at once), so no process outlives its session; an attachment is
just dropped. The process's output queues are read to their end (or to close()) either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from . import status
from .backend import Backend, Process
from .transport import Inbound, Outbound, StreamClosed

log = logging.getLogger(__name__)
KILL_WAIT = 10.0  # seconds for a killed process's exit to be reported before we stop waiting


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class Timing:
    grace: float = 1.0  # exec: a hung-up client's process gets this long after its stdin closed, then SIGKILL
    drain: float = 5.0  # after the exit, how long its output may take to reach its end
    linger: float = 10.0  # after the status, how long the client gets to close the connection first
    creation: float = 30.0  # how long the client has to open its streams (the kubelet's StreamCreationTimeout)
    idle: float = 4 * 3600.0  # a connection that carries nothing this long is closed (StreamIdleTimeout)


@dataclass
class Streams:
    error: Outbound
    stdin: Inbound | None = None
    stdout: Outbound | None = None
    stderr: Outbound | None = None
    resize: Inbound | None = None


class Resizes:
    """A stream of JSON objects {"Width": w, "Height": h} (Go's encoding of client-go's TerminalSize, one after the
    other, in pieces of any size; Go's decoder matches names case-insensitively, so do we)."""

    def __init__(self) -> None:
        self._buf = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """The (rows, cols) completed by data. Raises ValueError on what is not such a stream."""
        self._buf += data.decode()
        out: list[tuple[int, int]] = []
        while True:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return out
            try:
                obj, end = self._decoder.raw_decode(self._buf)
            except json.JSONDecodeError:
                if len(self._buf) > 4096:
                    raise ValueError("a resize message over 4 KiB") from None
                return out  # incomplete: wait for more
            self._buf = self._buf[end:]
            if not isinstance(obj, dict):
                raise ValueError(f"a resize message that is not an object: {obj!r}")
            size = {str(k).lower(): v for k, v in obj.items()}
            w, h = size.get("width", 0), size.get("height", 0)
            if not (isinstance(w, int) and isinstance(h, int) and 0 <= w <= 65535 and 0 <= h <= 65535):
                raise ValueError(f"a terminal size out of range: {obj!r}")
            out.append((h, w))


async def _pump_output(queue: asyncio.Queue[bytes | None], out: Outbound | None) -> None:
    """Forwards one output queue to its end; once the client is gone it goes on reading (and dropping)."""
    broken = out is None
    while (chunk := await queue.get()) is not None:
        if not broken:
            assert out is not None
            try:
                await out.write(chunk)
            except (StreamClosed, ConnectionError, OSError):
                broken = True
    if not broken:
        assert out is not None
        with contextlib.suppress(StreamClosed, ConnectionError, OSError):
            await out.close()


async def _pump_stdin(inbound: Inbound, proc: Process) -> None:
    try:
        while (data := await inbound.read()) is not None:
            await proc.write_stdin(data)
    except Exception as e:  # the process or its VM went away: nothing more can be written
        log.debug("stdin: %s", e)
        inbound.discard()
        return
    await proc.close_stdin()


async def _pump_resize(inbound: Inbound, proc: Process) -> None:
    sizes = Resizes()
    try:
        while (data := await inbound.read()) is not None:
            for rows, cols in sizes.feed(data):
                if rows or cols:
                    await proc.resize(rows, cols)
    except ValueError as e:
        log.info("resize stream: %s; ignoring it from now on", e)
    except Exception as e:
        log.debug("resize: %s", e)
    inbound.discard()


async def _write_status(streams: Streams, st: dict[str, object], v4: bool) -> None:
    data = status.encode(st, v4)
    with contextlib.suppress(StreamClosed, ConnectionError, OSError):
        if data:
            await streams.error.write(data)
        await streams.error.close()


async def serve(backend: Backend, req: ExecRequest | AttachRequest, streams: Streams, *, v4: bool,
                gone: asyncio.Event, timing: Timing) -> None:
    """Runs one exec or attach session on open streams. `gone`: set when the client hangs up."""
    is_exec = isinstance(req, ExecRequest)
    what = "exec" if is_exec else "attach"
    try:
        if isinstance(req, ExecRequest):
            proc = await backend.exec(req.container_id, list(req.cmd), req.tty, req.stdin)
        else:
            proc = await backend.attach(req.container_id, req.tty, req.stdin)
    except Exception as e:
        log.info("%s in %s: %s", what, req.container_id, e)
        doing = "executing command in" if is_exec else "attaching to"
        for inbound in (streams.stdin, streams.resize):
            if inbound:
                inbound.discard()
        await _write_status(streams, status.internal_error(f"error {doing} container: {e}"), v4)
        return

    outputs = [asyncio.create_task(_pump_output(proc.stdout, streams.stdout if req.stdout else None)),
               asyncio.create_task(_pump_output(proc.stderr, streams.stderr if req.stderr else None))]
    inputs: list[asyncio.Task[None]] = []
    if streams.stdin and req.stdin:
        inputs.append(asyncio.create_task(_pump_stdin(streams.stdin, proc)))
    elif streams.stdin:
        streams.stdin.discard()
    if streams.resize and req.tty:
        inputs.append(asyncio.create_task(_pump_resize(streams.resize, proc)))
    elif streams.resize:
        streams.resize.discard()
    hangup = asyncio.create_task(gone.wait())
    exited = asyncio.shield(proc.exit)  # cancelling it leaves proc.exit alone
    try:
        waits: list[asyncio.Future[Any]] = [exited, hangup]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server stops: an exec'd process does not outlive its session
            if is_exec and not proc.exit.done():
                with contextlib.suppress(Exception):
                    await proc.kill()
            raise
        if not proc.exit.done():
            log.info("%s in %s: the client hung up", what, req.container_id)
            # its stdin ended with the connection: the stdin pump passes that on (close_stdin) and returns
            if inputs:
                await asyncio.wait(inputs, timeout=timing.grace)
            if is_exec:
                try:
                    await asyncio.wait_for(asyncio.shield(proc.exit), timing.grace)
                except TimeoutError:
                    log.info("exec in %s: killing the process its client left", req.container_id)
                    with contextlib.suppress(Exception):
                        await proc.kill()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(proc.exit), KILL_WAIT)
                except Exception:
                    pass  # the exit itself failed (VM gone): nothing left to end
                await asyncio.wait(outputs, timeout=timing.drain)
            return
        for t in inputs:
            t.cancel()
        for inbound in (streams.stdin, streams.resize):
            if inbound:
                inbound.discard()
        _, pending = await asyncio.wait(outputs, timeout=timing.drain)
        if pending:
            log.info("%s in %s: output still open %.0f s after the exit; ending the session", what,
                     req.container_id, timing.drain)
        try:
            code = proc.exit.result()
        except Exception as e:
            st = status.internal_error(f"error {'executing command in' if is_exec else 'attaching to'} "
                                       f"container: {e}")
        else:
            if not is_exec or code == 0:
                st = status.success()
            elif 0 < code <= 255:
                st = status.exit_code(code, list(req.cmd) if isinstance(req, ExecRequest) else [])
            else:
                st = status.internal_error(f"exit status {code} out of range")
        await _write_status(streams, st, v4)
    finally:
        hangup.cancel()
        exited.cancel()
        for t in inputs:
            t.cancel()
        for inbound in (streams.stdin, streams.resize):
            if inbound:
                inbound.discard()
        try:
            await proc.close()
        except Exception:
            log.exception("%s in %s: closing the process failed", what, req.container_id)
        for t in outputs:
            t.cancel()
        await asyncio.gather(*outputs, *inputs, hangup, exited, return_exceptions=True)
