"""What hyperd mounts under one pod's share: container roots and host volumes.

The share is written by the pod's guest, so nothing there is reached by path: each target directory is opened
without following symlinks and the mount is attached onto that fd; each mount is nosuid and nodev on the host,
a read-only volume read-only on the host as well (recursively), and every unmount checks the mount id it made.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from .mount import (
    MOUNT_ATTR_RDONLY,
    SAFE_ATTRS,
    attach,
    detach_all_under,
    is_mount_root,
    mount_id,
    umount_beneath,
)
from .mountns import clone_tree
from .rootfs import overlay_rootfs
from .safefs import open_dir
from .volumes import make_shared

VOLUMES = ".volumes"  # host volumes (container names cannot start with '.')
VOLUMES_RO = ".volumes-ro"  # the same, bound read-only: what containers that mount a volume read-only get
VOLUMES_RO_TOP = ".volumes-ro-top"  # read-only at the top only, the mounts below as they are (runc's plain `ro`)
VOLUME_DIRS = (VOLUMES, VOLUMES_RO, VOLUMES_RO_TOP)


class ShareTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: dict[str, int] = {}  # what this hyperd mounted: path relative to the share -> mount id

    def prepare(self) -> None:
        make_shared(self.root)

    def volume(self, name: str, host_path: Path, readonly: bool, recursive: bool = True) -> str:
        """Binds a host directory into the share (once per name and mode); returns its path in the share.
        `recursive`: a read-only volume is read-only all the way down, else only its top mount is."""
        parent = VOLUMES if not readonly else VOLUMES_RO if recursive else VOLUMES_RO_TOP
        rel = f"{parent}/{name}"
        pfd = open_dir(self.root, parent, mode=0o700)
        try:
            if not is_mount_root(pfd, name):  # bound already (also by an earlier hyperd)
                ro = MOUNT_ATTR_RDONLY if readonly else 0
                mfd = clone_tree(host_path, SAFE_ATTRS | ro, 0) if recursive else clone_tree(host_path, SAFE_ATTRS, ro)
                self._attach(pfd, name, rel, mfd)
        finally:
            os.close(pfd)
        return rel

    def container_root(self, name: str, *, layers: list[Path] | None = None, upper: Path | None = None,
                       work: Path | None = None, rootfs: Path | None = None) -> int:
        """Mounts a container's root at `name`: its image layers as an overlay (upper/work private to the host),
        or a root someone else prepared (runv: the bundle's) bound in. Returns an fd of the mounted root (the
        caller closes it) to prepare files in without walking the share again. A root mounted already is
        reused."""
        pfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if is_mount_root(pfd, name):
                return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        finally:
            os.close(pfd)
        if rootfs is not None:
            mfd = clone_tree(rootfs)
        else:
            assert layers is not None and upper is not None and work is not None
            mfd = overlay_rootfs(layers, upper, work)
        try:
            pfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._attach(pfd, name, name, os.dup(mfd))
            finally:
                os.close(pfd)
        except BaseException:
            os.close(mfd)
            raise
        return mfd

    @contextlib.contextmanager
    def open_root(self, name: str) -> Iterator[int]:
        """An fd of a container's mounted root (refused if what is at `name` is not a mount: a guest may have
        replaced it), to read its files without walking the share."""
        pfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not is_mount_root(pfd, name):
                raise OSError(errno.ENOENT, f"container root {name} is not mounted")
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            yield fd
        finally:
            os.close(fd)

    def _attach(self, parent_fd: int, name: str, rel: str, mfd: int) -> None:
        """Attaches (and closes) a detached mount onto parent/name, made a directory if missing."""
        try:
            target = open_dir(parent_fd, name)
            try:
                self.ids[rel] = attach(mfd, target)
            finally:
                os.close(target)
        finally:
            os.close(mfd)

    def undo(self, rel: str) -> None:
        """Unmounts what this hyperd mounted at `rel`, if it is still that mount."""
        mid = self.ids.pop(rel, None)
        if mid is None:
            return
        parent, _, name = rel.rpartition("/")
        with contextlib.suppress(OSError):
            pfd = open_dir(self.root, parent) if parent else os.open(self.root, os.O_PATH | os.O_CLOEXEC)
            try:
                umount_beneath(pfd, name, mid)
            finally:
                os.close(pfd)

    def unmount_root(self, name: str) -> None:
        """Unmounts a container's root: the mount this hyperd made (checked by id) or, for a root an earlier
        hyperd mounted, whatever mount is at that name (only hyperd mounts under a share; a mount point cannot be
        renamed)."""
        if name in self.ids:
            self.undo(name)
            return
        with contextlib.suppress(OSError):
            pfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if is_mount_root(pfd, name):
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        umount_beneath(pfd, name, mount_id(fd))
                    finally:
                        os.close(fd)
            finally:
                os.close(pfd)

    def release(self) -> None:
        """Detaches the share and everything mounted below it."""
        detach_all_under(self.root)
        self.ids.clear()
