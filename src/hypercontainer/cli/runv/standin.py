"""`runv create` with a warm shim (shim.warm(), kept by the factory): the shim's interpreter and imports (~0.2 s)
are paid ahead, and what stands for the container on the host is a fork of runv create itself, the stand-in.

Engines wait for the container's pid (conmon and containerd's shim are subreapers: it must be their descendant),
so the warm shim, the factory's child, cannot be that pid. The stand-in is: it hands the warm shim the container
and its stdio (SCM_RIGHTS) over the socket the factory passed on, moves into a new network namespace if the shim
asks (the config wants one: it is /proc/PID/ns/net), reports what the shim answered on runv create's status pipe,
and then only waits: signals it gets go to the shim ("signal N"), the shim's "exit N" is its exit, and if it is
killed the shim kills the container (shim.StandIn).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path

from ...errors import HCError
from . import wire

TYPE_CHECKING = False  # `typing` costs each runv call ~6-19 ms of imports
if TYPE_CHECKING:
    from typing import NoReturn


class StandIn:
    """The stand-in, as runv create's caller sees a shim it started (pid, wait())."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def create(root: Path, cid: str, bundle: Path, console_socket: Path | None, log: Path) -> StandIn | None:
    """The container created by a warm shim of this root's factory; None: no factory, none ready, or one that
    refused (other HYPERCONTAINER_* settings): the caller starts a shim of its own. HCError: create failed."""
    from .factory_client import warm_shim

    sock = warm_shim(root)
    if sock is None:
        return None
    req = {"id": cid, "bundle": str(bundle), "log": str(log),
           "console_socket": str(console_socket.resolve()) if console_socket else None,
           "env": {k: v for k, v in os.environ.items() if k.startswith("HYPERCONTAINER_")}}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            stand_in(sock, w, req)
        finally:
            os._exit(255)
    os.close(w)
    sock.close()
    with os.fdopen(r) as f:
        said = f.readline().strip()
    if said == "ok":
        return StandIn(pid)
    os.waitpid(pid, 0)
    if said == "refused":
        return None
    raise HCError(said.removeprefix("error ").strip() or "the warm shim went away during create")


def stand_in(sock: socket.socket, status: int, req: dict) -> NoReturn:
    """The forked child's life (see the module's docstring)."""
    os.setsid()
    # Nothing runv create was given stays open here but its stdio (handed on below) and these two: an engine that
    # waits for the end of a pipe it passed (a sync pipe, --preserve-fds) must not wait for the container's.
    low, high = sorted((sock.fileno(), status))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
    socket.send_fds(sock, [json.dumps({**req, "pid": os.getpid()}).encode()], [0, 1, 2])
    from ... import nsenter  # (ctypes: ~7 ms) while the shim reads the config

    said = sock.recv(65536).decode(errors="replace")
    if said == "netns":  # the config asks for a network namespace of the container's own: this process's
        try:
            os.close(nsenter.unshare_net())
            sock.sendall(b"netns ok")
        except OSError as e:
            sock.sendall(f"netns error {e.strerror}".encode())
        said = sock.recv(65536).decode(errors="replace")
    said = said or "error the warm shim went away during create"
    os.write(status, f"{said}\n".encode())
    os.close(status)
    if said != "ok":
        os._exit(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the shim has the container's stdio: the engine sees its end when the shim is done
        os.dup2(null, fd)
    os.close(null)

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            sock.send(f"signal {sig}".encode())

    for sig in wire.FORWARDED:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, forward)
    while True:
        try:
            msg = sock.recv(64)
        except OSError:
            msg = b""
        if msg.startswith(b"exit ") and msg[5:].lstrip(b"-").isdigit():
            os._exit(int(msg[5:]) & 0xFF)
        if not msg:  # the shim is gone without an exit code
            os._exit(255)
