"""The per-container shim: the host process that stands in for the container's process.

`runv create` starts it (it inherits the caller's stdio, and the caller's subreaper adopts it once runv exits);
its pid goes into the pid file. It checks the config, runs the create hooks, hands the terminal over and reports
"created" (runv create returns); then it boots the container's VM with the same pod core as hyperd (from a VM
template when one exists) while the engine goes on, and `start` waits for that boot. It relays stdio (or a pty
handed to the console socket), forwards signals and window size, serves `kill`, `exec`, `pause`, `resume`, and
exits with the container's exit code once the container is done and the VM is gone. Its log has the timings of
each step ("timing: ...", seconds since the shim's process started).

A warm shim (warm()) is the same shim started ahead by the factory: `runv create` hands it the container over a
socket, and a fork of runv create stands for the container's process (standin.py; StandInLink is the shim's end).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ... import nsenter, procs
from ...config import environment
from ...errors import CommandNotRunnable, HCError
from ...spec import oci
from ...storage import mountns
from . import command, factory, hooks, hostoom, wire
from .fdio import read_chunks, write_all
from .state import Store, member_name, now_rfc3339

# The pod core (the VM, its network, the pod and container models) is imported by the boot, which runs after
# `create` has returned (its imports cost 0.2 s): see Shim.prepare() and Shim.boot().
if TYPE_CHECKING:
    from ...network.manager import Network
    from ...pod.container import Container, Event
    from ...pod.pod import GuestAssets, Pod
    from ...pod.slot import Lent
    from ...pod.templates import Templates
    from ...protocol.client import ProcessStreams
    from ...spec.pod import ContainerSpec, PodSpec

log = logging.getLogger("runv-shim")
CONTAINER = "ctr"
UNLIMITED = 2**64 - 1


ASSIGNED: list[float] = []  # a warm shim's: when `runv create` handed it its container (CLOCK_BOOTTIME)


def since_start() -> float:
    """Seconds since the shim's process started (its interpreter's start-up and imports included; 10 ms steps), or
    for a warm shim since it was handed its container."""
    ticks = procs.start_time(os.getpid()) or 0
    return time.clock_gettime(time.CLOCK_BOOTTIME) - (ASSIGNED[0] if ASSIGNED else ticks / os.sysconf("SC_CLK_TCK"))

CLIENT_LINGER = 5.0  # seconds an exec's client has, after its exit status, to close its end


def oci_fields(cfg: oci.Config) -> dict:
    """NEW_CONTAINER fields from an OCI config: its process, and (linux) its memory limit, masked and read-only
    paths and seccomp filter, which the agent keeps for the container's EXECs too."""
    p = cfg.process
    assert p
    return {"arg": p.args, "env": p.env, "cwd": p.cwd or "/", "uid": p.user.uid, "gid": p.user.gid,
            "group": p.user.additional_gids, "terminal": int(p.terminal), "stdin": 1,
            "readonly": int(cfg.root.readonly),
            "rlimit": [f"{oci.RLIMIT_NAMES[r.type]}:{-1 if r.soft >= UNLIMITED else r.soft}:"
                       f"{-1 if r.hard >= UNLIMITED else r.hard}" for r in p.rlimits],
            **oci.process_security(p),
            **oci.container_security(cfg),
            # CRI's pod-wide PID namespace: a sandbox's container given a pid namespace path joins the sandbox's.
            **({"pid_ns_of": CONTAINER} if oci.cri_sandbox(cfg) and oci.pid_namespace_path(cfg) else {})}


def vm_size(cfg: oci.Config) -> dict:
    """The VM's size from linux.resources (memory limit + what the guest itself needs; CPU quota / period)."""
    res = cfg.linux.get("resources") or {}
    out = {}
    limit = (res.get("memory") or {}).get("limit")
    if isinstance(limit, int) and limit > 0:
        out["memory"] = min(65536, max(256, limit // (1 << 20) + 64))
    cpu = res.get("cpu") or {}
    if isinstance(cpu.get("quota"), int) and cpu["quota"] > 0 and cpu.get("period"):
        out["vcpu"] = min(64, max(1, -(-cpu["quota"] // cpu["period"])))
    return out


def container_parts(cfg: oci.Config, name: str) -> tuple[dict, list[dict]]:
    """The container spec and the pod volumes it needs: bind-mounted directories become host volumes, files
    (hosts, resolv.conf, hostname, ...) are copied in, tmpfs mounts become guest tmpfs volumes."""
    volumes: list[dict[str, object]] = []
    mounts: list[dict[str, object]] = []
    files: list[dict[str, object]] = []
    for i, m in enumerate(oci.bind_mounts(cfg)):
        src = Path(m.source or "")
        if src.is_dir():
            volumes.append({"name": f"{name}-b{i}", "host_path": str(src)})
            ro = {"ro", "rro"} & set(m.options)
            mounts.append({"name": f"{name}-b{i}", "path": m.destination, "readonly": bool(ro),
                           "recursive_readonly": "rro" in ro})  # runc: a plain `ro` is the top mount's only
        elif oci.copied_in(src):
            files.append({"path": m.destination, "base64": base64.b64encode(src.read_bytes()).decode(),
                          "mode": src.stat().st_mode & 0o7777})
    for i, m in enumerate(oci.tmpfs_mounts(cfg)):
        volumes.append({"name": f"{name}-t{i}", "empty_dir": True})
        mounts.append({"name": f"{name}-t{i}", "path": m.destination, "readonly": "ro" in m.options})
    p = cfg.process
    assert p
    return ({"name": name, "image": "oci-bundle", "tty": p.terminal, "stdin": True, "readonly": cfg.root.readonly,
             "volumes": mounts, "files": files,
             # applied in the guest, whose kernel is the pod's alone (namespaced sysctls or not)
             "sysctls": {str(k): str(v) for k, v in (cfg.linux.get("sysctl") or {}).items()}}, volumes)


def pod_spec(cid: str, cfg: oci.Config, netns: str | None = None) -> PodSpec:
    """`netns`: the network namespace the VM joins (None: loopback only)."""
    from ...spec.pod import MIN_MEMORY_MIB, PodSpec

    container, volumes = container_parts(cfg, CONTAINER)
    spec: dict = {"name": "runv", "network": {"namespace": netns} if netns else "none", "boot": "template",
                  "volumes": volumes, "containers": [container]}
    if cfg.hostname and len(cfg.hostname) <= 63 and cfg.hostname.replace("-", "").isalnum():
        spec["hostname"] = cfg.hostname.lower()
    size = vm_size(cfg)
    if size:
        spec["resources"] = {"memory": max(MIN_MEMORY_MIB, size.get("memory", 256)), "vcpu": size.get("vcpu", 1)}
    return PodSpec.model_validate(spec)


def check_command(cfg: oci.Config, root: Path) -> None:
    """A command certainly missing from the root fails create, as runc's does (command.py)."""
    if why := command.not_found(cfg, root):
        raise CommandNotRunnable(why, 127)


def sandbox_of(cfg: oci.Config) -> str | None:
    """The sandbox a container joins (CRI annotations); None: a VM of its own."""
    return oci.cri_sandbox(cfg)


async def undone(shim: Shim, e: BaseException, what: str) -> str:
    """Logs why `what` failed and tears down the pod the shim made, if any; returns the reason."""
    msg = e.message if isinstance(e, HCError) else f"{type(e).__name__}: {e}"
    log.error("%s: %s", what, msg)
    if shim.pod:
        with contextlib.suppress(Exception):
            await shim.pod.teardown()
    return msg


def release(lent: tuple[dict, list[int]]) -> None:
    """A VM the factory lent that is not used: stopped (the factory frees it)."""
    info, fds = lent
    for fd in fds:
        os.close(fd)
    if proc := procs.adopt(info.get("pid"), info.get("start"), str(info.get("rundir"))):
        proc.kill()


class Shim:
    def __init__(self, store: Store, cid: str, bundle: Path, console_socket: Path | None) -> None:
        self.store, self.cid, self.bundle, self.console_socket = store, cid, bundle, console_socket
        self.pid = os.getpid()  # the container's process on the host: the shim, or a warm shim's stand-in (warm())
        self.pod: Pod | None = None
        self.container: Container | None = None
        self.state: dict = {}
        self.pty: tuple[int, int] | None = None  # (master, slave): the master went to the console socket
        self.exit_code = 255
        self.started = asyncio.Event()
        self._tasks: set[asyncio.Future] = set()
        self.relay_task: asyncio.Future | None = None
        self.server: asyncio.AbstractServer | None = None
        self.cfg: oci.Config | None = None
        self.netns: str | None = None  # the container's network namespace (None: the host's, not joined)
        self.host_netns: int | None = None  # an fd of the host's, where main() left it for a new one
        self.oom_cgroup: Path | None = None  # the host memory cgroup the shim joined (hostoom.py)
        self.oom_killed = False  # the guest's OOM killer ended the container's process (state.json says so)
        self.network: Network | None = None
        self.assets: GuestAssets | None = None
        self.templates: Templates | None = None
        self.unplugged = False  # a network namespace of its own, still empty at create (see create())
        self.fields: dict = {}  # NEW_CONTAINER's fields from the config (oci_fields)
        self.container_spec: ContainerSpec | None = None
        self.booting: asyncio.Future[None] | None = None  # the background boot (begin_boot())
        self.size = (1, 256)  # the VM's vCPUs and MiB (create())
        self.lending: asyncio.Future[tuple[dict, list[int]] | None] | None = None  # the factory's answer
        self.ahead: tuple[dict, list[int]] | None = None  # a VM a warm shim was lent with its container
        self.ended = asyncio.Event()  # a failed boot was reported (start, kill): the shim exits
        # A warm shim's: tells the stand-in the container's exit (stopped()), before the VM stops
        self.exited: Callable[[int], None] | None = None

    def pids(self) -> dict[str, int | None]:
        """The state's pids: the container's on the host (what engines wait for) and the shim's, when not the same."""
        own = {"shim_pid": os.getpid(), "shim_start": procs.start_time(os.getpid())} if self.pid != os.getpid() else {}
        return {"pid": self.pid, "pid_start": procs.start_time(self.pid), **own}

    def spawn(self, aw) -> None:
        t = asyncio.ensure_future(aw)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---- create ------------------------------------------------------------------------------------------
    async def create(self, cfg: oci.Config | None = None) -> None:
        """The container is created: its config checked (`cfg`, as config_of() read it; None: read now), its hooks
        ran, its terminal handed over, its state "created" with the shim's pid. Its VM begins to boot before
        `create` answers (begin_boot()) and boots on while the engine does its own work (network, hooks) before
        `start`, which waits for the boot; in a network namespace of its own that is still empty, the VM boots
        without a NIC (and again at start if the engine gave it one by then)."""
        cfg = cfg or oci.load(self.bundle)
        for what in oci.unsupported(cfg):
            log.warning("not supported, ignored: %s", what)
        env = environment()  # runv's HYPERCONTAINER_* settings, read in one place (config.py)
        if env.vmm_uids:
            from ...vm import uids

            uids.use_range(uids.check_range(uids.parse_range(env.vmm_uids)))
        root = oci.root_path(self.bundle, cfg)
        if not root.is_dir():
            raise HCError(f"root {root} is not a directory")
        self.cfg = cfg
        # What the config asks of the container, checked now (a bad seccomp profile fails create): its fields (the
        # filter compiled) and its spec, for the container the boot makes.
        self.fields = oci_fields(cfg)
        spec = pod_spec(self.cid, cfg)
        self.container_spec, self.size = spec.containers[0], (spec.resources.vcpu, spec.resources.memory)
        kind, path = oci.network_namespace(cfg)
        self.netns = f"/proc/{self.pid}/ns/net" if kind == "new" else path  # main() (or the stand-in) made it
        self.state = {"id": self.cid, "bundle": str(self.bundle), "rootfs": str(root), "status": "creating",
                      **self.pids(), "created_rfc3339": now_rfc3339(), "annotations": cfg.annotations,
                      "vm_pid": None, "vm_start": None}
        joining = asyncio.ensure_future(self.join_cgroup(cfg))
        for hook_kind in ("prestart", "createRuntime"):  # docker's networking: a prestart hook fills the namespace
            if oci.hooks(cfg, hook_kind):
                await joining  # hooks find the container's pid in its cgroup, as runc leaves it
                await asyncio.to_thread(hooks.run, cfg, hook_kind,
                                        hooks.state(cfg, self.cid, str(self.bundle), "creating", self.pid),
                                        self.host_netns)
        check_command(cfg, root)
        (self.store.dir(self.cid) / "pod" / "logs").mkdir(parents=True, exist_ok=True)
        if cfg.process and cfg.process.terminal:
            self.open_console(cfg)
        # A namespace of its own that is still empty: `ctr run --cni` (and CNI callers like it) fill it between
        # create and start, most engines (`--network none`) never do; a microvm cannot take a NIC later (no
        # hotplug), so the VM boots now without one and, if the namespace has an interface by start, again then.
        self.unplugged = kind == "new" and not nsenter.links(f"/proc/{self.pid}/ns/net")
        if self.unplugged:
            log.info("network namespace %s is empty: the VM boots without a NIC (again at start if one appears)",
                     self.netns)
        self.begin_boot()
        await joining
        self.state["status"] = "created"
        self.store.save(self.cid, self.state)
        log.info("timing: created at %.3f s", since_start())

    def begin_boot(self) -> None:
        """Once create's checks passed (before it answers: its last step waits on the kernel, the boot need not):
        the pod core's imports, the guest's assets, the container and the VM, in the background; ready() waits for
        them. A VM without a NIC is asked of the factory at once, while the pod core is imported (a warm shim has
        one already if it was lent one with the container)."""
        ahead, self.ahead = self.ahead, None
        if ahead and self.unplugged and (ahead[0].get("cpus"), ahead[0].get("memory")) == self.size:
            self.lending = asyncio.get_running_loop().create_future()
            self.lending.set_result(ahead)
        else:
            if ahead:
                release(ahead)
            if self.unplugged:
                self.lending = asyncio.ensure_future(asyncio.to_thread(factory.borrow, self.store.root, *self.size))
        self.booting = asyncio.ensure_future(self.prepare_and_boot())

    async def prepare_and_boot(self) -> None:
        try:
            await self.prepare()
            await self.boot()
        except BaseException as e:
            msg = await undone(self, e, "the VM did not boot")
            if isinstance(e, asyncio.CancelledError):
                raise
            if isinstance(e, CommandNotRunnable):  # its process's set-up (cwd, the file to exec) failed at the hold
                raise CommandNotRunnable(msg, e.exit_code) from None
            raise HCError(msg) from None

    async def abandon_boot(self) -> None:
        """create failed after the boot began: the boot is cancelled (prepare_and_boot() undoes what it made)."""
        if self.booting and not self.booting.done():
            self.booting.cancel()
            with contextlib.suppress(BaseException):
                await self.booting

    async def ready(self) -> None:
        """Waits for the background boot; HCError: it failed (start reports it)."""
        if self.booting:
            await asyncio.shield(self.booting)

    async def prepare(self) -> None:
        """The guest's assets and accelerator, the template store, and the container (created, not started)."""
        from ...guest import assets as guest_assets
        from ...pod.pod import GuestAssets
        from ...pod.templates import Templates
        from ...vm.accel import detect

        log.info("timing: pod core imported at %.3f s", since_start())
        env = environment()
        p = env.paths
        a = await asyncio.to_thread(guest_assets.current, p.assets, env.kernel)
        accel = await detect(a.kernel, a.initrd, a.digest, p.assets / "accel.json", env.accel)
        self.assets = GuestAssets(a.kernel, a.initrd, accel.name)
        self.templates = Templates(a.kernel, a.initrd, accel.name, a.digest, p.assets / "templates",
                                   self.store.rundir(self.cid) / "templates")
        self.container = self.new_container()

    def new_container(self) -> Container:
        from ...image.store import Image
        from ...pod.container import Container

        assert self.container_spec
        image = Image(id="oci-bundle", refs=(), repo_digests=(), config={}, diff_ids=(), blobs=(), layers=(),
                      size=0, created="")
        statedir = self.store.dir(self.cid) / "pod"
        return Container(self.container_spec, image, stream=2, log_path=statedir / "logs" / "ctr.log",
                         fields=dict(self.fields), rootfs=Path(self.state["rootfs"]))

    async def replug(self) -> None:
        """The namespace that was empty at create has an interface now (`ctr run --cni`): the VM that booted
        without a NIC goes, with its container (never started), and the VM boots again, joined to it."""
        assert self.pod
        log.info("network namespace %s has an interface now: the VM boots again with a NIC", self.netns)
        old, self.pod = self.pod, None
        old.on_change.remove(self.record_vm)
        self.container = self.new_container()  # serve() follows the new one; the old one ends with its VM
        self.state.update(vm_pid=None, vm_start=None)
        await old.stop()
        await self.boot()

    async def boot(self) -> None:
        """The VM, joined to the container's network namespace if it has an interface, and the container in it
        (created). On failure nothing is left."""
        from ...network.manager import Network
        from ...pod.pod import Pod

        assert self.container and self.cfg and self.assets
        t = time.monotonic()
        ns = self.netns if self.netns and nsenter.links(self.netns) else None
        spec = pod_spec(self.cid, self.cfg, ns)
        # Its bookkeeping in memory: a shim's network outlives it only in state.json ("network": what `delete` of
        # a killed shim's container removes); a database on disk cost each container ~60 ms of creating it.
        self.network = Network("none", Path(":memory:"))
        await self.network.setup()
        statedir = self.store.dir(self.cid) / "pod"
        lent = None
        if ns is None:
            lent = await self.borrow()
        else:  # the factory's VMs have no NIC
            await self.give_back()
        # The VM's sockets below the shim's own directory: a pod's teardown removes its rundir, the shim's socket
        # stays (start reports a failed boot, a VM booted again keeps the shim serving).
        self.pod = Pod(self.cid, self.cid[:63], spec, [self.container], statedir, self.store.rundir(self.cid) / "vm",
                       self.assets, self.network, self.templates, "pool" if lent else "template", pool=lent)
        self.pod.on_change.append(self.record_vm)
        await self.pod.start(start_containers=False)
        self.pod.timings.mark("vm")
        # The container set up in the guest now, its process waiting for `start` (runc's create): what is left
        # for `start` is its exec (and a seccomp filter that goes in with no_new_privs).
        await self.pod.hold_created(CONTAINER)
        self.pod.timings.mark("held")
        vm = self.pod.runtime()
        self.state.update(vm_pid=vm["vm_pid"], vm_start=vm["vm_start"], booted_from=self.pod.booted_from,
                          network=self.pod.net.to_dict() if self.pod.net else None)
        self.store.save(self.cid, self.state)
        log.info("timing: VM up at %.3f s (boot %.3f s, from %s; pod marks %s)", since_start(),
                 time.monotonic() - t, self.pod.booted_from, self.pod.timings.marks)

    async def borrow(self) -> Lent | None:
        """A VM from this root's factory (factory.py), ready and paused, if one runs and has one of this size."""
        from ...pod.slot import Lent, Slot
        from ...protocol.client import AgentClient
        from ...vm.machine import Machine
        from ...vm.qemu import Sockets, VMConfig

        assert self.assets
        lending, self.lending = self.lending, None
        got = await lending if lending else None
        if got is None:
            return None
        info, fds = got
        ctl, io = (socket.socket(fileno=fd) for fd in fds)
        rundir, share = Path(info["rundir"]), Path(info["share_dir"])
        proc = procs.adopt(info.get("pid"), info.get("start"), str(rundir))
        if proc is None:  # gone meanwhile: the factory reclaims it
            ctl.close()
            io.close()
            return None
        machine = Machine(VMConfig(self.assets.kernel, self.assets.initrd, Sockets(rundir)))  # as a take-over's
        machine.proc, machine.lent = proc, True  # type: ignore[assignment]  # stopped here, freed by the factory
        self.state.update(vm_dir=str(rundir), vm_lent=True)  # for `delete` after a kill -9 of the shim
        agent = AgentClient()
        await agent.connect_sockets(ctl, io)
        log.info("timing: VM lent by the factory at %.3f s (%s)", since_start(), rundir.name)
        return Lent(Slot(rundir, share, machine, agent, str(info.get("template", "")), None))

    async def give_back(self) -> None:
        """A VM the factory lent that this container cannot use (its namespace has an interface by now): stopped;
        the factory frees it."""
        lending, self.lending = self.lending, None
        got = await lending if lending else None
        if got is not None:
            release(got)

    def record_vm(self, pod: Pod) -> None:
        """QEMU's pid in the state as soon as it exists: `delete --force` stops the VM of a shim killed meanwhile."""
        proc = pod.machine.proc if pod.machine else None
        if proc and self.state.get("vm_pid") != proc.pid:
            self.state.update(vm_pid=proc.pid, vm_start=procs.start_time(proc.pid))
            with contextlib.suppress(OSError):
                self.store.save(self.cid, self.state)

    async def join_cgroup(self, cfg: oci.Config) -> None:
        """The container's pid on the host into the memory cgroup config.json names, where containerd looks for
        the container's OOM kills (hostoom.py). In a thread: on cgroup v1 a move waits for an RCU grace period
        (~10 ms of waiting, no CPU), which create overlaps with its other steps and the VM's boot."""
        cg = hostoom.memory_cgroup(cfg)
        if not cg:
            return
        self.state["cgroup"] = str(cg)  # runv delete (or create, if this one fails) removes it
        self.store.save(self.cid, self.state)
        if await asyncio.to_thread(hostoom.join, cg, self.pid):
            self.oom_cgroup = cg

    async def record_oom(self) -> None:
        self.oom_killed = True
        if self.oom_cgroup:
            recorded = await asyncio.to_thread(hostoom.record_oom, self.oom_cgroup)
            log.info("the guest's OOM kill recorded in %s: %s", self.oom_cgroup, recorded)

    def open_console(self, cfg: oci.Config) -> None:
        """A host pty: the master goes to the console socket, the shim keeps the slave as the container's
        terminal (raw; its window size is forwarded to the guest's pty)."""
        if not self.console_socket:
            raise HCError("the process wants a terminal but no --console-socket was given")
        master, slave = os.openpty()
        tty.setraw(slave)
        size = cfg.process.console_size if cfg.process else None
        if size and size.height and size.width:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.console_socket))
            s.sendmsg([b"/dev/pts/runv"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])
        os.close(master)
        with contextlib.suppress(OSError):  # the slave as our controlling terminal: SIGWINCH reaches us
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        self.pty = (-1, slave)

    # ---- serving -----------------------------------------------------------------------------------------
    async def listen(self) -> None:
        """The socket runv's start, kill, exec, pause and resume talk to (listening before create returns)."""
        self.server = await asyncio.start_unix_server(self.on_client, path=str(self.store.sock(self.cid)))

    async def serve(self) -> int:
        assert self.server
        self.install_signal_handlers()
        try:
            try:
                await self.ready()
            except HCError as e:  # the VM did not boot: `start` (or `kill`) hears of it, then the shim exits
                await self.ended.wait()
                self.exit_code = e.exit_code if isinstance(e, CommandNotRunnable) else 125  # docker's 126/127
                return self.exit_code
            while True:  # the current container: replug() replaces the one created with the VM
                c = self.container
                assert c
                await c.done.wait()
                if c is self.container:
                    break
            assert self.container
            log.info("timing: container exited at %.3f s", since_start())
            self.exit_code = self.container.exit_code if self.container.exit_code is not None else 255
            if self.container.oom_killed:
                await self.record_oom()
            if self.relay_task:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.relay_task, 5)
            if self.exited:  # the engine hears of the exit now, not after the VM's stop: `delete` waits for it
                self.stopped()
            if self.pod:
                await self.pod.stop()
                log.info("timing: VM stopped at %.3f s", since_start())
            if self.templates and self.templates.building:  # its QEMU would outlive the shim's os._exit
                log.info("waiting for the template build this container's start began")
                await self.templates.settle()
        finally:
            self.stopped()
        return self.exit_code

    def stopped(self) -> None:
        """The container is done (once): no more requests; the state says so, with its exit code, and a warm
        shim's stand-in is told it (it exits with it)."""
        if self.state.get("status") == "stopped":
            return
        if self.server:
            self.server.close()
        with contextlib.suppress(FileNotFoundError):
            self.store.sock(self.cid).unlink()
        self.state.update(status="stopped", exit_code=self.exit_code, oom_killed=self.oom_killed)
        with contextlib.suppress(OSError):
            self.store.save(self.cid, self.state)
        if self.exited:
            self.exited(self.exit_code)

    def install_signal_handlers(self) -> None:
        """Signals sent to the shim go to the container; a terminal's size changes follow SIGWINCH."""
        loop = asyncio.get_running_loop()
        for sig in wire.FORWARDED:
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                loop.add_signal_handler(sig, self.forward_signal, int(sig))
        if self.pty:
            loop.add_signal_handler(signal.SIGWINCH, self.resize)

    def forward_signal(self, sig: int) -> None:
        if self.pod and self.started.is_set():
            self.spawn(self.signal(sig))

    async def signal(self, sig: int) -> None:
        assert self.pod
        with contextlib.suppress(HCError):
            await self.pod.signal(CONTAINER, sig)

    def resize(self) -> None:
        if self.pty and self.pod:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.pty[1], termios.TIOCGWINSZ, b"\0" * 8))
            self.spawn(self.pod.resize(CONTAINER, rows, cols))

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            req = json.loads(line or b"{}")
            op = req.get("op")
            if op == "exec":
                await self.exec(req, reader, writer)
                return
            if op == "join":
                await self.join(req, reader, writer)
                return
            reply = await self.handle(op, req)
        except HCError as e:
            reply = {"ok": False, "error": e.message}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    async def handle(self, op: str | None, req: dict) -> dict:
        if op == "start":
            log.info("timing: start asked at %.3f s", since_start())
        try:
            await self.ready()  # the VM booting since create returned
        except HCError:
            if op not in ("start", "kill"):
                raise
            self.ended.set()  # start reports why; kill (delete --force) ends a container that never ran
            if op == "start":
                raise
            return {"ok": True}
        assert self.container
        if op == "start":
            if self.started.is_set():
                raise HCError("container already started")
            if self.unplugged and self.netns and nsenter.links(self.netns):
                await self.replug()
            assert self.pod
            t = time.monotonic()
            events = self.container.subscribe()  # before the process runs: no output is missed
            try:
                await self.pod.start_created(CONTAINER)
            except BaseException:
                self.container.unsubscribe(events)
                raise
            self.started.set()
            log.info("timing: started at %.3f s (NEW_CONTAINER %.3f s)", since_start(), time.monotonic() - t)
            self.resize()  # the size the client gave the terminal before start
            self.relay_task = asyncio.ensure_future(self.relay_init(events))
            self.state["status"] = "running"
            self.store.save(self.cid, self.state)
            return {"ok": True}
        if op == "kill":
            from ...pod.states import PodState

            if self.container.done.is_set() or (self.pod and self.pod.state not in (PodState.RUNNING,
                                                                                     PodState.PAUSED)):
                raise HCError("container not running")
            sig = int(req["signal"])
            if not self.started.is_set() or not self.pod:  # killing a created container: it never runs
                self.container.finish(128 + sig, "killed before start")
                return {"ok": True}
            await self.pod.signal(CONTAINER, sig)
            return {"ok": True}
        if op in ("pause", "resume"):
            if not self.pod:
                raise HCError(f"cannot {op} a container that is not running")
            await (self.pod.pause() if op == "pause" else self.pod.unpause())
            self.state["status"] = "paused" if op == "pause" else "running"
            self.store.save(self.cid, self.state)
            return {"ok": True}
        raise HCError(f"unknown request {op!r}")

    async def join(self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A container joining this sandbox's VM: created now; started by a START frame on this connection,
        which then carries its stdio, signals and exit status (the member's own shim relays them)."""
        from ...image.store import Image
        from ...pod.container import Container
        from ...spec.pod import ContainerSpec, Volume
        from ...storage.volumes import check_host_dir

        try:
            await self.ready()  # the sandbox's VM, booting since its create returned
        except HCError as e:
            writer.write(json.dumps({"ok": False, "error": e.message}).encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        assert self.pod
        image = Image(id="oci-bundle", refs=(), repo_digests=(), config={}, diff_ids=(), blobs=(), layers=(),
                      size=0, created="")
        try:
            cspec = ContainerSpec.model_validate(req["spec"])
            volumes = tuple(Volume.model_validate(v) for v in req.get("volumes", []))
            for v in volumes:
                if v.host_path:
                    check_host_dir(v.name, v.host_path)
            c = Container(cspec, image, stream=0, log_path=self.pod.statedir / "logs" / f"{cspec.name}.log",
                          fields=req["fields"], rootfs=Path(req["rootfs"]))
            await self.pod.add_container(c, start=False, volumes=volumes)
        except (HCError, ValueError, KeyError) as e:
            msg = e.message if isinstance(e, HCError) else f"bad join request: {e}"
            writer.write(json.dumps({"ok": False, "error": msg}).encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        writer.write(json.dumps({"ok": True}).encode() + b"\n")
        await writer.drain()
        first = await wire.read_frame(reader)
        if not first or first[0] != wire.START:
            if not c.started.is_set():
                c.finish(137, "its shim went away before start")
            return
        events = c.subscribe()
        t = time.monotonic()
        try:
            await self.pod.start_created(c.name)
            log.info("timing: member %s started (NEW_CONTAINER %.3f s)", c.name, time.monotonic() - t)
        except HCError as e:
            c.unsubscribe(events)
            writer.write(wire.frame(wire.ERROR, e.message.encode()))
            await writer.drain()
            return
        assert c.streams
        await relay_events(c, events, c.streams, reader, writer, self.pod)

    # ---- stdio -------------------------------------------------------------------------------------------
    async def relay_init(self, events: asyncio.Queue[Event]) -> None:
        """The container's output (as the pod core publishes it) to the shim's own fds or the pty's slave; the
        shim's stdin (or what is typed on the terminal) to the container."""
        assert self.container and self.container.streams
        out_fd, err_fd, in_fd = (self.pty[1],) * 3 if self.pty else (1, 2, 0)
        stdin = asyncio.ensure_future(pump_stdin(self.container.streams, in_fd, closes=not self.pty))
        try:
            while True:
                kind, data = await events.get()
                if kind not in ("stdout", "stderr"):
                    return
                await write_all(out_fd if kind == "stdout" else err_fd, data)  # type: ignore[arg-type]
        finally:
            stdin.cancel()

    async def exec(self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A process in the sandbox's own container or (`container`: runv exec into a member) in a container that
        joined this VM."""
        from pydantic import ValidationError

        assert self.pod
        p = req["process"]
        name = req.get("container") or CONTAINER
        user = p.get("user") or {}
        fields = {"arg": p["args"], "env": p.get("env") or [], "cwd": p.get("cwd") or "/",
                  "uid": user.get("uid", 0), "gid": user.get("gid", 0), "group": user.get("additionalGids") or []}
        try:
            # Its own capabilities and noNewPrivileges if the exec's process gives them, else the container's.
            inherit = self.pod.container(name).fields
            fields.update(oci.process_security(oci.Process.model_validate(p), inherit=inherit))
        except (ValidationError, HCError) as e:
            msg = e.message if isinstance(e, HCError) else f"exec process: {e.errors()[0]['msg']}"
            writer.write(json.dumps({"ok": False, "error": msg}).encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        try:
            streams = await self.pod.exec_fields(name, fields, tty=bool(p.get("terminal")))
        except HCError as e:
            writer.write(json.dumps({"ok": False, "error": e.message}).encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        writer.write(json.dumps({"ok": True}).encode() + b"\n")
        await writer.drain()
        await relay_socket(streams, reader, writer, self.pod)


async def pump_out(queue: asyncio.Queue, write) -> None:
    while (chunk := await queue.get()) is not None:
        await write(chunk)


async def pump_stdin(streams: ProcessStreams, fd: int, closes: bool) -> None:
    """Local input to a guest process; EOF closes its stdin (a terminal's never ends)."""
    async for data in read_chunks(fd):
        await streams.write_stdin(data)
    if closes:
        await streams.close_stdin()


async def relay_socket(streams: ProcessStreams, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       pod: Pod) -> None:
    """An exec's stdio as frames on the runv exec's connection."""

    async def send(kind: int, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(wire.frame(kind, data))
            await writer.drain()

    async def from_client() -> None:
        while (f := await wire.read_frame(reader)) is not None:
            kind, data = f
            if kind == wire.STDIN:
                if data:
                    await streams.write_stdin(data)
                else:
                    await streams.close_stdin()
            elif kind == wire.RESIZE and len(data) == 4:
                rows, cols = struct.unpack(">HH", data)
                await pod.resize_stream(streams.stream, rows, cols)
            elif kind == wire.SIGNAL and len(data) == 4:
                await pod.signal_stream(streams.stream, struct.unpack(">i", data)[0])

    async def hang_up() -> None:
        """The client (runv exec's process) went away before the exit (containerd kills it when an ExecSync times
        out): the guest process goes too."""
        await from_client()
        if not streams.exit.done():
            await pod.signal_stream(streams.stream, signal.SIGKILL)

    client = asyncio.ensure_future(hang_up())
    await asyncio.gather(pump_out(streams.stdout, lambda d: send(wire.STDOUT, d)),
                         pump_out(streams.stderr, lambda d: send(wire.STDERR, d)))
    status = await streams.exit
    await send(wire.EXIT, struct.pack(">i", status))
    # Half-close, then read the client out before closing: a unix socket closed with frames unread (a late stdin
    # EOF) resets the connection, and the client loses the exit status it had not read yet (it exits 255).
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    try:
        await asyncio.wait_for(client, CLIENT_LINGER)
    except (TimeoutError, HCError, OSError):
        client.cancel()
    with contextlib.suppress(ConnectionError):
        writer.close()


class Member(Shim):
    """A container joining its sandbox's VM (CRI annotations): no VM of its own; the sandbox's shim runs it and
    this shim relays its stdio, signals and exit status over one connection to the sandbox's shim."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.done = asyncio.Event()
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def begin_boot(self) -> None:
        """No VM of its own: created in the sandbox's already."""
        if self.ahead:
            release(self.ahead)
            self.ahead = None

    async def create(self, cfg: oci.Config | None = None) -> None:
        cfg = cfg or oci.load(self.bundle)
        for what in oci.unsupported(cfg):
            log.warning("not supported, ignored: %s", what)
        sandbox = sandbox_of(cfg)
        assert sandbox
        st = self.store.load(sandbox)
        if st["status"] not in ("created", "running"):
            raise HCError(f"sandbox {sandbox} is {st['status']}")
        root = oci.root_path(self.bundle, cfg)
        if not root.is_dir():
            raise HCError(f"root {root} is not a directory")
        check_command(cfg, root)
        cspec, volumes = container_parts(cfg, member_name(self.cid))
        reader, writer = await asyncio.open_unix_connection(str(self.store.sock(sandbox)))
        writer.write(json.dumps({"op": "join", "spec": cspec, "volumes": volumes, "fields": oci_fields(cfg),
                                 "rootfs": str(root)}).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await reader.readline() or b'{"ok": false, "error": "the sandbox shim went away"}')
        if not reply.get("ok"):
            writer.close()
            raise HCError(f"joining sandbox {sandbox}: {reply.get('error')}")
        self.conn = (reader, writer)
        if cfg.process and cfg.process.terminal:
            self.open_console(cfg)
        self.state = {"id": self.cid, "bundle": str(self.bundle), "rootfs": str(root), "status": "created",
                      **self.pids(), "created_rfc3339": now_rfc3339(), "annotations": cfg.annotations,
                      "sandbox": sandbox, "vm_pid": None, "vm_start": None}
        await self.join_cgroup(cfg)
        self.store.save(self.cid, self.state)
        self.begin_boot()

    def send(self, kind: int, data: bytes = b"") -> None:
        if self.conn:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.conn[1].write(wire.frame(kind, data))

    async def handle(self, op: str | None, req: dict) -> dict:
        if op == "start":
            if self.started.is_set():
                raise HCError("container already started")
            self.send(wire.START)
            self.started.set()
            self.resize()
            self.relay_task = asyncio.ensure_future(self.relay())
            self.state["status"] = "running"
            self.store.save(self.cid, self.state)
            return {"ok": True}
        if op == "kill":
            if self.done.is_set():
                raise HCError("container not running")
            sig = int(req["signal"])
            if not self.started.is_set():  # never started: the sandbox drops it when we hang up
                self.exit_code = 128 + sig
                self.done.set()
            else:
                self.send(wire.SIGNAL, struct.pack(">i", sig))
            return {"ok": True}
        raise HCError(f"{op}: a container in a sandbox's VM is paused and resumed with its sandbox")

    def forward_signal(self, sig: int) -> None:
        if self.started.is_set():
            self.send(wire.SIGNAL, struct.pack(">i", sig))

    def resize(self) -> None:
        if self.pty:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.pty[1], termios.TIOCGWINSZ, b"\0" * 8))
            self.send(wire.RESIZE, struct.pack(">HH", rows, cols))

    async def relay(self) -> None:
        assert self.conn
        reader = self.conn[0]
        out_fd, err_fd, in_fd = (self.pty[1],) * 3 if self.pty else (1, 2, 0)

        async def pump_in() -> None:
            async for data in read_chunks(in_fd):
                self.send(wire.STDIN, data)
            if not self.pty:
                self.send(wire.STDIN, b"")

        stdin = asyncio.ensure_future(pump_in())
        try:
            while (f := await wire.read_frame(reader)) is not None:
                kind, data = f
                if kind in (wire.STDOUT, wire.STDERR):
                    await write_all(out_fd if kind == wire.STDOUT else err_fd, data)
                elif kind == wire.EXIT and len(data) == 4:
                    self.exit_code = struct.unpack(">i", data)[0]
                    return
                elif kind == wire.OOM:
                    await self.record_oom()
                elif kind == wire.ERROR:
                    log.error("start failed: %s", data.decode(errors="replace"))
                    self.exit_code = 128
                    return
        finally:
            stdin.cancel()
            self.done.set()

    async def serve(self) -> int:
        self.install_signal_handlers()
        try:
            await self.done.wait()
        finally:
            if self.conn:
                self.conn[1].close()
            self.stopped()
        return self.exit_code


async def relay_events(c: Container, events: asyncio.Queue[Event], streams: ProcessStreams,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pod: Pod) -> None:
    """A member container's output events as frames; the member shim's frames (stdin, signals, size) to it."""

    async def from_member() -> None:
        while (f := await wire.read_frame(reader)) is not None:
            kind, data = f
            if kind == wire.STDIN:
                await (streams.write_stdin(data) if data else streams.close_stdin())
            elif kind == wire.SIGNAL and len(data) == 4:
                with contextlib.suppress(HCError):
                    await pod.signal(c.name, struct.unpack(">i", data)[0])
            elif kind == wire.RESIZE and len(data) == 4:
                await pod.resize(c.name, *struct.unpack(">HH", data))

    member = asyncio.ensure_future(from_member())
    try:
        while True:
            kind, data = await events.get()
            if kind in ("stdout", "stderr"):
                writer.write(wire.frame(wire.STDOUT if kind == "stdout" else wire.STDERR, data))  # type: ignore[arg-type]
                await writer.drain()
                continue
            code = data if kind == "exit" else 255
            if c.oom_killed:
                writer.write(wire.frame(wire.OOM))
            writer.write(wire.frame(wire.EXIT, struct.pack(">i", code)))
            await writer.drain()
            return
    except ConnectionError:
        with contextlib.suppress(HCError):
            await pod.signal(c.name, signal.SIGKILL)
    finally:
        member.cancel()
        c.unsubscribe(events)


def config_of(bundle: Path) -> oci.Config | None:
    """The bundle's config, read once before create() (None: create() reads it again and reports the error)."""
    try:
        return oci.load(bundle)
    except HCError:
        return None


def wants_network_namespace(cfg: oci.Config | None) -> bool:
    """Whether the config asks for a network namespace of the container's own (and the container has a VM of its
    own): the process whose pid stands for the container's makes it (hooks and CNI callers find it at
    /proc/PID/ns/net), the shim itself (new_network_namespace()) or a warm shim's stand-in."""
    return cfg is not None and sandbox_of(cfg) is None and oci.network_namespace(cfg)[0] == "new"


def new_network_namespace(cfg: oci.Config | None) -> int | None:
    """The shim moves into the container's network namespace if it wants one: an fd of the host's (hooks run
    there), or None."""
    return nsenter.unshare_net() if wants_network_namespace(cfg) else None


async def amain(args: argparse.Namespace, cfg: oci.Config | None, host_netns: int | None,
                report: Callable[[str], None], standin: StandInLink | None = None,
                ahead: tuple[dict, list[int]] | None = None) -> NoReturn:
    """The shim's life: create (reported as "ok" or "error MSG"), then the boot and serving until the container is
    done; the process exits with its exit code. `standin`: a warm shim's, whose process stands for the container's."""
    store = Store(Path(args.root))
    joins = cfg is not None and sandbox_of(cfg) is not None
    shim = (Member if joins else Shim)(store, args.id, Path(args.bundle),
                                       Path(args.console_socket) if args.console_socket else None)
    shim.host_netns = host_netns
    if standin:
        shim.pid = standin.pid
    shim.ahead = ahead
    store.rundir(args.id).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        await shim.create(cfg)
        await shim.listen()
    except BaseException as e:
        await shim.abandon_boot()
        msg = await undone(shim, e, "create failed")
        with contextlib.suppress(OSError):
            report(f"error {msg}")
        finish(1)
    report("ok")  # runv create returns: the engine's work overlaps the VM's boot (begun in create())
    if standin:
        standin.follow(shim)
        shim.exited = standin.exited
    finish(await shim.serve())


class StandInLink:
    """A warm shim's end of the socket to its stand-in, the process `runv create` left to stand for the container
    (its pid is the container's: engines wait for it): the signals the stand-in gets come here as "signal N"
    messages, the exit code goes back to it; if it is killed, so is the container."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock, self.pid = sock, pid

    def follow(self, shim: Shim) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)

        def readable() -> None:
            try:
                msg = self.sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if msg.startswith(b"signal ") and msg[7:].isdigit():
                shim.forward_signal(int(msg[7:]))
            elif not msg:  # killed: so is the container (or the one never started is done)
                loop.remove_reader(self.sock.fileno())
                log.info("the stand-in (pid %d) is gone: the container is killed", self.pid)
                shim.spawn(kill_quietly(shim))

        loop.add_reader(self.sock.fileno(), readable)

    def exited(self, code: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.send(f"exit {code}".encode())


async def kill_quietly(shim: Shim) -> None:
    with contextlib.suppress(HCError):
        await shim.handle("kill", {"signal": signal.SIGKILL})


def finish(code: int) -> NoReturn:
    """The container's exit is the engine's cue (conmon and containerd's shim wait for this pid): the VM is gone, the
    state written, the log flushed; the event loop's and the interpreter's teardown (tens of ms) is skipped."""
    logging.shutdown()
    os._exit(code)


WARM_IMPORTS = ("guest.assets", "image.store", "network.manager", "pod.container", "pod.pod", "pod.pool",
                "pod.states", "pod.templates", "protocol.agent", "protocol.client", "spec.pod", "spec.seccomp",
                "storage.volumes", "vm.accel", "vm.machine", "vm.qemu", "vm.uids")


def warm(fd: int, root: str) -> NoReturn:
    """A shim the factory (factory.py) started ahead, its imports done: it reports "ready" on the socket `fd`, then
    waits for the `runv create` the factory hands that socket to. That sends the container (id, bundle, console
    socket, log, the caller's HYPERCONTAINER_* settings and its stand-in's pid) and its stdio as SCM_RIGHTS; the
    shim answers as a started one does on its status pipe, then serves. Settings other than its own: "refused" (the
    caller starts a shim of its own)."""
    import importlib

    for name in WARM_IMPORTS:  # what create(), prepare() and boot() import when they first run
        importlib.import_module(f"hypercontainer.{name}")
    from ...spec import seccomp

    keep_compiled_filters()
    seccomp.compile_filter({"defaultAction": "SCMP_ACT_ALLOW"})  # libseccomp loaded

    sock = socket.socket(fileno=fd)
    sock.sendall(b"ready")
    ahead = None  # the factory lends a VM first (factory.WarmShims.hand_out), then runv create sends its container
    try:
        while True:
            msg, fds, _, _ = socket.recv_fds(sock, 65536, 3)
            req = json.loads(msg or b"null")
            if ahead or not isinstance(req, dict) or "rundir" not in req or len(fds) != 2:
                break
            ahead = (req, list(fds))
    except (OSError, ValueError):
        os._exit(0)
    if not isinstance(req, dict) or len(fds) != 3:  # the factory is gone, or a caller that is not runv create
        os._exit(0)
    if req.get("env") != own_settings():
        sock.sendall(b"refused")
        os._exit(0)
    cfg = config_of(Path(req["bundle"]))
    if wants_network_namespace(cfg):
        sock.sendall(b"netns")
        said = sock.recv(4096).decode(errors="replace")
        if said != "netns ok":
            sock.sendall(f"error a network namespace for the container: {said.removeprefix('netns error ')}"
                         .encode())
            os._exit(1)
    ASSIGNED.append(time.clock_gettime(time.CLOCK_BOOTTIME))
    for i, f in enumerate(fds):
        os.dup2(f, i)
        os.close(f)
    logging.basicConfig(filename=req["log"], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = argparse.Namespace(root=root, id=req["id"], bundle=req["bundle"], console_socket=req.get("console_socket"))
    standin = StandInLink(sock, int(req["pid"]))
    asyncio.run(amain(args, cfg, None, lambda m: sock.sendall(m.encode()), standin, ahead))
    raise AssertionError("amain() returned")


def keep_compiled_filters() -> None:
    """Seccomp filters compiled by one shim serve the next (the engine's default profile: ~15 ms of each create)."""
    from ...spec import seccomp

    seccomp.keep_compiled(environment().paths.run / "runv" / "seccomp")


def own_settings() -> dict[str, str]:
    """The HYPERCONTAINER_* environment: a warm shim serves only a `runv create` with the same."""
    return {k: v for k, v in os.environ.items() if k.startswith("HYPERCONTAINER_")}


def main() -> None:
    ap = argparse.ArgumentParser(prog="runv-shim")
    ap.add_argument("--root", required=True)
    ap.add_argument("--warm-fd", type=int)
    ap.add_argument("--id")
    ap.add_argument("--bundle")
    ap.add_argument("--console-socket")
    ap.add_argument("--status-fd", type=int)
    ap.add_argument("--log")
    args = ap.parse_args()
    if args.warm_fd is not None:
        warm(args.warm_fd, args.root)
    if None in (args.id, args.bundle, args.status_fd, args.log):
        ap.error("--id, --bundle, --status-fd and --log are required")
    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_compiled_filters()
    try:
        # The share's mounts are no mount points on the host (storage/mountns.py): in the factory's namespace if this
        # root has one running (its VMs' shares are there: factory.py), else in one of the shim's own.
        if not mountns.join(factory.pin_dir(Path(args.root))):
            mountns.leave_host()
    except OSError as e:
        os.write(args.status_fd, f"error a mount namespace for the shim: {e.strerror}\n".encode())
        sys.exit(1)
    try:
        cfg = config_of(Path(args.bundle))
        host_netns = new_network_namespace(cfg)
    except OSError as e:
        os.write(args.status_fd, f"error a network namespace for the container: {e.strerror}\n".encode())
        sys.exit(1)

    def report(msg: str) -> None:
        os.write(args.status_fd, f"{msg}\n".encode())
        if msg == "ok":
            os.close(args.status_fd)

    asyncio.run(amain(args, cfg, host_netns, report))


if __name__ == "__main__":
    main()
