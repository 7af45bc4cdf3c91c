"""A mount namespace of its own for a process that mounts a pod's share (runv's shim), so that nothing it mounts
is a mount point in the host's namespace.

Why: a share holds clones of host directories with the mounts below them. Cloned into the host's namespace, the
clone of a submount makes its directory a local mount point there, and whoever owns the directory can no longer
remove it (rmdir: EBUSY) while the pod runs; kubelets and critest clean volumes up exactly that way. In a
namespace of the shim's own, those directories are mount points elsewhere: the host's rmdir succeeds and the
kernel detaches the clone in the shim's namespace.

Host paths are still cloned in the host's namespace (`clone_tree`): a forked child joins it, makes the detached
clone there and hands its fd back over a socket (SCM_RIGHTS); the shim attaches it in its own. So mounts that
appear on the host after the shim left (a container root that containerd mounts later, a kubelet's volume) are
seen as they are, whatever the host's propagation (this host's `/` is private: a slave copy would not see them).

hyperd does the same (`enter_daemon`), and its pods may outlive it (live restore, a crash): the namespace is
pinned by a bind mount of its nsfs file in the host's namespace (`RUN/ns/mnt`, on a private mount so it cannot
propagate into itself), and the next hyperd joins it instead of making a new one; a hyperd that stops with no
pod left unpins it (`release_daemon`) and the namespace goes with its last process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from . import mount
from .mount import SAFE_ATTRS

CLONE_NEWNS = 0x20000
MS_REC, MS_PRIVATE, MS_SLAVE = 0x4000, 0x40000, 0x80000
PIN = "mnt"  # hyperd's namespace, pinned under its run directory's ns/
_host: int | None = None  # an fd of the host's mount namespace, once this process has left it


def leave_host() -> None:
    """The calling thread, which must be the process's only one (before asyncio or any thread starts), moves to a
    mount namespace of its own, a slave copy of the host's: the host's later mounts may propagate in (where its
    mounts are shared), none of ours propagate out."""
    global _host
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        mount._check(mount._libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        mount._check(mount._libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_SLAVE), None),
                     "mount --make-rslave /")
    except OSError:
        os.close(fd)
        raise
    _host = fd


def host_namespace() -> int | None:
    """An fd of the host's mount namespace if this process left it, else None."""
    return _host


def setns(fd: int) -> None:
    """The calling thread (a single-threaded process: a forked child) joins the mount namespace `fd` refers to."""
    mount._check(mount._libc.setns(fd, CLONE_NEWNS), "setns to the host's mount namespace")


def clone_tree(src: Path, attrs: int = SAFE_ATTRS, top_attrs: int = 0) -> int:
    """`mount.clone_tree` of a host path, made in the host's mount namespace when this process has left it."""
    if _host is None:
        return mount.clone_tree(src, attrs, top_attrs)
    fd = in_host(lambda: mount.clone_tree(src, attrs, top_attrs))
    assert fd is not None
    return fd


def in_host(fn: Callable[[], int | None]) -> int | None:
    """fn() in a forked child that joined the host's mount namespace: the fd it returns (sent back over a
    socket), or its OSError, raised here. For a process that left the host's namespace (`_host` set)."""
    assert _host is not None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's exit status and message are what the parent checks
            _child(child, fn)
        child.close()
        msg, fds, _, _ = socket.recv_fds(parent, 4096, 1)
        _, status = os.waitpid(pid, 0)
    finally:
        parent.close()
        if child.fileno() >= 0:
            child.close()
    if msg == b"ok" and status == 0:
        return fds[0] if fds else None
    for fd in fds:
        os.close(fd)
    if len(msg) >= 4:
        raise OSError(struct.unpack("=i", msg[:4])[0], msg[4:].decode(errors="replace"))
    raise OSError(0, f"a helper in the host's mount namespace died (status {status:#x})")


def _child(sock: socket.socket, fn: Callable[[], int | None]) -> None:
    """In the forked child (single-threaded): join the host's namespace, run fn, send its fd, exit."""
    code = 0
    try:
        assert _host is not None
        setns(_host)
        fd = fn()
        socket.send_fds(sock, [b"ok"], [fd] if fd is not None else [])
    except OSError as e:
        code = 1
        with contextlib.suppress(OSError):
            why = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            sock.send(struct.pack("=i", e.errno or 0) + why.encode()[:1000])
    except BaseException:
        code = 2
    os._exit(code)


def enter_daemon(pin_dir: Path) -> bool:
    """hyperd's start, on its only thread: joins the mount namespace an earlier hyperd pinned at `pin_dir/mnt`
    (True), or leaves the host's for a new one and pins it there (False)."""
    if join(pin_dir):
        return True
    leave_host()
    pid = os.getpid()
    try:
        in_host(lambda: _pin(pin_dir, pid))
    except OSError:
        release_daemon(pin_dir)
        raise
    return False


def join(pin_dir: Path) -> bool:
    """On the process's only thread: joins the mount namespace pinned at `pin_dir/mnt` (hyperd's, runv's factory's)
    if there is one; whether it did."""
    global _host
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(pin_dir / PIN, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(host)
        return False
    try:
        setns(fd)  # EINVAL: not a mount namespace (a file left by a process before the host rebooted)
    except OSError:
        os.close(host)
        return False
    finally:
        os.close(fd)
    _host = host
    return True


def _pin(pin_dir: Path, pid: int) -> None:
    pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not os.path.ismount(pin_dir):  # a private mount of its own: the pin cannot propagate into the namespace
        mount.mount(str(pin_dir), pin_dir, "", mount.MS_BIND)
        mount.mount("none", pin_dir, "", MS_PRIVATE)
    pin = pin_dir / PIN
    if os.path.ismount(pin):
        mount.umount(pin)
    pin.touch(mode=0o600)
    mount.mount(f"/proc/{pid}/ns/mnt", pin, "", mount.MS_BIND)


def release_daemon(pin_dir: Path) -> None:
    """Unpins hyperd's namespace (it ends with the last process in it): for a hyperd that leaves no pod."""
    if _host is None:
        return

    def unpin() -> None:
        for p in (pin_dir / PIN, pin_dir):
            with contextlib.suppress(OSError):
                mount.umount(p)
        with contextlib.suppress(OSError):
            (pin_dir / PIN).unlink()
        with contextlib.suppress(OSError):
            pin_dir.rmdir()

    in_host(unpin)
