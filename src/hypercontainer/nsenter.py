"""Network namespaces by fd: enter one on a short-lived thread (setns moves only the calling thread), make a new one
on such a thread, or leave the host's for a new one. Python 3.11 has neither os.setns nor os.unshare: libc's, via
ctypes."""

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


def _on_thread(enter: Callable[[], None], fn: Callable[[], T], what: str) -> T:
    """fn() on a new thread that first calls enter() (which moves it to another namespace); fn's result or its
    exception. The thread is never reused: whatever namespace it entered goes with it unless something else holds
    that namespace (a bind mount, an open fd)."""
    out: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            enter()
        except BaseException as e:
            err.append(e)
            return
        try:
            out.append(fn())
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=body, name=what)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def run_in(path: str | int, fn: Callable[[], T]) -> T:
    """fn() on a thread inside the network namespace `path` (or an fd of it); its result or its exception.
    InvalidArgument if `path` is not a network namespace. Processes that fn starts are born in that namespace."""
    fd = open_ns(path) if isinstance(path, str) else path

    def enter() -> None:
        try:
            setns(fd)
        except OSError as e:
            raise InvalidArgument(f"{path} is not a network namespace ({e.strerror})") from None

    try:
        return _on_thread(enter, fn, "netns")
    finally:
        if isinstance(path, str):
            os.close(fd)


def in_new_ns(fn: Callable[[], T]) -> T:
    """fn() on a thread inside a network namespace made for it (unshare on that thread alone: the process and its
    other threads stay where they are). The namespace lives on only if fn makes something hold it: a bind mount of
    /proc/thread-self/ns/net, an fd of it."""
    return _on_thread(lambda: _check(_libc.unshare(CLONE_NEWNET), "unshare"), fn, "new-netns")


def links(path: str | int) -> list[str]:
    """The names of the interfaces in the namespace other than loopback."""
    return run_in(path, lambda: [name for _, name in socket.if_nameindex() if name != "lo"])
