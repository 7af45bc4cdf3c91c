"""A container's output in the Kubernetes CRI log format, the file a kubelet (and `crictl logs`) reads directly:

    2026-11-30T14:35:09.669794202Z stdout F a whole line
    2026-11-30T14:35:09.669794202Z stderr P the first 16 KiB of a longer line

One file line per line of output: `F` for a whole line (its newline is the file line's), `P` for a piece of a line
longer than MAX_LINE (the reader joins pieces up to the next `F`). What a stream leaves unterminated when it ends
is written as a whole line, as containerd does. The kubelet rotates the file by renaming it and asking the runtime
to reopen it (ReopenContainerLog): reopen().
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)
MAX_LINE = 16 << 10  # containerd's default max_container_log_line_size


def timestamp(ns: int | None = None) -> bytes:
    """RFC 3339 with nanoseconds, UTC: 2006-01-02T15:04:05.000000000Z (containerd's fixed-width form)."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    return (dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z").encode()


class CriLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO | None = None
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._failed = False

    def open(self) -> None:
        """Opens (creates) the file for appending; its directory is made if missing, as containerd does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        self._f = os.fdopen(fd, "ab")

    def reopen(self) -> None:
        """The kubelet renamed the file: the next lines go to a new one at the same path."""
        self.close()
        self._failed = False
        self.open()

    def write(self, stream: str, data: bytes) -> None:
        buf = self._pending.get(stream, b"") + data
        *lines, rest = buf.split(b"\n")
        out = [self._line(stream, b"F", line) for line in lines]
        while len(rest) > MAX_LINE:
            out.append(self._line(stream, b"P", rest[:MAX_LINE]))
            rest = rest[MAX_LINE:]
        self._pending[stream] = rest
        self._put(b"".join(out))

    def end(self, stream: str) -> None:
        """The stream ended: what it left without a newline is its last line."""
        rest, self._pending[stream] = self._pending.get(stream, b""), b""
        if rest:
            self._put(self._line(stream, b"F", rest))

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None

    @staticmethod
    def _line(stream: str, tag: bytes, content: bytes) -> bytes:
        return b" ".join((timestamp(), stream.encode(), tag, content)) + b"\n"

    def _put(self, data: bytes) -> None:
        if not data:
            return
        try:
            if self._f is None:
                self.open()
            assert self._f
            self._f.write(data)
            self._f.flush()
        except OSError as e:  # the kubelet's directory went away, a full disk: the pod core's own log goes on
            if not self._failed:
                log.warning("CRI log %s: %s (further output is not written there)", self.path, e)
            self._failed = True
