"""Sharing a pod's directory into its VM: a virtiofsd per pod, or virtio-9p where virtiofsd is missing.

virtiofsd sandboxes itself (namespaces, chroot into the share, its own seccomp filter) and stays root to keep file
ownership; it runs without CAP_MKNOD and CAP_SETFCAP (`modcaps`: no device nodes, no file capabilities), in a cgroup
of its own, under the extra filter of vm/seccomp.py (no setuid/setgid files) — see vm/confine.py.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from .. import procs
from ..errors import VMError
from ..vm import confine
from ..vm.cgroups import Cgroup
from ..vm.qemu import Share

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
SHARE_TAG = "hcshare"
MODCAPS = "-mknod:-setfcap"  # capabilities virtiofsd drops from its default set


def ninep(source: Path) -> Share:
    """The share of a VM whose QEMU serves `source` over 9p itself (template clones, pool VMs)."""
    return Share("9p", SHARE_TAG, path=source)


def find_virtiofsd() -> str | None:
    for p in VIRTIOFSD_PATHS:
        if Path(p).exists():
            return p
    return shutil.which("virtiofsd")


class PodShare:
    """Owns the daemon that serves `source` to the guest, if the share kind needs one."""

    def __init__(self, source: Path, rundir: Path, force_9p: bool = False) -> None:
        """force_9p: a VM restored from a template (virtio-fs cannot be migrated; QEMU serves 9p itself)."""
        self.source = source
        self.rundir = rundir
        self.proc: asyncio.subprocess.Process | None = None
        self.confinement: confine.Confinement | None = None
        self.on_spawn: Callable[[], None] | None = None  # called as soon as virtiofsd exists: its owner records it
        binary = None if force_9p else find_virtiofsd()
        self.binary = binary
        self.share = (Share("virtiofs", SHARE_TAG, socket=rundir / "virtiofs.sock") if binary
                      else ninep(source))

    async def start(self) -> Share:
        if self.share.kind != "virtiofs":
            return self.share
        assert self.binary and self.share.socket
        sock = self.share.socket
        if Path(self.binary).name == "virtiofsd" and self.binary.startswith("/usr/lib/qemu"):
            argv = [self.binary, f"--socket-path={sock}", "-o", f"source={self.source}", "-o", "cache=auto",
                    "-o", "no_posix_lock", "-o", f"modcaps={MODCAPS}"]
        else:  # the Rust virtiofsd (Debian 13, Ubuntu)
            argv = [self.binary, f"--socket-path={sock}", f"--shared-dir={self.source}", "--cache=auto",
                    f"--modcaps={MODCAPS}"]
        vmm = confine.virtiofsd()
        try:
            self.proc = await procs.spawn(argv, log=self.rundir / "virtiofsd.log", preexec=vmm.jail.preexec)
        except BaseException:
            vmm.release()
            raise
        finally:
            vmm.close_parent_fds()
        self.confinement = vmm
        if self.on_spawn:
            self.on_spawn()
        try:
            await procs.wait_for_path(sock, self.proc, 5.0, "virtiofsd")
        except (RuntimeError, TimeoutError) as e:
            await self.stop()
            log = (self.rundir / "virtiofsd.log").read_text(errors="replace")[-500:]
            raise VMError(f"virtiofsd did not start: {e}. {log}") from None
        return self.share

    async def stop(self) -> None:
        if not self.proc:
            return
        cgroup = None if self.confinement or self.proc.returncode is not None else Cgroup.of_pid(self.proc.pid)
        await procs.stop(self.proc, grace=1.0)
        if self.confinement:  # a cgroup's removal waits for the kernel: off the event loop
            vmm, self.confinement = self.confinement, None
            await asyncio.to_thread(vmm.release)
        elif cgroup:  # a virtiofsd an earlier hyperd started
            await asyncio.to_thread(cgroup.remove)
