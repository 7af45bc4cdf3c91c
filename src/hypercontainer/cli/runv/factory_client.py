"""Asking runv's factory (factory.py) for what it keeps ready: a VM (a shim's borrow()), a warm shim (runv create's
warm_shim()), or how many of each (status()). Kept apart from the factory's own code: runv create imports this
(not asyncio's ~50 ms)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

from ...config import environment
from .state import sha256

TYPE_CHECKING = False  # `typing` costs each runv call ~6-19 ms of imports
if TYPE_CHECKING:
    from typing import Any


def home(root: Path) -> Path:
    """The factory of the runv root `root`: a short path (its VMs' unix sockets live below it)."""
    digest = sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return environment().paths.run / "runv" / f"factory-{digest}"


def socket_path(root: Path) -> Path:
    return home(root) / "sock"


def pin_dir(root: Path) -> Path:
    return home(root) / "ns"


def _ask(root: Path, req: dict[str, Any], timeout: float) -> tuple[bytes, list[int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path(root)))
        s.sendall(json.dumps(req).encode())
        msg, fds, _, _ = socket.recv_fds(s, 65536, 2)
    return msg, list(fds)


def status(root: Path, timeout: float = 2.0) -> dict[str, int] | None:
    """The factory's VMs: ready, size (kept ready) and lent (still running with their shims), and its warm shims
    ready (`shims`); None: not running."""
    try:
        msg, fds = _ask(root, {"status": True}, timeout)
    except OSError:
        return None
    for fd in fds:
        os.close(fd)
    return json.loads(msg or b"null")


def warm_shim(root: Path, timeout: float = 2.0) -> socket.socket | None:
    """runv create's request: the socket of a warm shim (shim.warm()), or None if the factory has none ready (or
    is not running)."""
    if not socket_path(root).exists():
        return None
    try:
        _, fds = _ask(root, {"shim": True}, timeout)
    except OSError:
        return None
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(True)  # the factory's end was non-blocking: the flag is the open file's, shared
    return sock


def borrow(root: Path, cpus: int, memory: int, timeout: float = 2.0) -> tuple[dict[str, Any], list[int]] | None:
    """A shim's request (blocking: run it in a thread): the VM's description and the agent's two sockets (fds), or
    None if the factory has none of that size ready (or is not running)."""
    import logging  # the shim's (runv create, which imports this module too, has no log)

    if not socket_path(root).exists():
        return None
    try:
        msg, fds = _ask(root, {"cpus": cpus, "memory": memory}, timeout)
    except OSError as e:
        logging.getLogger("runv-factory").info("no VM from the factory: %s", e)
        return None
    info = json.loads(msg or b"{}")
    if "none" in info or len(fds) != 2:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        logging.getLogger("runv-factory").info("no VM from the factory: %s", info.get("none", "no sockets"))
        return None
    return info, list(fds)
