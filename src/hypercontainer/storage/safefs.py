"""Reading and creating paths inside a container root or a pod share from the host without following symlinks.

A root filesystem comes from an untrusted image and a pod's share is written by its guest: `/etc/passwd` may be
a symlink to the host's files, a directory may become a symlink between two calls. Every component is opened
relative to its parent with O_NOFOLLOW, so nothing resolves outside the root; files are opened non-blocking
and checked to be regular after the open (a FIFO swapped in never blocks hyperd). A root is a path, or an open
directory fd (kept by the caller).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} has '..'")
    return parts


Root = Path | int


def _open_root(root: Root) -> int:
    return os.open(".", _DIR_FLAGS, dir_fd=root) if isinstance(root, int) else os.open(root, _DIR_FLAGS)


def _open_dirs(root: Root, parts: list[str]) -> int:
    """An fd of root/parts..., each step opened relative to the last with O_NOFOLLOW (the caller closes it)."""
    fd = _open_root(root)
    try:
        for p in parts:
            nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(root: Root, path: str, limit: int = 1 << 20) -> bytes | None:
    """The file's bytes, or None if it is missing or reached only through a symlink."""
    parts = _parts(path)
    if not parts:
        return None
    try:
        fd = _open_dirs(root, parts[:-1])
    except OSError:
        return None
    try:
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        with os.fdopen(ffd, "rb") as f:
            if not os.path.isfile(f"/proc/self/fd/{ffd}"):
                return None
            return f.read(limit)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def open_dir(root: Root, path: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> int:
    """mkdir -p inside the root, then an fd of the directory (the caller closes it); raises OSError if a
    component exists and is not a real directory. The fd is what to mount on: it stays that directory whatever
    the guest renames or swaps afterwards."""
    fd = _open_root(root)
    try:
        for p in _parts(path):
            try:
                os.mkdir(p, mode, dir_fd=fd)
                os.chown(p, uid, gid, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root: Root, path: str, uid: int = 0, gid: int = 0) -> None:
    """mkdir -p inside the root; raises OSError if a component exists and is not a real directory."""
    os.close(open_dir(root, path, uid, gid))


def write_file(root: Root, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Creates or replaces a regular file inside the root (parents made as needed); never follows a symlink."""
    parts = _parts(path)
    if not parts:
        raise ValueError("empty path")
    parent = "/".join(parts[:-1])
    make_dirs(root, parent)
    fd = _open_dirs(root, parts[:-1])
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                os.unlink(parts[-1], dir_fd=fd)
        ffd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600,
                      dir_fd=fd)
        with os.fdopen(ffd, "wb") as f:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                raise OSError(errno.EEXIST, f"{path} is not a regular file")
            os.ftruncate(ffd, 0)
            f.write(data)
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
    finally:
        os.close(fd)
