"""A container's log file (JSON lines, docker's json-file shape), written so that a full disk never stops the
container: a record that does not fit is dropped whole (never half a line) and counted, and the next record that
fits is preceded by one that notes the gap. Rotation keeps this file and one before it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from pathlib import Path

from ..errors import FULL

log = logging.getLogger(__name__)


def record(stream: str, data: bytes) -> bytes:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    return (json.dumps({"time": now, "stream": stream, "log": data.decode("utf-8", "backslashreplace")}) + "\n"
            ).encode()


class LogFile:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.fd, self.size = self._open()
        self.lost = 0  # bytes of output dropped since the last record that fitted
        self.why = ""

    def _open(self) -> tuple[int, int]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return fd, os.fstat(fd).st_size

    def _put(self, line: bytes) -> bool:
        """Appends a whole line or nothing (a short write on a full disk is cut off again)."""
        try:
            n = os.write(self.fd, line)
            if n == len(line):
                self.size += n
                return True
            raise OSError(28, os.strerror(28))  # a short write: the disk filled up under it
        except OSError as e:
            if e.errno not in FULL:
                raise
            if not self.lost:
                log.warning("log %s: %s: output is dropped until there is room", self.path, e.strerror)
            self.why = e.strerror or "no space left on device"
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            return False

    def _note_gap(self) -> bool:
        """The record that says how much was lost, if any was; False if it does not fit either."""
        if not self.lost:
            return True
        note = f"hyperd: {self.lost} bytes of output lost here ({self.why.lower()} on {self.path.parent})\n"
        if not self._put(record("stderr", note.encode())):
            return False
        self.lost = 0
        return True

    def write(self, stream: str, data: bytes) -> None:
        if not self._note_gap() or not self._put(record(stream, data)):
            self.lost += len(data)
            return
        if self.size > self.max_bytes:
            os.close(self.fd)
            self.path.replace(self.path.with_name(self.path.name + ".1"))
            self.fd, self.size = self._open()

    def close(self) -> None:
        self._note_gap()  # a last try
        os.close(self.fd)
