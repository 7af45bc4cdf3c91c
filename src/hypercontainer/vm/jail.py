"""Jailer-style confinement of a VMM process, done in the child between fork and exec (a preexec function).

Everything is worked out in the parent (paths as bytes, flags, the seccomp program, cgroup fds); the child only
makes system calls, in this order:

1. joins its cgroups (writes "0" to cgroup.procs fds the parent opened);
2. unshares mount, IPC, UTS and cgroup namespaces; makes every mount a slave (host mounts still propagate in:
   a container added to a running pod appears under the 9p share);
3. builds the jail: a small tmpfs on `/run/hypercontainer-vmm/root` (the host's directory stays empty) with
   read-only nosuid binds of /usr (the binary, its libraries, firmware), /etc/ld.so.cache, the kernel and
   initramfs; the /dev nodes it needs made there (as Firecracker's jailer does: /dev/kvm owned by its uid, so no
   group and no change to the host's node); read-write binds of the pod's own files at their same absolute paths
   (so the command line is unchanged), a procfs showing only its own process (hidepid=invisible, subset=pid);
   pivots into it, detaches the host's root, remounts "/" read-only;
4. turns transparent huge pages off if asked; sets rlimits; drops the bounding set to the kept capabilities;
   switches to its uid/gid (no supplementary groups); keeps exactly the listed capabilities as ambient ones
   (effective after exec);
   sets no_new_privs and loads the extra seccomp filter (vm/seccomp.py).

A failure writes "jail: <step>: <error>" to the child's stderr (the VMM's log) and the spawn fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import seccomp

JAIL_ROOT = Path("/run/hypercontainer-vmm/root")
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_SLAVE = 4096, 16384, 1 << 19
MNT_DETACH = 2
SYS_CAPSET, SYS_PIVOT_ROOT = 126, 155
PR_SET_KEEPCAPS, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 22, 24, 38, 47
PR_CAP_AMBIENT_RAISE, SECCOMP_MODE_FILTER, PR_SET_THP_DISABLE = 2, 2, 41
CAP_VERSION_3 = 0x20080522
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_NET_BIND_SERVICE = 0, 1, 3, 10
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class Bind:
    """A host path shown at the same path in the jail."""

    path: Path
    writable: bool = False
    recursive: bool = False  # with the mounts below it (the pod share: container roots, volumes)
    exec: bool = False


@dataclass(frozen=True)
class Device:
    """A character device node made in the jail."""

    path: str
    rdev: int
    mode: int = 0o666
    uid: int = 0


@dataclass
class Spec:
    """What one VMM process gets. uid None: it stays root (virtiofsd, which sandboxes itself)."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    caps: frozenset[int] = frozenset()
    binds: list[Bind] = field(default_factory=list)
    symlinks: dict[str, str] = field(default_factory=dict)
    devices: list[Device] = field(default_factory=list)
    mount_ns: bool = True
    proc: bool = True
    cgroup_fds: list[int] = field(default_factory=list)
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)
    seccomp: bool = True
    huge_pages: bool = True  # False: no transparent huge pages for the process (inherited across exec)


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def system_binds() -> tuple[list[Bind], dict[str, str]]:
    """/usr and the top-level library/binary directories (symlinks into /usr on merged-/usr systems)."""
    binds = [Bind(Path("/usr"), recursive=True, exec=True)]
    links = {}
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            links[top] = os.readlink(p)
        elif p.is_dir():
            binds.append(Bind(p, recursive=True, exec=True))
    if Path("/etc/ld.so.cache").exists():
        binds.append(Bind(Path("/etc/ld.so.cache")))
    return binds, links


class _Step:
    __slots__ = ("args", "fn", "what")

    def __init__(self, what: bytes, fn: Callable[..., object], args: tuple[object, ...]) -> None:
        self.what, self.fn, self.args = what, fn, args


def _c(fn: Callable[..., int]) -> Callable[..., None]:
    """A libc call as a step function: -1 raises OSError with errno."""
    def call(*args: object) -> None:
        if fn(*args) == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return call


def _touch(path: bytes) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _mkdir(path: bytes) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)


def _join(fd: int) -> None:
    os.write(fd, b"0")


class Jail:
    """The steps of one Spec, prepared in the parent; `preexec` runs them in the child."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.steps: list[_Step] = []
        self._prog = seccomp.program() if spec.seccomp else None
        self._cap = (_CapHeader(CAP_VERSION_3, 0), (_CapData * 2)())
        if spec.uid is not None:
            JAIL_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._plan()

    def _add(self, what: str, fn: Callable[..., object], *args: object) -> None:
        self.steps.append(_Step(what.encode(), fn, args))

    def _plan(self) -> None:
        s = self.spec
        mount, prctl = _c(_libc.mount), _c(_libc.prctl)
        for fd in s.cgroup_fds:
            self._add("join cgroup", _join, fd)
        if s.mount_ns:
            self._add("unshare", _c(_libc.unshare), CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
            self._add("make / a slave", mount, None, b"/", None, MS_REC | MS_SLAVE, None)
            self._plan_root()
        if not s.huge_pages:
            self._add("no huge pages", prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0)
        for res, (soft, hard) in s.rlimits.items():
            self._add(f"rlimit {res}", resource.setrlimit, res, (soft, hard))
        if s.uid is not None:
            for cap in range(last_cap() + 1):
                if cap not in s.caps:
                    self._add("drop bounding cap", prctl, PR_CAPBSET_DROP, cap, 0, 0, 0)
            self._add("keepcaps", prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0)
            self._add("setgroups", os.setgroups, list(s.groups))
            self._add("setresgid", os.setresgid, s.gid, s.gid, s.gid)
            self._add("setresuid", os.setresuid, s.uid, s.uid, s.uid)
            mask = sum(1 << c for c in s.caps)
            hdr, data = self._cap
            data[0].effective = data[0].permitted = data[0].inheritable = mask & 0xFFFFFFFF
            data[1].effective = data[1].permitted = data[1].inheritable = mask >> 32
            self._add("capset", _c(_libc.syscall), SYS_CAPSET, ctypes.addressof(hdr), ctypes.addressof(data))
            for cap in sorted(s.caps):
                self._add("ambient cap", prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
        self._add("no_new_privs", prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if self._prog:
            self._add("seccomp", prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                      ctypes.addressof(self._prog.fprog), 0, 0)

    def _plan_root(self) -> None:
        s = self.spec
        mount = _c(_libc.mount)
        root = bytes(JAIL_ROOT)
        self._add("jail tmpfs", mount, b"hc-jail", root, b"tmpfs", MS_NOSUID | MS_NOEXEC,
                  b"mode=0755,size=64k,nr_inodes=512")
        made: set[Path] = set()

        def parents(p: Path) -> None:
            for d in reversed(p.parents):
                if d != Path("/") and d not in made:
                    made.add(d)
                    self._add("mkdir", _mkdir, root + bytes(d))

        for b in sorted(set(s.binds), key=lambda b: len(b.path.parts)):
            parents(b.path)
            target = root + bytes(b.path)
            if b.path not in made:
                if b.path.is_dir():
                    made.add(b.path)
                    self._add("mkdir", _mkdir, target)
                else:
                    self._add(f"mount point {b.path}", _touch, target)
            src = bytes(b.path)
            self._add(f"bind {b.path}", mount, src, target, None, MS_BIND | (MS_REC if b.recursive else 0), None)
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID
            flags |= (0 if b.writable else MS_RDONLY) | MS_NODEV | (0 if b.exec else MS_NOEXEC)
            self._add(f"remount {b.path}", mount, None, target, None, flags, None)
        for dev in s.devices:
            parents(Path(dev.path))
            target = root + dev.path.encode()
            self._add(f"mknod {dev.path}", os.mknod, target, stat.S_IFCHR | dev.mode, dev.rdev)
            self._add(f"chmod {dev.path}", os.chmod, target, dev.mode)  # whatever the umask
            self._add(f"chown {dev.path}", os.chown, target, dev.uid, dev.uid)
        for link, dest in s.symlinks.items():
            self._add(f"symlink {link}", os.symlink, dest.encode(), root + link.encode())
        if s.proc:
            self._add("mkdir /proc", _mkdir, root + b"/proc")
            self._add("mount /proc", mount, b"proc", root + b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      b"hidepid=invisible,subset=pid")
        self._add("chdir jail", os.chdir, root)
        self._add("pivot_root", _c(_libc.syscall), SYS_PIVOT_ROOT, b".", b".")
        self._add("detach host root", _c(_libc.umount2), b".", MNT_DETACH)
        self._add("chdir /", os.chdir, b"/")
        self._add("remount / read-only", mount, None, b"/", None,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, None)  # /dev's nodes live here

    def preexec(self) -> None:
        """Runs in the forked child: system calls only, no imports, nothing that waits for a lock."""
        for step in self.steps:
            try:
                step.fn(*step.args)
            except OSError as e:
                os.write(2, b"jail: " + step.what + b": " + os.strerror(e.errno or 0).encode() + b"\n")
                raise

    def close_fds(self) -> None:
        """The parent's copies of the fds only the child needed."""
        for fd in self.spec.cgroup_fds:
            os.close(fd)
        self.spec.cgroup_fds = []


def status_of(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict (Uid, Gid, CapEff, Seccomp, ...)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def uid_of(pid: int) -> int | None:
    uid = status_of(pid).get("Uid")
    return int(uid.split()[0]) if uid else None
