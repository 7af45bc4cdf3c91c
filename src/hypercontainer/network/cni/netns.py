"""Named network namespaces the way CNI runtimes make them (containerd's pkg/netns, iproute2's `ip netns add`): a
thread leaves for a new namespace (nsenter.in_new_ns: the process stays where it is), brings its loopback up, and
bind-mounts /proc/thread-self/ns/net onto an empty file `BASE/NAME`; the mount keeps the namespace alive after the
thread is gone. The base directory is made a shared mount point first (bound onto itself if it is not a mount
point), as iproute2 does for /run/netns: a namespace mounted there shows in mount namespaces made later (a
container's, a VMM's sandbox), and its unmount reaches them too, so nothing there keeps it alive.

A process in a mount namespace of its own (hyperd: storage/mountns.py) mounts the namespace in the host's too,
first (`ip netns exec` there, containerd's and iproute2's tools see it), then in its own unless that mount
propagated in already.

remove() unmounts (MNT_DETACH) and unlinks; a namespace already gone (not mounted, or no file) is fine."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from ... import nsenter
from ...errors import Conflict, InvalidArgument
from ...storage import mount, mountns

DEFAULT_NETNS_DIR = Path("/run/netns")  # iproute2's: `ip netns list` shows them
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
NS_GET_NSTYPE = 0xB703


def _lo_up() -> None:
    """Loopback up in the calling thread's namespace (a socket belongs to the namespace it was made in)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def is_netns(path: str | Path) -> bool:
    """Whether `path` is a network namespace: a bind mount of one, /proc/PID/ns/net, /proc/PID/fd/N of an fd of
    one. Only regular files are opened (nsfs files stat as such): never a device or a FIFO."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == nsenter.CLONE_NEWNET
    except OSError:
        return False  # ENOTTY: an ordinary file (a namespace that was unmounted leaves one)
    finally:
        os.close(fd)


_shared_lock = threading.Lock()


def _make_shared(base: Path) -> None:
    """iproute2's way: MS_SHARED|MS_REC on the directory, after binding it onto itself if it is no mount point."""
    with _shared_lock:  # two first creates at once would bind it twice
        try:
            mount.mount("none", base, "none", mount.MS_SHARED | mount.MS_REC)
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        mount.mount(str(base), base, "none", mount.MS_BIND | mount.MS_REC)
        mount.mount("none", base, "none", mount.MS_SHARED | mount.MS_REC)


@dataclass(frozen=True)
class Netns:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, name: str, base: str | Path = DEFAULT_NETNS_DIR, shared: bool = True) -> Netns:
        """A new network namespace mounted at `base/name`, loopback up. Conflict if that name exists;
        InvalidArgument for a name that is not a plain file name."""
        if not _NAME.match(name):
            raise InvalidArgument(f"invalid network namespace name {name!r}")
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True, mode=0o755)
        in_host = mountns.host_namespace() is not None
        if shared:
            _make_shared(base)
            if in_host:
                mountns.in_host(lambda: _make_shared(base))
        path = base / name
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        except FileExistsError:
            raise Conflict(f"network namespace {path} exists") from None

        def bind() -> None:
            mount.mount("/proc/thread-self/ns/net", path, "none", mount.MS_BIND)

        def body() -> None:
            _lo_up()
            if in_host:  # the helper is forked from this thread: it is in the new namespace too
                mountns.in_host(lambda: bind())
            if not is_netns(path):
                bind()

        try:
            nsenter.in_new_ns(body)
        except BaseException:
            with contextlib.suppress(OSError):
                remove(path)
            raise
        return cls(path)

    @property
    def exists(self) -> bool:
        return is_netns(self.path)

    def remove(self) -> None:
        """Unmounts and removes the file; a namespace already gone (or never mounted) is fine. The namespace
        itself goes when nothing else holds it (a process in it, an open fd)."""
        remove(self.path)


def remove(path: str | Path) -> None:
    """Unmounts a namespace's bind mount (MNT_DETACH) and removes the file; fine if either is already gone."""
    p = Path(path)
    mount.umount(p)  # EINVAL (not mounted) and ENOENT are fine
    if mountns.host_namespace() is not None:
        mountns.in_host(lambda: mount.umount(p))
    with contextlib.suppress(FileNotFoundError):
        p.unlink()
