"""The guest's serial console, bounded: QEMU serves it on a unix socket, hyperd reads it and writes console.log,
rotated to console.log.1 when it would pass CAP bytes (at most 2 x CAP on disk per VM).

Backpressure instead of loss while hyperd reads: a guest writing faster than that only slows its own serial port.
While no hyperd is connected (between a hyperd's exit and the next one's take-over) QEMU drops the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
CAP = 1 << 20
CHUNK = 65536


class RotatingLog:
    """Appends to `path`; when the next write would take it past `cap`, it becomes `path`.1 (replacing it)."""

    def __init__(self, path: Path, cap: int = CAP, truncate: bool = False) -> None:
        self.path, self.cap = path, cap
        self.old = path.with_name(path.name + ".1")
        if truncate:
            self.old.unlink(missing_ok=True)
        self.fd = self._open(truncate)
        self.size = os.fstat(self.fd).st_size

    def _open(self, truncate: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        return os.open(self.path, flags, 0o600)

    def write(self, data: bytes) -> None:
        while data:
            if self.size >= self.cap:
                self.rotate()
            part = data[: self.cap - self.size]
            os.write(self.fd, part)
            self.size += len(part)
            data = data[len(part):]

    def rotate(self) -> None:
        os.close(self.fd)
        os.replace(self.path, self.old)
        self.fd = self._open(True)
        self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of the console (reaching into console.log.1 after a rotation)."""
    text = ""
    for p in (path, path.with_name(path.name + ".1")):
        with contextlib.suppress(OSError), open(p, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            text = f.read().decode(errors="replace") + text
        if text.count("\n") > lines:
            break
    return "\n".join(text.splitlines()[-lines:])


async def connect(sock: Path, timeout: float = 10.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connects to QEMU's console socket, retrying while it is bound but not yet listening."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await asyncio.open_unix_connection(str(sock))
        except (ConnectionRefusedError, FileNotFoundError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.002)


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: Path, truncate: bool,
                cap: int | None = None) -> None:
    """Copies the console into `out` (rotated at `cap`, else CAP) until QEMU closes the socket (the VM is gone)."""
    sink = RotatingLog(out, cap or CAP, truncate)
    try:
        while data := await reader.read(CHUNK):
            sink.write(data)
    except (ConnectionError, OSError) as e:
        log.debug("console %s: %s", out, e)
    finally:
        sink.close()
        writer.close()
