"""The container's command looked up in its root at `create`, as runc's create does: engines turn runc's
"executable file not found in $PATH" into exit status 127 (podman, docker), where a failed `start` is only a
runtime's failure (126). The lookup runs on the host, in the bundle's root, without following a symlink (an
image's symlinks may point anywhere on the host), and decides only where the host sees what the guest will: a
symlink on the way, a relative PATH entry or a mount at or above a candidate (the config's, the guest's own
/proc, /sys, /dev) leaves the verdict to the guest agent, which looks the command up again before its hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...spec import oci

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the agent's (spawn.c)
GUEST_MOUNTS = ("/proc", "/sys", "/dev")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def not_found(cfg: oci.Config, root: Path) -> str | None:
    """runc's error for a command that is certainly not in the root; None: found, or not decided here."""
    if not cfg.process:
        return None
    name = cfg.process.args[0]
    mounts = [m.destination for m in cfg.mounts if m.destination.startswith("/")] + list(GUEST_MOUNTS)
    if "/" in name:
        path = name if name.startswith("/") else f"{cfg.process.cwd or '/'}/{name}"
        return f'exec: "{name}": stat {name}: no such file or directory' if absent(root, path, mounts) else None
    env = dict(e.split("=", 1) for e in cfg.process.env if "=" in e)
    dirs = env.get("PATH", DEFAULT_PATH).split(":")
    if not name or not all(d.startswith("/") and absent(root, f"{d}/{name}", mounts) for d in dirs):
        return None
    return f'exec: "{name}": executable file not found in $PATH'


def absent(root: Path, path: str, mounts: list[str]) -> bool:
    """Whether `path` (absolute, in the container) certainly has no entry in `root`: a component is missing or not
    a directory, reached without a symlink, and no mount is at or above any of it, or below it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return False
    full = "/" + "/".join(parts)
    for m in mounts:
        m = "/" + "/".join(p for p in m.split("/") if p not in ("", "."))
        if m == "/" or full == m or full.startswith(m + "/") or m.startswith(full + "/"):
            return False
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return False
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return True
            except OSError:
                return False
            if i == len(parts) - 1 or stat.S_ISLNK(st.st_mode):
                return False  # there (or a symlink: the guest resolves it)
            if not stat.S_ISDIR(st.st_mode):
                return True  # ENOTDIR for the guest's exec too
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # changed meanwhile: undecided
                return False
            os.close(fd)
            fd = nfd
        return False
    finally:
        os.close(fd)
