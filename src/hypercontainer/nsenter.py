"""Network namespaces by fd: enter one on a short-lived thread (setns moves only the calling thread), or leave the
host's for a new one. Python 3.11 has neither os.setns nor os.unshare: libc's, via ctypes."""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import InvalidArgument

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int) -> None:
    """The calling thread joins the network namespace `fd` refers to."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def unshare_net() -> int:
    """The calling thread (the process's main thread, before it starts others) leaves for a new network namespace;
    returns an fd of the one it left."""
    old = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare")
    except OSError:
        os.close(old)
        raise
    return old


def open_ns(path: str) -> int:
    """An fd of the network namespace at `path`; InvalidArgument naming the path if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"network namespace {path}: {e.strerror}") from None
    return fd


def run_in(path: str | int, fn: Callable[[], T]) -> T:
    """fn() on a thread inside the network namespace `path` (or an fd of it); its result or its exception.
    InvalidArgument if `path` is not a network namespace."""
    fd = open_ns(path) if isinstance(path, str) else path
    out: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            setns(fd)
        except OSError as e:
            err.append(InvalidArgument(f"{path} is not a network namespace ({e.strerror})"))
            return
        try:
            out.append(fn())
        except BaseException as e:
            err.append(e)

    try:
        t = threading.Thread(target=body, name="netns")  # never reused: its namespace dies with it
        t.start()
        t.join()
    finally:
        if isinstance(path, str):
            os.close(fd)
    if err:
        raise err[0]
    return out[0]


def links(path: str | int) -> list[str]:
    """The names of the interfaces in the namespace other than loopback."""
    return run_in(path, lambda: [name for _, name in socket.if_nameindex() if name != "lo"])
