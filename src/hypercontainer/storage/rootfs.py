"""A container's root: the image's unpacked layers stacked read-only under a private upper directory."""

from __future__ import annotations

from pathlib import Path

from .mount import mount, umount

# overlayfs takes the lower directories in one mount option, limited to a page.
MAX_OPTIONS = 4000


def mount_rootfs(layers: list[Path], upper: Path, work: Path, target: Path) -> None:
    """layers: bottom first. Creates upper/work/target as needed."""
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(p) for p in reversed(layers))
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(opts) > MAX_OPTIONS:
        raise ValueError(f"image has too many layers for one overlay mount ({len(layers)})")
    mount("overlay", target, "overlay", 0, opts)


def unmount_rootfs(target: Path) -> None:
    umount(target)
