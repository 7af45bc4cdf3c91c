"""Mounting through libc and the fd-based mount API (Linux 5.12+): no subprocess per mount, no path resolution
on paths a guest may have changed.

A pod's share is written by its guest, so a mount target there is never given by path: the target directory is
opened without following symlinks (`safefs.open_dir`), and a detached mount (a cloned tree from `open_tree`, or
a new overlay from `fsmount`) is attached onto that fd with `move_mount`. Each mount's id is known from its fd,
so an unmount can check it removes the mount it made (`umount_beneath`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)  # the C library we run on (find_library() ran ldconfig: ~10-40 ms)
_libc.syscall.restype = ctypes.c_long
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8
MS_NOSUID, MS_NODEV = 2, 4
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 0x100000

# Syscall numbers of the mount API are the same on every architecture (added after the numbering was unified).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT, SYS_MOUNT_SETATTR = 428, 429, 430, 431, 432, 442
OPEN_TREE_CLONE, AT_EMPTY_PATH, AT_RECURSIVE, AT_SYMLINK_NOFOLLOW = 1, 0x1000, 0x8000, 0x100
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 1, 6
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
# Every mount hyperd makes where a guest writes: a file a guest creates can never become setuid or a device for
# the host through it.
SAFE_ATTRS = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str | None = None) -> None:
    rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), ctypes.c_ulong(flags),
                     data.encode() if data else None)
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


def umount(target: Path | str, detach: bool = True, follow: bool = False) -> None:
    """Unmounts (not through a symlink in the last component unless `follow`); not mounted is fine."""
    flags = (MNT_DETACH if detach else 0) | (0 if follow else UMOUNT_NOFOLLOW)
    if _libc.umount2(str(target).encode(), flags) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"umount {target}: {os.strerror(e)}")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path)
    found = [Path(mp) for _, mp in _mountinfo() if mp == prefix or mp.startswith(prefix + "/")]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def mount_id(fd: int) -> int:
    """The id of the mount an open fd lies on (as in /proc/self/mountinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.EINVAL, f"fd {fd} has no mount id")


def set_attrs(mfd: int, attrs: int, recursive: bool = True) -> None:
    """Sets mount attributes (MOUNT_ATTR_*) on the mount `mfd` refers to (and every mount below it)."""
    attr = _MountAttr(attrs, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, mfd, b"", flags, ctypes.byref(attr), ctypes.sizeof(attr)),
           "mount_setattr")


def clone_tree(src: Path, attrs: int = SAFE_ATTRS, top_attrs: int = 0) -> int:
    """A detached, recursive copy of the mount tree at `src` (a host directory reached without symlinks), with
    `attrs` set on all of it and `top_attrs` on its top mount only: the fd to attach with `attach`. A read-only
    volume gets MOUNT_ATTR_RDONLY here, so nothing under it is writable from the share (in `top_attrs`: runc's
    non-recursive `ro`, the mounts below keep their own)."""
    sfd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mfd = _check(_libc.syscall(SYS_OPEN_TREE, sfd, b"", OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH
                                   | os.O_CLOEXEC), f"open_tree {src}")
    finally:
        os.close(sfd)
    try:
        set_attrs(mfd, attrs)
        if top_attrs:
            set_attrs(mfd, top_attrs, recursive=False)
    except BaseException:
        os.close(mfd)
        raise
    return mfd


def new_overlay(lower: list[Path], upper: Path, work: Path, attrs: int = SAFE_ATTRS) -> int:
    """A detached overlay mount (lower: top first): the fd to attach with `attach`."""
    fs = _check(_libc.syscall(SYS_FSOPEN, b"overlay", 1), "fsopen overlay")  # FSOPEN_CLOEXEC
    try:
        for key, value in (("lowerdir", ":".join(map(str, lower))), ("upperdir", str(upper)),
                           ("workdir", str(work))):
            _fsconfig(fs, FSCONFIG_SET_STRING, key, value)
        _fsconfig(fs, FSCONFIG_CMD_CREATE, None, None)
        return _check(_libc.syscall(SYS_FSMOUNT, fs, 1, ctypes.c_uint(attrs)), "fsmount overlay")  # CLOEXEC
    finally:
        os.close(fs)


def _fsconfig(fs: int, cmd: int, key: str | None, value: str | None) -> None:
    rc = _libc.syscall(SYS_FSCONFIG, fs, cmd, key.encode() if key else None, value.encode() if value else None, 0)
    if rc < 0:
        e = ctypes.get_errno()
        why = ""
        with contextlib.suppress(OSError):  # the filesystem's own words, if it left any
            why = os.read(fs, 512).decode(errors="replace").strip()
        raise OSError(e, f"overlay {key or 'create'}: {why or os.strerror(e)}")


def attach(mfd: int, target_fd: int) -> int:
    """Attaches a detached mount onto the directory `target_fd` refers to (resolved when it was opened, not
    now) and returns the new mount's id."""
    _check(_libc.syscall(SYS_MOVE_MOUNT, mfd, b"", target_fd, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
           "move_mount")
    return mount_id(mfd)


def is_mount_root(parent_fd: int, name: str) -> bool:
    """Whether `name` in the directory `parent_fd` is the root of a mount (not followed if a symlink)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except FileNotFoundError:
        return False
    try:
        return mount_id(fd) != mount_id(parent_fd)
    finally:
        os.close(fd)


def umount_beneath(parent_fd: int, name: str, expected_id: int) -> bool:
    """Unmounts the mount `expected_id` at `name` in the directory `parent_fd`, only if that is what is mounted
    there (a guest may have moved or replaced it): never a mount hyperd did not make. True if unmounted."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        if mount_id(fd) != expected_id:
            return False
        umount(f"/proc/self/fd/{fd}", follow=True)  # the magic link is the mount root itself: no path is walked again
        return True
    finally:
        os.close(fd)


def _mountinfo() -> list[tuple[int, str]]:
    with open("/proc/self/mountinfo") as f:
        return [(int(line.split()[0]), line.split()[4].encode().decode("unicode_escape")) for line in f]


def detach_all_under(path: Path) -> None:
    """Detaches every mount at or below `path`, shallowest first (each takes the mounts below it along). Each is
    reached by a walk from `path` that follows no symlink and unmounted only if the mount found there has the id
    the mount table gave: a guest that renamed directories or planted symlinks under a share meanwhile can make
    this skip a mount, never unmount one elsewhere."""
    prefix = str(path)
    for _ in range(64):  # a bound on rounds: each round removes at least the shallowest mount it reaches
        found = [(len(Path(mp).parts), mid, mp) for mid, mp in _mountinfo()
                 if mp == prefix or mp.startswith(prefix + "/")]
        if not found:
            return
        progressed = False
        for _depth, mid, mp in sorted(found):
            if _umount_walked(path, Path(mp).relative_to(path).parts, mid):
                progressed = True
                break  # the table changed: read it again
        if not progressed:
            return


def _umount_walked(base: Path, parts: tuple[str, ...], expected_id: int) -> bool:
    try:
        fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not parts:
            if mount_id(fd) != expected_id:
                return False
            umount(f"/proc/self/fd/{fd}", follow=True)
            return True
        for p in parts[:-1]:
            nfd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return umount_beneath(fd, parts[-1], expected_id)
    except OSError:
        return False
    finally:
        os.close(fd)
