"""What a VMM process gets, jailer-style: its uid, its jail, its cgroup, its capabilities, its limits.

QEMU (every Machine: cold, template clone, template builder, pool, runv):
- a uid/gid of its own (vm/uids.py), no supplementary groups (kvm's when it uses /dev/kvm);
- a mount namespace showing /usr, ld.so.cache, kernel, initramfs, /dev/{null,zero,urandom,random[,kvm]}, its
  socket directory `<rundir>/vm` (owned by its uid, mode 0700), and the pod's files it serves at their own paths:
  the 9p share (recursive, slave: containers added later appear), the virtiofsd socket, the template memory file;
- the taps (each opened in the network namespace it is in: open_tap) and block volumes as inherited fds (no
  /dev/net/tun, no CAP_NET_ADMIN, no write access to the image's path), template state through QMP getfd;
- capabilities: none, except that QEMU's 9p server with security_model=passthrough (template, pool and clone
  pods) keeps file ownership with CAP_CHOWN, CAP_DAC_OVERRIDE and CAP_FOWNER, ambient (never CAP_MKNOD,
  CAP_FSETID, CAP_SETFCAP, CAP_SYS_ADMIN, CAP_NET_ADMIN); CAP_NET_BIND_SERVICE only for user-mode forwards of
  ports below ip_unprivileged_port_start;
- a memory (guest RAM + overhead) and pids cgroup, rlimits (no core dumps: they would hold guest RAM; bounded
  files and threads), no_new_privs, QEMU's -sandbox and the extra filter of vm/seccomp.py.
virtiofsd (cold pods) stays root (it sandboxes itself: namespaces, chroot, its own seccomp) without CAP_MKNOD and
CAP_SETFCAP (`modcaps`), in its own cgroup, with the extra filter.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import secrets
import shutil
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .. import nsenter
from ..errors import HCError, VMError
from . import cgroups, uids
from .cgroups import Cgroup, Limits
from .jail import (
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_FOWNER,
    CAP_NET_BIND_SERVICE,
    DEVICES,
    Bind,
    Device,
    Jail,
    Spec,
    system_binds,
    uid_of,
)
from .qemu import Handed, VMConfig

MIB = 1 << 20
OVERHEAD_MIB = {"tcg": 512, "kvm": 256}  # QEMU itself; TCG's translation cache grows with the guest's code
QEMU_PIDS, VIRTIOFSD_PIDS = 512, 512
NOFILE = 16384
NPROC = 1024  # per uid, and the uid is this VM's alone
NINEP_CAPS = frozenset({CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER})
TUNSETIFF, TUNGETFEATURES = 0x400454CA, 0x800454CF
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def rlimits(core_only: bool = False) -> dict[int, tuple[int, int]]:
    limits = {resource.RLIMIT_CORE: (0, 0)}
    if not core_only:
        limits |= {resource.RLIMIT_NOFILE: (NOFILE, NOFILE), resource.RLIMIT_NPROC: (NPROC, NPROC),
                   resource.RLIMIT_MSGQUEUE: (0, 0)}
    return limits


def _open_tap_here(name: str) -> int:
    """In the calling thread's network namespace. TUNSETIFF would make a tap that is not there (one that leads
    nowhere): an existing one only."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV)) from None
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4))[0]
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if features & IFF_VNET_HDR else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def open_tap(name: str, netns: str | None = None) -> int:
    """The tap `name` as an fd, attached the way QEMU would (vnet headers where the kernel has them). `netns`: the
    network namespace (a path) the tap is in, when that is not this process's: opened by a short-lived thread that
    enters it (nsenter.run_in), so nothing else here changes namespace; the fd stays bound to that tap wherever it
    goes. OSError names the tap and the namespace."""
    try:
        return nsenter.run_in(netns, lambda: _open_tap_here(name)) if netns else _open_tap_here(name)
    except OSError as e:
        raise OSError(e.errno, f"tap {name}{f' in {netns}' if netns else ''}: {e.strerror}") from None


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def qemu_caps(cfg: VMConfig) -> frozenset[int]:
    caps: set[int] = set()
    if cfg.share and cfg.share.kind == "9p":
        caps |= NINEP_CAPS
    if cfg.memory_file:
        caps.add(CAP_DAC_OVERRIDE)  # the template's files stay root's
    forwards = [f for nic in cfg.nics if not nic.tap and nic.hub is None for f in nic.forwards]
    if forwards and any(f.host_port < unprivileged_port_start() for f in forwards):
        caps.add(CAP_NET_BIND_SERVICE)
    return frozenset(caps)


@dataclass
class Confinement:
    """One confined process: what it holds on the host until release()."""

    uid: int | None
    cgroup: Cgroup
    jail: Jail
    handed: Handed = field(default_factory=Handed)
    fds: list[int] = field(default_factory=list)  # handed over: closed here once the child has them

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(self.fds)

    def close_parent_fds(self) -> None:
        self.jail.close_fds()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []

    def started(self, pid: int) -> None:
        if self.uid is not None:
            uids.hand_to(self.uid, pid)

    def release(self) -> None:
        """After the process is gone (or never started)."""
        self.close_parent_fds()
        self.cgroup.remove()
        if self.uid is not None:
            uids.release(self.uid)


def release_pid(pid: int, uid: int | None, cgroup: Cgroup | None) -> None:
    """What a VMM that this process did not start held (found by inspect before it was stopped)."""
    if cgroup:
        cgroup.remove()
    if uid:
        lo, hi = uids.uid_range()
        if lo <= uid <= hi:
            uids.release(uid)


def qemu(cfg: VMConfig) -> Confinement:
    """Claims a uid, makes the socket directory, cgroup and jail of the QEMU for `cfg` (jailed=True), and opens
    what it is handed. Nothing is left behind if this fails."""
    try:
        uid = uids.claim()
    except HCError as e:
        raise VMError(e.message) from None
    cgroup: Cgroup | None = None
    fds: list[int] = []
    try:
        vmdir = cfg.sockets.vmdir
        shutil.rmtree(vmdir, ignore_errors=True)  # sockets of an earlier VM would look ready
        vmdir.mkdir(mode=0o700, parents=True)
        os.chown(vmdir, uid, uid)
        binds, links = system_binds()
        binds += [Bind(cfg.kernel), Bind(cfg.initrd), Bind(vmdir, writable=True)]
        devices = [Device(d, os.stat(d).st_rdev) for d in DEVICES if Path(d).exists()]
        if cfg.accel == "kvm":
            devices.append(Device("/dev/kvm", os.stat("/dev/kvm").st_rdev, 0o600, uid))
        if cfg.share and cfg.share.kind == "virtiofs" and cfg.share.socket:
            os.chown(cfg.share.socket, uid, uid)
            binds.append(Bind(cfg.share.socket, writable=True))
        elif cfg.share and cfg.share.path:
            binds.append(Bind(cfg.share.path, writable=True, recursive=True))
        if cfg.memory_file:
            if not cfg.memory_file.exists():  # a template being made: QEMU fills the file, it may not create it
                os.close(os.open(cfg.memory_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            binds.append(Bind(cfg.memory_file, writable=True))
        tap_fds: list[int | None] = []
        for nic in cfg.nics:
            fd = open_tap(nic.tap, nic.netns) if nic.tap and nic.hub is None else None
            if fd is not None:
                fds.append(fd)
            tap_fds.append(fd)
        disk_fds = []
        for d in cfg.disks:
            pair = (os.open(d.path, os.O_RDONLY | os.O_CLOEXEC), os.open(d.path, os.O_RDWR | os.O_CLOEXEC))
            fds += pair
            disk_fds.append(pair)
        overhead = OVERHEAD_MIB.get(cfg.accel, 512)
        cgroup = Cgroup.create(f"vm-{uid}", Limits((cfg.memory_mib + overhead) * MIB, QEMU_PIDS))
        # Under TCG, QEMU asks for huge pages for its translation buffer: an idle clone's few MiB of translated
        # code then hold 14 MiB (7 huge pages) of its ~41 MiB PSS. Without, the buffer takes 4 KiB pages.
        spec = Spec(uid=uid, gid=uid, caps=qemu_caps(cfg), binds=binds, symlinks=links, devices=devices,
                    rlimits=rlimits(), huge_pages=cfg.accel != "tcg")  # its cgroup: Machine.start moves it in
        return Confinement(uid, cgroup, Jail(spec), Handed(tuple(tap_fds), tuple(disk_fds)), fds)
    except BaseException as e:
        for fd in fds:
            os.close(fd)
        if cgroup:
            cgroup.remove()
        uids.release(uid)
        if isinstance(e, OSError):
            raise VMError(f"cannot confine QEMU: {e}") from None
        raise


def virtiofsd() -> Confinement:
    """virtiofsd: root still (it sandboxes itself), its own cgroup, no core dumps, the extra filter."""
    cgroup = Cgroup.create(f"fs-{secrets.token_hex(6)}", Limits(512 * MIB, VIRTIOFSD_PIDS))
    try:
        spec = Spec(mount_ns=False, proc=False, cgroup_fds=cgroup.open_procs(), rlimits=rlimits(core_only=True))
        return Confinement(None, cgroup, Jail(spec))
    except BaseException:
        cgroup.remove()
        raise


def inspect(pid: int) -> tuple[int | None, Cgroup | None]:
    """The uid and VMM cgroups of a running VMM (one an earlier hyperd started)."""
    return uid_of(pid), Cgroup.of_pid(pid)


def sweep() -> tuple[int, int]:
    """At hyperd's start: leases and empty cgroups of VMMs that are gone."""
    return uids.sweep(), cgroups.sweep()
