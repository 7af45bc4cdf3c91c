"""The shim's socket: one JSON request line, one JSON reply line; an exec then carries its stdio as frames.

    frame = kind: u8, length: u32 (big endian), data
    shim -> client: 1 stdout, 2 stderr, 3 exit (data: i32 status), 7 error (text), 8 oom (the guest's OOM killer
                    ended the container: sent before its exit)
    client -> shim: 0 stdin (length 0: EOF), 4 resize (u16 rows, u16 cols), 5 signal (i32),
                    6 start (a container that joined the sandbox)
"""

from __future__ import annotations

import json
import signal
import socket
import struct
from pathlib import Path

from ...errors import Conflict, HCError

TYPE_CHECKING = False  # `typing` costs each runv call ~6-19 ms of imports
if TYPE_CHECKING:
    import asyncio

# The signals a shim (or a warm shim's stand-in) gets that go on to the container.
FORWARDED = [s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGPIPE,
                                                   signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP,
                                                   signal.SIGCONT, signal.SIGURG)]
HDR = struct.Struct(">BI")
STDIN, STDOUT, STDERR, EXIT, RESIZE, SIGNAL, START, ERROR, OOM = 0, 1, 2, 3, 4, 5, 6, 7, 8
MAX_FRAME = 1 << 20


def frame(kind: int, data: bytes = b"") -> bytes:
    return HDR.pack(kind, len(data)) + data


def request(sock_path: Path, req: dict, timeout: float = 120.0) -> dict:
    """A one-shot request to a container's shim (blocking: runv is a short-lived command)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
    except OSError:
        s.close()
        raise Conflict("the container is not running (its shim is gone)") from None
    with s, s.makefile("rwb") as f:
        f.write(json.dumps(req).encode() + b"\n")
        f.flush()
        line = f.readline()
    if not line:
        raise HCError("the shim closed the connection without an answer")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise HCError(reply.get("error", "the shim refused the request"))
    return reply


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    import asyncio

    try:
        kind, n = HDR.unpack(await reader.readexactly(HDR.size))
        if n > MAX_FRAME:
            return None
        return kind, await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
