"""A guest OOM kill, told the way containerd learns of one.

Under containerd, runv runs behind containerd's runc shim, which learns of a container's OOM kill from the host
memory cgroup of the container's pid (cgroup v1: an eventfd on memory.oom_control; v2: memory.events' oom_kill),
and the CRI then reports the reason OOMKilled. A container's memory is the guest's, so its OOM kill happens in the
guest; the host cgroup never sees one. So the container's pid on the host (the shim, or a warm shim's stand-in)
moves into the cgroup
config.json names (linux.cgroupsPath, as runc puts the container's process there; no limits: the VM is the
boundary; the VM's own group then nests in it, so the host accounts the VM to the container, as Kata's sandbox
cgroup does), and when the guest reports an OOM kill, the shim has the kernel signal an OOM in that cgroup, with its
OOM killer off there so that nothing is killed: the limit goes just above what the cgroup uses, a child allocates
until the cgroup is under OOM (its watchers, containerd's shim among them, are told), the child is killed and the
limit lifted again. cgroup v1 only (this is where oom_kill_disable exists); on v2 it is logged and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ...vm.cgroups import own_path

if TYPE_CHECKING:  # runv delete imports this module for remove(): without pydantic's models
    from ...spec import oci

log = logging.getLogger("runv-shim")
ROOT = Path("/sys/fs/cgroup")
HEADROOM = 4 << 20  # bytes above the cgroup's usage the limit is set to while the OOM comes about


def memory_cgroup(cfg: oci.Config) -> Path | None:
    """The memory cgroup directory config.json's cgroupsPath names (None: none). A relative path is taken from the
    runtime's own cgroup and a systemd-style `slice:prefix:name` as a plain name, as runc's cgroupfs driver does
    (containerd's CRI gives `<id>`, or `test.slice:cri-containerd:<id>` under critest). containerd watches the
    cgroup the container's pid is in, whatever its name."""
    path = cfg.linux.get("cgroupsPath")
    if not isinstance(path, str) or not path or ".." in path.split("/"):
        return None
    if (ROOT / "memory").is_dir():  # v1: the memory controller's hierarchy
        base, own = ROOT / "memory", own_path("memory")
    else:
        base, own = ROOT, own_path("")
    return base / (path if path.startswith("/") else f"{own}/{path}").strip("/")


def join(cg: Path, pid: int) -> bool:
    """The process `pid` moves into `cg` (made if missing). False, logged, where it cannot."""
    try:
        cg.mkdir(parents=True, exist_ok=True)
        (cg / "cgroup.procs").write_text(str(pid))
    except OSError as e:
        log.warning("cannot join memory cgroup %s (an OOM kill in the guest will not show there): %s", cg, e)
        return False
    return True


def record_oom(cg: Path, timeout: float = 10.0) -> bool:
    """An OOM in `cg` (cgroup v1), brought about by a helper process outside it (this module run as a script):
    True once the kernel signalled it."""
    if not (cg / "memory.oom_control").exists():
        log.warning("cannot record the guest's OOM kill in %s: only cgroup v1 memory cgroups are supported", cg)
        return False
    r = subprocess.run([sys.executable, "-m", __name__, str(cg), str(timeout)], capture_output=True, text=True,
                       timeout=timeout + 30)
    if r.returncode:
        log.warning("cannot record the guest's OOM kill in %s: %s", cg, r.stderr.strip()[-300:])
    return r.returncode == 0


def _bring_about(cg: Path, timeout: float) -> None:
    """Runs outside `cg` (else it would stall in the OOM it makes): with the kernel's OOM killer off for `cg`
    (oom_kill_disable: nothing there is killed, its watchers are told), the limit set just above what `cg` uses,
    a child in `cg` allocates until the cgroup is under OOM; the child is killed and everything set back."""
    (ROOT / "memory" / "cgroup.procs").write_text(str(os.getpid()))
    limit, control = cg / "memory.limit_in_bytes", cg / "memory.oom_control"
    old = limit.read_text().strip()
    control.write_text("1")
    child = None
    try:
        for _ in range(10):  # usage moves: a limit below it is refused (EBUSY)
            with contextlib.suppress(OSError):
                limit.write_text(str(int((cg / "memory.usage_in_bytes").read_text()) + HEADROOM))
                break
        else:
            raise SystemExit("the limit could not be lowered")
        child = subprocess.Popen(["sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec tail /dev/zero', "sh", str(cg)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while "under_oom 1" not in control.read_text():
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit("no OOM came about")
            time.sleep(0.02)
    finally:
        if child:
            child.kill()  # a task waiting in a memory cgroup's OOM is killable
            child.wait()
        limit.write_text(old)
        control.write_text("0")


if __name__ == "__main__":
    _bring_about(Path(sys.argv[1]), float(sys.argv[2]))
