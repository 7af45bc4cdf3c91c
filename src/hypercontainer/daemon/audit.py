"""The audit log: one JSON line per call that changes something, and per remote call that was refused.

`{"time", "tenant", "token", "action", "object", "status", "client"}`: tenant and token are null for the
administrator (the unix socket); action is the method and the route's template (`POST /v1/pods/{ref}/stop`,
`WEBSOCKET /v1/pods/{ref}/exec`). The file (mode 0600) is rotated when it would pass `max_bytes`: `audit.log.1`
is the newest old one, `keep` of them are kept.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("hyperd")
AUDIT_LOG = Path("/var/log/hypercontainer/audit.log")
MAX_BYTES = 10 << 20
KEEP = 3


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._lock = threading.Lock()

    def record(self, tenant: str | None, token: str | None, action: str, obj: str | None, status: int,
               client: str | None = None, **extra: Any) -> None:
        self.write({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "tenant": tenant,
                    "token": token, "action": action, "object": obj, "status": status, "client": client, **extra})

    def write(self, entry: dict[str, Any]) -> None:
        """Appends one line; a failure is logged, never raised (the call it records is over)."""
        line = (json.dumps(entry) + "\n").encode()
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._rotate(len(line))
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as e:
                log.warning("audit log %s: %s", self.path, e)

    def _rotate(self, adding: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + adding <= self.max_bytes:
            return
        for i in range(self.keep - 1, 0, -1):
            old = self.path.with_name(f"{self.path.name}.{i}")
            if old.exists():
                old.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
