"""The QEMU command line for a pod VM: `-M microvm`, virtio-mmio devices, no firmware, no display."""

from __future__ import annotations

import functools
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import VMError

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
CTL_PORT = "hc.ctl"
IO_PORT = "hc.io"


@dataclass(frozen=True)
class Share:
    """How the pod's directory reaches the guest: a virtiofsd socket, or a host path over 9p."""

    kind: Literal["virtiofs", "9p"]
    tag: str
    socket: Path | None = None  # virtiofs
    path: Path | None = None  # 9p


@dataclass(frozen=True)
class Disk:
    """A raw image attached as a virtio-blk disk; the guest finds it by its serial."""

    path: Path
    serial: str


@dataclass(frozen=True)
class HostForward:
    """User mode: a host port forwarded into the guest."""

    protocol: str
    host_ip: str
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class Nic:
    """One virtio-net interface of the VM: on a host tap (created by network/; in the network namespace `netns`, a
    path, when that is not hyperd's), or on QEMU's user-mode stack."""

    mac: str
    tap: str | None = None  # None: user mode (or, with hub, no backend at all)
    netns: str | None = None  # where the tap is (/proc/PID/ns/net, /run/netns/NAME); None: hyperd's namespace
    user_net: str = "10.0.2.0/24"
    forwards: tuple[HostForward, ...] = ()
    hub: int | None = None  # an isolated QEMU hub: a NIC that reaches nothing (templates, clones without network)


@dataclass(frozen=True)
class Sockets:
    """The unix sockets QEMU listens on for one VM, in `<rundir>/vm` (the one directory its uid may write: see
    vm/confine.py); its logs in `logdir`."""

    rundir: Path
    logdir: Path | None = None
    generation: int = 0  # bumped each time a new hyperd takes the VM over (fresh agent sockets)

    @property
    def vmdir(self) -> Path:
        return self.rundir / "vm"

    @property
    def qmp(self) -> Path:
        return self.vmdir / "qmp.sock"

    @property
    def ctl(self) -> Path:
        return self.vmdir / (f"ctl.{self.generation}.sock" if self.generation else "ctl.sock")

    @property
    def io(self) -> Path:
        return self.vmdir / (f"io.{self.generation}.sock" if self.generation else "io.sock")

    @property
    def console_sock(self) -> Path:
        return self.vmdir / "console.sock"

    @property
    def console(self) -> Path:
        return (self.logdir or self.rundir) / "console.log"

    @property
    def qemu_log(self) -> Path:
        return (self.logdir or self.rundir) / "qemu.log"


@dataclass(frozen=True)
class VMConfig:
    kernel: Path
    initrd: Path
    sockets: Sockets
    accel: Literal["kvm", "tcg"] = "tcg"
    cpus: int = 1
    memory_mib: int = 256
    share: Share | None = None
    cmdline: tuple[str, ...] = field(default_factory=tuple)
    with_ports: bool = True
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()  # net0, net1, ... in this order (the guest finds each by its MAC)
    # Templates: guest RAM in a file (shared while a template is made; a private copy-on-write mapping of the
    # template's file in a clone), and a clone waits for its state (`-incoming defer`, then Machine.restore).
    memory_file: Path | None = None
    memory_shared: bool = True
    incoming: bool = False
    # Set by Machine (vm/confine.py): QEMU under -sandbox in its jail, its sockets in Sockets.vmdir, the serial
    # console on a socket hyperd reads into a capped, rotated console.log (vm/console.py). Unset: bare QEMU (the
    # accelerator probe, the benchmark's floor) with QMP in the rundir and the console written to a file.
    jailed: bool = False


@dataclass(frozen=True)
class Handed:
    """What a confined QEMU gets as open fds instead of opening it (it may not: vm/confine.py)."""

    tap_fds: tuple[int | None, ...] = ()  # per NIC: its tap's fd (None: a NIC without a tap)
    disk_fds: tuple[tuple[int, int], ...] = ()  # per disk: read-only and read-write (QEMU opens it both ways)


@functools.cache
def qemu_binary() -> str:
    path = shutil.which("qemu-system-x86_64")
    if not path:
        raise VMError("qemu-system-x86_64 is not installed (Debian package qemu-system-x86; make demo installs it)")
    return path


@functools.cache
def host_tsc_khz() -> int | None:
    """The host TSC frequency; a microvm guest under TCG needs it or it hangs now and then."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
    return round(float(m.group(1)) * 1000) if m else None


# Under TCG a 1-vCPU guest rewrites every LOCK prefix in its text to UP code at boot: ~0.08 s of self-modifying
# code (each write flushes translated blocks) in a ~0.7 s boot, measured here; noreplace-smp skips it. (The other
# big one, ~0.1 s calibrating the local APIC timer, can only be skipped with noapictimer, and a guest ticking from
# the PIT instead hangs after a QMP stop/cont: pause and the pool need that.) tsc=reliable: on a busy host a
# starved vCPU's timer interrupts lag, the clocksource watchdog then finds the TSC "skewed" against jiffies and
# switches the guest to refined-jiffies, which cannot go tickless: that guest ticks at HZ for good, ~6 x the idle
# CPU (2.6 % of a host CPU against 0.4 %; 42 of 100 idle pods had switched, and every later start slowed).
TCG_CMDLINE = ("noreplace-smp", "tsc=reliable")


def boot_args(accel: str) -> list[str]:
    """The kernel command line every VM boots with (templates are keyed by it too)."""
    args = ["console=ttyS0", "quiet", "panic=-1", "rdinit=/init"]
    if accel == "tcg":
        khz = host_tsc_khz()
        if khz:
            args.append(f"tsc_early_khz={khz}")
        args += TCG_CMDLINE
    return args


def kernel_cmdline(cfg: VMConfig) -> str:
    return " ".join([*boot_args(cfg.accel), *cfg.cmdline])


def socket_backend(path: Path) -> dict[str, object]:
    """The QMP description of a listening unix-socket chardev backend (as `-chardev socket,server=on`)."""
    return {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": str(path)}},
                                       "server": True, "wait": False}}


AGENT_CHARDEVS = ("ctl", "io")


def netdev(nic: Nic, index: int = 0, tap_fd: int | None = None) -> str:
    """The -netdev of NIC `index` (id net<index>)."""
    nid = f"net{index}"
    if nic.hub is not None:
        return f"hubport,id={nid},hubid={nic.hub}"
    if nic.tap and tap_fd is not None:
        return f"tap,id={nid},fd={tap_fd}"
    if nic.tap and nic.netns:
        raise VMError(f"tap {nic.tap} is in {nic.netns}: QEMU can only be handed it as an fd (a confined QEMU)")
    if nic.tap:
        return f"tap,id={nid},ifname={nic.tap},script=no,downscript=no"
    fwd = "".join(f",hostfwd={f.protocol}:{f.host_ip}:{f.host_port}-:{f.guest_port}" for f in nic.forwards)
    return f"user,id={nid},net={nic.user_net},ipv6=off{fwd}"


def memory_backend(cfg: VMConfig) -> str:
    if cfg.memory_file:
        share = "on" if cfg.memory_shared else "off"
        return f"memory-backend-file,id=mem,size={cfg.memory_mib}M,mem-path={cfg.memory_file},share={share}"
    return f"memory-backend-memfd,id=mem,size={cfg.memory_mib}M,share=on"


def command(cfg: VMConfig, handed: Handed | None = None) -> list[str]:
    """QEMU's argv. `handed`: the taps and disks as inherited fds (a confined QEMU), else by name and path."""
    s = cfg.sockets
    console = (f"socket,id=console,path={s.console_sock},server=on,wait=on" if cfg.jailed
               else f"file,id=console,path={s.console}")
    mem = f"{cfg.memory_mib}M"
    argv = [
        qemu_binary(),
        "-name", s.rundir.name,
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-M", "microvm,memory-backend=mem,x-option-roms=off",
        "-global", "virtio-mmio.force-legacy=false",
        "-object", memory_backend(cfg),
        "-m", mem,
        "-smp", str(cfg.cpus),
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initrd),
        "-append", kernel_cmdline(cfg),
        "-chardev", console,
        "-serial", "chardev:console",
        "-qmp", f"unix:{s.qmp if cfg.jailed else s.rundir / 'qmp.sock'},server=on,wait=off",
        "-device", "virtio-rng-device",
    ]
    if cfg.accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg", "-cpu", "max"]
    if cfg.with_ports:
        argv += ["-device", "virtio-serial-device"]
        for chardev, path, name in (("ctl", s.ctl, CTL_PORT), ("io", s.io, IO_PORT)):
            argv += [
                "-chardev", f"socket,id={chardev},path={path},server=on,wait=off",
                "-device", f"virtserialport,chardev={chardev},name={name}",
            ]
    for i, disk in enumerate(cfg.disks):
        drive = str(disk.path)
        if handed and handed.disk_fds:
            for fd in handed.disk_fds[i]:
                argv += ["-add-fd", f"fd={fd},set={i + 1},opaque={disk.path}"]
            drive = f"/dev/fdset/{i + 1}"
        argv += [
            "-drive", f"file={drive},if=none,id=disk{i},format=raw,cache=writeback",
            "-device", f"virtio-blk-device,drive=disk{i},serial={disk.serial}",
        ]
    for i, nic in enumerate(cfg.nics):
        tap_fd = handed.tap_fds[i] if handed and i < len(handed.tap_fds) else None
        argv += ["-netdev", netdev(nic, i, tap_fd), "-device", f"virtio-net-device,netdev=net{i},mac={nic.mac}"]
    if cfg.share and cfg.share.kind == "virtiofs":
        argv += [
            "-chardev", f"socket,id=share,path={cfg.share.socket}",
            "-device", f"vhost-user-fs-device,chardev=share,tag={cfg.share.tag}",
        ]
    elif cfg.share:
        argv += [
            "-fsdev", f"local,id=share,path={cfg.share.path},security_model=passthrough",
            "-device", f"virtio-9p-device,fsdev=share,mount_tag={cfg.share.tag}",
        ]
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    if cfg.jailed:
        argv += ["-sandbox", SANDBOX]
    return argv
