"""A container's root: the image's unpacked layers stacked read-only under a private upper directory."""

from __future__ import annotations

from pathlib import Path

from .mount import new_overlay

# overlayfs takes the lower directories in one mount option, limited to a page.
MAX_OPTIONS = 4000


def overlay_rootfs(layers: list[Path], upper: Path, work: Path) -> int:
    """layers: bottom first. Creates upper/work as needed; returns the detached overlay mount's fd (nosuid,
    nodev) to attach where it belongs."""
    for d in (upper, work):
        d.mkdir(parents=True, exist_ok=True)
    lower = list(reversed(layers))
    if len(":".join(map(str, lower))) + len(str(upper)) + len(str(work)) + 30 > MAX_OPTIONS:
        raise ValueError(f"image has too many layers for one overlay mount ({len(layers)})")
    return new_overlay(lower, upper, work)
