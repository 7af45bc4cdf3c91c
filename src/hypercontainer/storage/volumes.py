"""Host directories shared into a pod, and removing pod directories without ever reaching through a mount."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import HCError, InvalidArgument
from .mount import MS_NODEV, MS_NOSUID, detach_all_under, mount, mounts_under

MS_REMOUNT, MS_BIND, MS_SHARED = 32, 4096, 1 << 20


def check_host_dir(name: str, path: str) -> Path:
    """A host directory a volume may share: it exists, is a directory, and no component is a symlink."""
    p = Path(path)
    real = os.path.realpath(p)
    if real != str(p):
        raise InvalidArgument(f"volume {name}: host path {path} goes through a symlink (it resolves to {real}); "
                              "give the real path")
    if not p.is_dir():
        raise InvalidArgument(f"volume {name}: host path {path} is not an existing directory")
    return p


def check_block_file(name: str, path: str) -> Path:
    """A raw image a block volume may attach: a regular, non-empty file reached without symlinks."""
    p = Path(path)
    real = os.path.realpath(p)
    if real != str(p):
        raise InvalidArgument(f"volume {name}: block image {path} goes through a symlink (it resolves to {real})")
    if not p.is_file() or p.stat().st_size == 0:
        raise InvalidArgument(f"volume {name}: block image {path} is not an existing, non-empty regular file")
    return p


def make_shared(path: Path) -> None:
    """Turns `path` (a pod share: host-made, mode 0700 above it) into a nosuid, nodev mount point whose later
    submounts propagate into copies of it, such as the one a virtiofsd sandbox holds: a container added to a
    running pod becomes visible to the guest. Nothing the guest writes there is setuid or a device on the host."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.is_mount():  # once: a second bind on top would hide what is mounted below the first
        mount(str(path), path, "", MS_BIND)
        mount("none", path, "", MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    mount("none", path, "", MS_SHARED)


def remove_tree(path: Path) -> None:
    """rmtree that first detaches every mount below `path` (never through a path a guest may have changed) and
    refuses if any is left: a bind-mounted host volume must never be emptied by a pod's removal."""
    detach_all_under(path)
    left = mounts_under(path)
    if left:
        raise HCError(f"cannot remove {path}: {left[0]} is still mounted")
    shutil.rmtree(path, ignore_errors=True)
