"""A cgroup per VMM process with memory and pids limits.

cgroup v1 (this host): `<controller>/<the creator's own cgroup>/hypercontainer/<name>` in the memory and pids
hierarchies, so the VMM stays inside whatever limits hyperd (or a runv shim) itself runs under. cgroup v2:
`/sys/fs/cgroup/hypercontainer/<name>` (a cgroup with processes cannot delegate controllers, so the group hangs off
the root) with +memory +pids enabled on the way. A process joins between fork and exec by writing "0" to a
`cgroup.procs` file its parent opened (virtiofsd: it forks early), or is moved in by its parent while it starts
(QEMU: see Machine.start); the group is removed once the process is gone.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import VMError

ROOT = Path("/sys/fs/cgroup")
GROUP = "hypercontainer"
V1_CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int


def unified() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def own_path(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of `controller` ("" for v2's)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    return "/"


def bases() -> list[Path]:
    """Where this process's VMM cgroups live, one per hierarchy."""
    if unified():
        return [ROOT / GROUP]
    return [ROOT / c / own_path(c).lstrip("/") / GROUP for c in V1_CONTROLLERS if (ROOT / c).is_dir()]


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _enable_v2(base: Path) -> None:
    for d in (ROOT, base):
        have = set((d / "cgroup.subtree_control").read_text().split())
        want = [c for c in V1_CONTROLLERS if c not in have]
        if want:
            _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in want))


@dataclass
class Cgroup:
    paths: list[Path]

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup:
        """Makes (or, after a crash left it empty, reuses) the group and sets its limits."""
        made: list[Path] = []
        try:
            for base in bases():
                base.mkdir(parents=True, exist_ok=True)
                if unified():
                    _enable_v2(base)
                path = base / name
                path.mkdir(exist_ok=True)
                made.append(path)
                if (path / "memory.limit_in_bytes").exists():
                    _write(path / "memory.limit_in_bytes", str(limits.memory_bytes))
                if (path / "memory.max").exists():
                    _write(path / "memory.max", str(limits.memory_bytes))
                    _write(path / "memory.swap.max", "0") if (path / "memory.swap.max").exists() else None
                if (path / "pids.max").exists():
                    _write(path / "pids.max", str(limits.pids))
        except OSError as e:
            Cgroup(made).remove()
            raise VMError(f"cannot make the VMM's cgroup {name}: {e}") from None
        return cls(made)

    def add(self, pid: int) -> None:
        """Moves `pid` (all its threads) in. Slow-ish (the kernel waits for an RCU grace period: ~5-15 ms here):
        callers run it in a thread while the process starts."""
        for p in self.paths:
            _write(p / "cgroup.procs", str(pid))

    def open_procs(self) -> list[int]:
        """O_CLOEXEC fds of each cgroup.procs: a forked child writes "0" to them to join."""
        return [os.open(p / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for p in self.paths]

    def remove(self, timeout: float = 1.0) -> None:
        """rmdir each (retried briefly: an exiting process leaves its group a moment after it is reaped)."""
        deadline = time.monotonic() + timeout
        for p in self.paths:
            while True:
                try:
                    p.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)

    @classmethod
    def of_pid(cls, pid: int) -> Cgroup | None:
        """The VMM cgroups `pid` is in (a VM an earlier hyperd started), from /proc/PID/cgroup."""
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return None
        paths = []
        for line in text.splitlines():
            _, ctrls, path = line.split(":", 2)
            parts = path.rsplit("/", 2)
            if len(parts) == 3 and parts[1] == GROUP:
                if unified() and ctrls == "":
                    paths.append(ROOT / path.lstrip("/"))
                for c in ctrls.split(","):
                    if c in V1_CONTROLLERS:
                        paths.append(ROOT / c / path.lstrip("/"))
        return cls(paths) if paths else None


def sweep(prefix: str = "") -> int:
    """Removes the empty VMM cgroups (of VMs a crashed hyperd left); how many went."""
    gone = 0
    for base in bases():
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if d.is_dir() and d.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    d.rmdir()
                    gone += 1
    return gone
