"""A pod: one VM, its share, its containers. `start()` is the one builder; it reads top to bottom.

    rootfs overlays -> share daemon -> QEMU -> agent handshake -> START_POD -> one NEW_CONTAINER each

Whatever fails, `teardown()` undoes every step that ran: no QEMU, virtiofsd, socket or mount is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import faults, procs
from ..errors import CommandNotRunnable, Conflict, HCError, InvalidArgument, NotFound, VMError
from ..network.manager import Attachment, Network
from ..protocol.agent import (
    Agent,
    AgentRequestError,
    ContainerRequest,
    ContainerStats,
    ExecRequest,
    PodRequest,
    PortStream,
    net_if,
    net_route,
)
from ..protocol.client import ProcessStreams
from ..protocol.codec import Fields, MountFlag
from ..spec.pod import PodSpec, Volume
from ..storage.disk import mount_pod_disk, unmount_pod_disk
from ..storage.safefs import make_dirs, write_file
from ..storage.share import PodShare
from ..storage.sharetree import VOLUME_DIRS, ShareTree
from ..storage.volumes import remove_tree
from ..vm.machine import Machine
from ..vm.qemu import Disk, HostForward, Nic, Share, Sockets, VMConfig
from .container import Container, process_fields, with_overrides
from .records import PodInfo
from .slot import SlotSource
from .sources import (
    CLONE_HANDSHAKE,
    Booted,
    BootPlan,
    ColdSource,
    Parts,
    Placement,
    PoolSource,
    TemplateSource,
    VMSource,
    guarded,
)
from .states import PodState, check
from .templates import Template, Templates, vm_config
from .users import resolve

log = logging.getLogger(__name__)
TAKEOVER_ATTEMPTS, TAKEOVER_HANDSHAKE = 4, 5.0
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX = 0.1, 10.0
EVENT_NAMES = {(PodState.CREATED, PodState.STARTING): "start", (PodState.STARTING, PodState.RUNNING): "running",
               (PodState.RUNNING, PodState.PAUSED): "pause", (PodState.PAUSED, PodState.RUNNING): "unpause",
               (PodState.STOPPING, PodState.EXITED): "die", (PodState.STARTING, PodState.FAILED): "fail"}
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"


@dataclass(frozen=True)
class GuestAssets:
    kernel: Path
    initrd: Path
    accel: str


@dataclass(frozen=True)
class HostUsage:
    """What the host counts for a pod's VM at `timestamp` (ns since the epoch)."""

    timestamp: int
    cpu_ns: int  # CPU time used, user + system
    memory: int  # resident bytes


@dataclass
class Timings:
    """Seconds from the start request: the boot breakdown reported by inspect, info and the benchmark."""

    t0: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self.t0, 4)


def _proc_usage(pid: int) -> tuple[int, int] | None:
    """(CPU ns user + system, resident bytes) of a process, from /proc/PID/stat; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) * tick_ns, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def block_serial(index: int) -> str:
    return f"hcvol{index}"


def resolv_conf(spec: PodSpec, net: Attachment | None) -> str | None:
    """The pod's own settings, else its network's resolvers; None (the image's file stays) without either."""
    if not (spec.dns or spec.dns_search or spec.dns_options or net):
        return None
    lines = [f"nameserver {ip}" for ip in (spec.dns or (net.dns if net else []))]
    if spec.dns_search:
        lines.append("search " + " ".join(spec.dns_search))
    if spec.dns_options:
        lines.append("options " + " ".join(spec.dns_options))
    return "\n".join(lines) + "\n"


class Pod:
    def __init__(self, pod_id: str, name: str, spec: PodSpec, containers: list[Container],
                 statedir: Path, rundir: Path, assets: GuestAssets, network: Network | None = None,
                 templates: Templates | None = None, boot: str = "cold", pool: SlotSource | None = None,
                 storage_size: int = 0) -> None:
        self.id, self.name, self.spec = pod_id, name, spec
        self.containers = containers
        self.statedir, self.rundir, self.assets = statedir, rundir, assets
        self.state = PodState.CREATED
        self.hostname = spec.hostname or pod_id[:12]
        self.machine: Machine | None = None
        self.share: PodShare | None = None
        self.agent: Agent | None = None
        self.network = network
        self.net: Attachment | None = None
        self.templates = templates
        self.boot = boot  # the policy: cold | template | pool
        self.pool = pool
        self.storage_size = storage_size  # bytes of the pod's own disk for its writable layers; 0: no limit
        self._share_dir: Path | None = None  # a pool VM's share directory (its QEMU serves that one)
        self._tree: ShareTree | None = None
        self.parts = Parts()  # the classes VMs are built from (unit tests give fakes)
        self._undo = contextlib.AsyncExitStack()  # what the start made, undone by teardown()
        self.booted_from: str | None = None  # what this start used: cold, or the template's key
        self.timings = Timings()
        self.error: str | None = None
        self.exit_code: int | None = None
        self.created = time.time()
        self.finished: float | None = None
        self._relays: list[asyncio.Task[None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._stream_seq = 0
        self._generation = 0  # of the agent sockets: one more for each hyperd that took the pod over
        self._stopping = False
        self._failed = False  # the agent broke the protocol or stopped answering, or virtiofsd died: FAILED
        self._start_containers = True
        self._supervisors: set[asyncio.Future[None]] = set()
        self._wake = asyncio.Event()  # the watch looks again: a container was added or removed
        self._removing: set[str] = set()  # containers on their way out: never restarted
        self._lock = asyncio.Lock()
        self.on_change: list[Callable[[Pod], None]] = []  # e.g. persisting the record
        self.on_event: list[Callable[[Pod, str, dict[str, object]], None]] = []  # hyperctl events
        self.execs: list[dict[str, Any]] = []  # detached execs (exec -d): id, command, exit_code, running
        self._exec_tasks: set[asyncio.Task[None]] = set()
        # What the layer that made the pod keeps with it (the CRI: ids, metadata, labels, annotations), persisted
        # with the pod's record and read back with it; the pod core never looks inside.
        self.meta: dict[str, Any] = {}

    @property
    def tenant(self) -> str | None:
        """The tenant that owns the pod (daemon/tenants.py); None: the administrator's."""
        t = self.meta.get("tenant")
        return str(t) if t else None

    @property
    def share_dir(self) -> Path:
        return self._share_dir or self.statedir / "share"

    @property
    def tree(self) -> ShareTree:
        """What hyperd mounts under the share (made when the share is known: a pool VM brings its own)."""
        if self._tree is None or self._tree.root != self.share_dir:
            self._tree = ShareTree(self.share_dir)
        return self._tree

    def _set(self, state: PodState) -> None:
        check(self.state, state, self.id[:12])
        before, self.state = self.state, state
        extra = {"boot": self.booted_from, "timings": dict(self.timings.marks)} if before == PodState.STARTING else {}
        self.emit(EVENT_NAMES.get((before, state), state.value), exit_code=self.exit_code, **extra)
        for cb in self.on_change:
            cb(self)

    def container(self, name: str | None) -> Container:
        if name is None:
            if not self.containers:
                raise NotFound(f"pod {self.name} has no container")
            return self.containers[0]
        for c in self.containers:
            if c.name == name:
                return c
        raise HCError(f"pod {self.name} has no container {name}")

    # ---- the builder -------------------------------------------------------------------------------------
    async def start(self, start_containers: bool = True) -> None:
        """Boots the VM and starts every container (or, without start_containers, boots the VM and leaves the
        containers created: runv's create; start_created() starts one). On failure everything is undone and the
        error raised."""
        self._start_containers = start_containers
        self.timings = Timings()
        faults.track(self._fault_pids)
        rundir, share_dir = self.rundir, self._share_dir
        try:
            self._set(PodState.STARTING)  # recording it may fail (a full disk): undone as any other step
            try:
                await self._build()
            except VMError as e:
                if self.booted_from in (None, "cold"):
                    raise
                # the clone's console goes with its directory: its last lines say what the guest was doing
                tail = self.machine.console_tail(15).strip() if self.machine else ""
                log.warning("pod %s: start from template %s failed (%s); booting cold%s", self.name, self.booted_from,
                            e.message, f"; the guest's console ended:\n{tail}" if tail else "")
                self.emit("template-fallback", reason=e.message)
                await self.teardown()
                self.rundir, self._share_dir = rundir, share_dir  # a pool VM's directories were its own: gone
                self.boot = "cold"
                self.timings = Timings()
                await self._build()
        except BaseException as e:
            self.error = e.message if isinstance(e, HCError) else f"{type(e).__name__}: {e}"
            for c in self.containers:
                c.finish(e.exit_code if isinstance(e, CommandNotRunnable) else 125, self.error)
            await self.teardown()
            self.exit_code = self.containers[0].exit_code if self.containers else 0
            self._set(PodState.FAILED)
            raise
        self._set(PodState.RUNNING)
        self._watcher = asyncio.create_task(self._watch())

    async def _build(self) -> None:
        """The one builder, top to bottom; each resource's undo is registered on one exit stack as soon as the
        resource exists, and the stack is kept for teardown() once the pod runs."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(lambda: remove_tree(self.rundir))  # last of all; a pool VM's directory becomes ours
            source = self._source()
            place = source.placement(Placement(self.rundir, self.statedir / "share"), stack)
            self.rundir, self._share_dir = place.rundir, place.share_dir
            self.booted_from = source.origin
            self.rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.network:
                stack.push_async_callback(self.network.detach, self.id)
                self.net = await self.network.attach(self.id, self.spec, tap=place.tap, owner=self.tenant)
                self.timings.mark("network")
                faults.point("network")
                source = self._one_nic_or_cold(source)
            stack.callback(unmount_pod_disk, self.statedir / "containers")
            stack.callback(self.tree.release)
            self.tree.prepare()
            await self._ensure_disk(self.containers)
            fields = [self._prepare_container(c) for c in self.containers]
            self.timings.mark("rootfs")
            faults.point("rootfs")
            plan = BootPlan(Sockets(self.rundir, logdir=self.statedir), self.share_dir, self._vm_config,
                            max(self._stream_seq, 2 * len(self.containers)), self._spawned, self.timings.mark)
            booted = await source.boot(plan, stack)
            self.machine, self.agent, self.share = booted.machine, booted.agent, booted.daemon
            self.timings.mark("agent")
            faults.point("agent")
            if self.agent.guest_uptime is not None:
                self.timings.marks["guest_uptime_at_agent"] = self.agent.guest_uptime
            await self._start_pod(booted)
            self.timings.mark("start_pod")
            faults.point("start-pod")
            if self._start_containers:
                for c, f in zip(self.containers, fields, strict=True):
                    await self._start_container(c, f)
                    faults.point("container")
                self.timings.mark("started")
            self._undo = stack.pop_all()
        if self.pool and (isinstance(source, PoolSource) or self.boot == "pool"):
            self.pool.fill()

    def _source(self) -> VMSource:
        """A pool VM if the policy says so and one of this pod's shape is ready, else a template if the policy
        allows one and it is built (it is then built in the background), else a cold boot. Pods with block
        volumes always boot cold (disks are not in templates)."""
        if self.boot == "pool" and self.pool and self.tenant is None and (slot := self.pool.take(self.spec)):
            return PoolSource(slot)
        if self.boot in ("template", "pool") and self.templates and not self._block_volumes():
            nic = self.network.provider_for(self.spec).nic if self.network else False
            if template := self.templates.ready(self.spec.resources.vcpu, self.spec.resources.memory, nic):
                return TemplateSource(template, self.parts)
        return ColdSource(self.parts)

    def _one_nic_or_cold(self, source: VMSource) -> VMSource:
        """A template VM (a clone's, the pool's) has one NIC and microvm has no hotplug; how many the pod needs is
        known only once its network is attached (a namespace's interfaces), after the source was chosen. A clone
        is not started yet: the pod boots cold instead, in the same place. A pool VM runs already: VMError, and
        start() boots the pod cold (template-fallback)."""
        if not self.net or len(self.net.nics()) <= 1 or isinstance(source, ColdSource):
            return source
        if isinstance(source, PoolSource):
            raise VMError(f"a pool VM has one NIC; pod {self.name} needs {len(self.net.nics())}")
        log.info("pod %s: %d NICs, a template VM has one: booting cold", self.name, len(self.net.nics()))
        cold = ColdSource(self.parts)
        self.booted_from = cold.origin
        return cold

    def _net_fields(self) -> dict[str, object]:
        """START_POD's net_if and net_route entries: every NIC of the attachment (the VM's, in order) with its
        addresses and MTU, and every route (a route that names no NIC is the first one's)."""
        if not self.net:
            return {}
        nics = self.net.nics()
        try:
            return {"net_if": [net_if(n.mac, n.addresses, n.mtu) for n in nics],
                    "net_route": [net_route(r.dst, r.via, r.mac or nics[0].mac) for r in self.net.guest_routes()]}
        except ValueError as e:
            raise InvalidArgument(f"pod {self.name}: its network cannot be given to the guest: {e}") from None

    async def _start_pod(self, booted: Booted) -> None:
        """START_POD: hostname, network, and the share to mount (a pool VM has its own mounted already); a clone
        gets its own clock and, unless the pool reseeded it, its own random seed."""
        assert self.agent and self.machine
        req: dict[str, object] = {"hostname": self.hostname, **self._net_fields()}
        if not booted.prepared:
            req.update(share=booted.share.tag, sharefs=booted.share.kind)
        if booted.clone:
            req["clock_ns"] = time.time_ns()
            if not booted.prepared:
                req["seed"] = os.urandom(32).hex()
        try:
            await asyncio.wait_for(guarded(self.machine, self.agent.start_pod(PodRequest.from_fields(req))),
                                   CLONE_HANDSHAKE if booted.clone else None)
        except TimeoutError:
            raise VMError("the guest restored from the template did not answer START_POD") from None

    def _fault_pids(self) -> dict[str, int | None]:
        """Its processes, for a test's crash point (faults.py)."""
        vm, fs = self.machine.proc if self.machine else None, self.share.proc if self.share else None
        return {"qemu": vm.pid if vm else None, "virtiofsd": fs.pid if fs else None}

    def _spawned(self, machine: Machine | None, share: PodShare | None) -> None:
        """QEMU or virtiofsd exists: the pod's record gets it before it runs anything (a hyperd that dies now
        leaves its successor what to kill)."""
        self.machine, self.share = machine or self.machine, share or self.share
        self.changed()
        if machine:
            faults.point("qemu")

    def _vm_config(self, sockets: Sockets, share: Share, template: Template | None) -> VMConfig:
        """A clone's VM is the template's device set; a cold one gets the pod's share, disks and NIC."""
        res, a = self.spec.resources, self.assets
        nics = self._nics()
        if template:
            assert len(nics) <= 1, "a template VM has one NIC (_one_nic_or_cold)"
            return vm_config(a.kernel, a.initrd, a.accel, sockets, res.vcpu, res.memory, self.share_dir,
                             nics[0] if nics else False, template, building=False)
        disks = tuple(Disk(Path(v.block), block_serial(i)) for i, v in enumerate(self._block_volumes()) if v.block)
        return VMConfig(a.kernel, a.initrd, sockets, accel=a.accel,  # type: ignore[arg-type]
                        cpus=res.vcpu, memory_mib=res.memory, share=share, disks=disks, nics=nics)

    async def _ensure_disk(self, containers: list[Container]) -> None:
        """The pod's own disk for its containers' writable layers (with a size limit), mounted once."""
        target = self.statedir / "containers"
        if self.storage_size and any(not c.rootfs for c in containers) and not target.is_mount():
            await mount_pod_disk(self.statedir / "disk.img", target, self.storage_size,
                                 blanks=self.statedir.parent / ".disks")
            self.timings.mark("disk")

    def _prepare_container(self, c: Container) -> Fields:
        """The container's root under the pod share (its image layers as an overlay, or (runv) the bundle's root
        bound in), its volumes, mount points and files; returns its process fields."""
        base = self.statedir / "containers" / c.name
        if not c.root_dir:  # a name used before in this pod gets a fresh directory: the guest may still cache the old
            names = itertools.chain([c.name], (f"{c.name}@{i}" for i in itertools.count(1)))
            c.root_dir = next(d for d in names if not os.path.lexists(self.share_dir / d))
        try:
            root = self.tree.container_root(c.root_dir, rootfs=c.rootfs) if c.rootfs else self.tree.container_root(
                c.root_dir, layers=list(c.image.layers), upper=base / "upper", work=base / "work")
        except ValueError as e:  # the image: too many layers for one overlay
            raise InvalidArgument(f"container {c.name}: {e}") from None
        except OSError as e:  # ELOOP, ENOTDIR: something the guest put in its share
            raise Conflict(f"container {c.name}: cannot mount its root in the pod share: {e.strerror}") from None
        try:
            if not c.fields:  # runv gives them from the OCI process
                c.fields = with_overrides(process_fields(c.spec, c.image, root, self.hostname), c.overrides)
            c.mounts = self._prepare_mounts(c, root)
        finally:
            os.close(root)
        return c.fields

    def _nics(self) -> tuple[Nic, ...]:
        """The VM's NICs, one per interface of the attachment, in order: a tap (in the attachment's namespace), or
        QEMU's user-mode stack, whose first NIC forwards the published ports."""
        if not self.net:
            return ()
        fwd = tuple(HostForward(p.protocol, p.host_ip, p.host_port, p.container_port) for p in self.net.ports)
        return tuple(Nic(i.mac, tap=i.tap, netns=self.net.netns if i.tap else None,
                         forwards=fwd if k == 0 and not i.tap else ()) for k, i in enumerate(self.net.nics()))

    def _block_volumes(self) -> list[Volume]:
        return [v for v in self.spec.volumes if v.block]

    def _prepare_mounts(self, c: Container, root: int) -> Fields:
        """Mount points and files made on the host in the container's root (never through its symlinks); the
        mount fields the agent needs."""
        kinds = {v.name: v for v in self.spec.volumes}
        src, dst, flags = [], [], []
        blocks = [v.name for v in self._block_volumes()]
        try:
            for m in c.spec.volumes:
                make_dirs(root, m.path)
                vol = kinds[m.name]
                if vol.block:
                    src.append(f"{block_serial(blocks.index(vol.name))}:{vol.fstype}")
                    kind = MountFlag.BLOCK
                elif vol.host_path:
                    src.append(self.tree.volume(vol.name, Path(vol.host_path), m.readonly, m.recursive_readonly))
                    kind = MountFlag(0)
                else:
                    src.append(vol.name)
                    kind = MountFlag.TMPFS
                dst.append(m.path)
                # The guest sees a shared host directory as one file system: a read-only bind there would cover the
                # mounts below too, so a non-recursive one is enforced on the host alone.
                guest_ro = m.readonly and (m.recursive_readonly or not vol.host_path)
                flags.append(int((MountFlag.READONLY if guest_ro else MountFlag(0)) | kind))
            injected = {f.path for f in c.spec.files}
            address = self.net.address if self.net else "127.0.1.1"
            generated = [("/etc/hostname", f"{self.hostname}\n"),
                         ("/etc/hosts", HOSTS.format(address=address, hostname=self.hostname)
                          + "".join(f"{h.ip}\t{h.hostname}\n" for h in self.spec.hosts))]
            resolv = resolv_conf(self.spec, self.net)
            if resolv is not None:
                generated.append(("/etc/resolv.conf", resolv))
            if c.rootfs:  # someone else's root (an OCI bundle): its /etc is theirs; only what they asked for
                generated = []
            for path, data in generated:
                if path not in injected:
                    write_file(root, path, data.encode(), 0o644, 0, 0)
            for f in c.spec.files:
                write_file(root, f.path, f.data(), f.mode, f.uid, f.gid)
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"container {c.name}: cannot prepare a volume mount point or file: {e}") from None
        return {"mount_src": src, "mount_dst": dst, "mount_flags": flags,
                "sysctl": [f"{k}={v}" for k, v in c.spec.sysctls.items()]}

    async def _start_container(self, c: Container, fields: Fields, hold: bool = False) -> None:
        """NEW_CONTAINER; with `hold`, the process is set up and waits (c.held), and a second call lets it run."""
        assert self.agent and self.machine
        if c.held:
            c.held = False
            try:
                await guarded(self.machine, self.agent.start_container(c.name))
            except BaseException:  # as a NEW_CONTAINER that failed: not started, its stream given up (it exits 127)
                self.agent.detach(c.stream)
                c.streams = None
                raise
        else:
            req = ContainerRequest.from_fields({**fields, **c.mounts, "rootfs": c.root_dir or c.name,
                                                **({"hold": 1} if hold else {})}, id=c.name, stream=c.stream)
            c.streams = streams = await guarded(self.machine, self.agent.new_container(req))
            c.pid = streams.pid
            if hold:
                c.held = True
                return
        c.started_at = time.time()
        c.started.set()
        self._relays.append(asyncio.create_task(c.relay()))

    # ---- handing over between daemons ---------------------------------------------------------------------
    async def reattach(self, vm: procs.Adopted, share: procs.Adopted | None, saved_net: dict[str, Any] | None) -> None:
        """Takes over a pod an earlier hyperd left running: its QEMU and virtiofsd, the agent's sockets, the
        streams of its running containers (output the guest held back meanwhile arrives now)."""
        old = Sockets(self.rundir, logdir=self.statedir, generation=self._generation)
        self.machine = Machine(VMConfig(self.assets.kernel, self.assets.initrd, old))
        self.machine.proc = vm  # type: ignore[assignment]
        self.share = PodShare(self.share_dir, self.rundir)
        self.share.proc = share  # type: ignore[assignment]
        # What teardown() undoes, as a start would have registered it (the agent is closed by each attempt below
        # or, once connected, by teardown through self.agent).
        undo = contextlib.AsyncExitStack()
        undo.callback(remove_tree, self.rundir)
        if self.network:
            undo.push_async_callback(self.network.detach, self.id)
        undo.callback(unmount_pod_disk, self.statedir / "containers")
        undo.callback(self.tree.release)
        undo.push_async_callback(self.share.stop)
        undo.push_async_callback(self._close_agent)
        undo.push_async_callback(self.machine.stop, 0)
        self._undo = undo
        if self.network and saved_net:
            self.net = self.network.adopt(self.id, saved_net)
        running = [c for c in self.containers if c.started.is_set() and not c.done.is_set()]
        for attempt in range(1, TAKEOVER_ATTEMPTS + 1):
            # Each attempt on fresh sockets (chardev-change drops whatever QEMU still holds): now and then the
            # guest misses the first reconnection and never sees our VERSION.
            self._generation += 1
            sockets = Sockets(self.rundir, logdir=self.statedir, generation=self._generation)
            await self.machine.new_agent_sockets(sockets)
            self.agent = Agent.at(sockets.ctl, sockets.io)
            self.agent.max_stream = self._stream_seq
            self.agent.takeover = True
            for c in running:
                c.streams = self.agent.attach(c.stream, bool(c.spec.tty))
            try:
                await self.agent.connect(timeout=5)
                await guarded(self.machine, self.agent.handshake(TAKEOVER_HANDSHAKE))
                await guarded(self.machine, self.agent.io_ping(TAKEOVER_HANDSHAKE))
                break
            except VMError as e:
                await self.agent.close()
                log.info("pod %s: take-over attempt %d: %s", self.name, attempt, e.message)
                if attempt == TAKEOVER_ATTEMPTS:
                    raise
        for c in running:
            self._relays.append(asyncio.create_task(c.relay()))
        self.state = PodState.RUNNING
        self._watcher = asyncio.create_task(self._watch())

    async def _close_agent(self) -> None:
        if self.agent:
            await self.agent.close()

    async def detach(self) -> None:
        """Lets go of a running pod (hyperd is stopping; the next one takes it over): nothing is stopped."""
        if self._watcher:
            self._watcher.cancel()
        for t in [*self._relays, *self._supervisors]:  # the next hyperd watches the containers
            t.cancel()
        if self.agent:
            await self.agent.close()
        self.changed()

    # ---- running -----------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Each container under its restart policy; the pod stops when its VM dies, or when no container is left
        running unless the pod is kept alive (a sandbox: containers come and go). Containers added to the running
        pod join the watch."""
        self._supervisors = {asyncio.ensure_future(self._supervise(c)) for c in self.containers}
        died = asyncio.ensure_future(self.machine.wait()) if self.machine and self.machine.proc else None
        fs_died = asyncio.ensure_future(self.share.proc.wait()) if self.share and self.share.proc else None
        lost = self.agent.lost if self.agent else None
        try:
            while True:
                pending = {t for t in self._supervisors if not t.done()}
                if not pending and not self.spec.keep_alive:
                    break
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                watched: set[asyncio.Future[Any]] = {*pending, wake, *(f for f in (died, fs_died, lost) if f)}
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if done & {died, fs_died, lost}:
                    break
            if lost and lost.done() and not (fs_died and fs_died.done()):
                await self._agent_lost(lost.result(), died)  # (waits a moment for the VM's own end)
            if died and died.done():  # first: virtiofsd ends with its VM
                self._vmm_died("the VM (QEMU)", died.result(), fails=False)
            elif fs_died and fs_died.done():
                self._vmm_died("the pod's file server (virtiofsd)", fs_died.result(), fails=True)
        finally:
            for f in (died, fs_died):
                if f:
                    f.cancel()
        self.timings.mark("exited")
        await self.stop()

    def _vmm_died(self, what: str, status: int, *, fails: bool) -> None:
        """QEMU or virtiofsd ended while the pod ran (not by hyperd's hand): the pod says why; a dead file server
        leaves its containers without their files, so the pod fails (a VM that is gone ends its pod as exited)."""
        if self._stopping or self.state != PodState.RUNNING or self.error:
            return
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        self.error = f"{what} {how} while the pod ran"
        log.error("pod %s: %s", self.name, self.error)
        self._failed = self._failed or fails

    async def _agent_lost(self, why: str, died: asyncio.Future[int] | None) -> None:
        """The agent's connection ended while the pod ran: unless the VM itself went (its channels close with it),
        the guest broke the protocol, stopped answering or closed a channel. Nothing it says can be trusted any
        more: the pod fails, naming why, and stop() takes the VM down."""
        if self._stopping or self.state != PodState.RUNNING:
            return
        if died:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(died), 1.0)
                return
        log.error("pod %s: the guest agent is lost (%s): the pod fails", self.name, why)
        self.error = f"guest agent: {why}"
        self._failed = True

    async def hold_created(self, name: str) -> None:
        """Sets up a container that start(start_containers=False) left created, in the guest, up to its process's
        exec (NEW_CONTAINER with hold): start_created() then only lets it run, as runc's start does after its
        create (runv: the container's set-up overlaps the engine's work between create and start)."""
        c = self.container(name)
        if self.state != PodState.RUNNING or not self.agent:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        if not c.started.is_set() and not c.held:
            await self._start_container(c, c.fields, hold=True)

    async def start_created(self, name: str) -> Container:
        """Starts a container that start(start_containers=False) left created."""
        c = self.container(name)
        if self.state != PodState.RUNNING or not self.agent:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        if c.started.is_set():
            raise Conflict(f"container {c.name} was started already")
        await self._start_container(c, c.fields)
        self.timings.mark("started")
        self.changed()
        return c

    async def add_container(self, c: Container, *, start: bool = True, volumes: tuple[Volume, ...] = ()) -> None:
        """A new container in the running pod: its root mounted under the (shared) pod share, started by the
        agent (or left created: runv's containers that join a sandbox), supervised like the others. `volumes`:
        more pod volumes it brings along (host directories bound into the share). No reboot."""
        if self.state != PodState.RUNNING or not self.agent:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        if any(x.name == c.name for x in self.containers):
            raise Conflict(f"pod {self.name} already has a container {c.name}")
        spec_before = self.spec
        mounted_before = set(self.tree.ids)
        layer = self.statedir / "containers" / c.name
        fresh_layer = not os.path.lexists(layer)
        try:
            self.spec = self.spec.model_copy(update={"volumes": [*self.spec.volumes, *volumes]})
            if self.spec.share_process_namespace:  # it joins the pod's PID namespace like the others
                c.spec = c.spec.model_copy(update={"pid_namespace": "pod"})
            await self._ensure_disk([c])
            self._prepare_container(c)
            c.stream = self._next_stream()
            c.brought = tuple(v.name for v in volumes)
            if start:
                await self._start_container(c, c.fields)
        except BaseException:
            self.spec = spec_before
            for rel in set(self.tree.ids) - mounted_before:
                self.tree.undo(rel)
            if fresh_layer:  # nothing half-made: its writable layer goes too
                remove_tree(layer)
            raise
        self.containers.append(c)
        self.spec = self.spec.model_copy(update={"containers": [*self.spec.containers, c.spec]})
        self._supervisors.add(asyncio.ensure_future(self._supervise(c)))
        self._wake.set()
        self.changed()
        self.emit("add", container=c.name)

    async def agent_stats(self) -> dict[str, int]:
        """What the agent holds: containers, processes, open fds (a leak shows here)."""
        if self.state != PodState.RUNNING or not self.agent:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        st = await self.agent.stats()
        return {"containers": st.containers, "processes": st.processes, "fds": st.fds}

    async def container_stats(self, name: str) -> ContainerStats:
        """A running container's CPU time, memory and process count, from its cgroups in the guest (the kubelet's
        ContainerStats), stamped with the host's clock. NotFound for a container the pod does not have, Conflict
        for one that is not running (created, exited, or its pod not running)."""
        c = next((x for x in self.containers if x.name == name), None)
        if c is None:
            raise NotFound(f"pod {self.name} has no container {name}")
        not_running = Conflict(f"container {name} of pod {self.name} is not running: no stats")
        if self.state != PodState.RUNNING or not self.agent or not c.started.is_set() or c.done.is_set():
            raise not_running
        try:
            return await self.agent.container_stats(c.name)
        except AgentRequestError as e:
            if e.errno in (errno.ENOENT, errno.ESRCH):  # it exited while we asked
                raise not_running from None
            raise

    async def open_port(self, port: int) -> PortStream:
        """A TCP connection to the pod's own localhost:`port` (127.0.0.1, else ::1, in its VM: its containers share
        the VM's network), relayed by the agent: Kubernetes' port-forward. AgentRequestError with errno ECONNREFUSED
        when nothing listens there. The caller must close() it (the connection is ended if it has not)."""
        if not 0 < port < 65536:
            raise InvalidArgument(f"port {port} is not 1-65535")
        if self.state != PodState.RUNNING or not self.agent:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        stream = self._next_stream()
        self.changed()
        try:
            return await self.agent.open_port(port, stream)
        except AgentRequestError as e:
            raise AgentRequestError(f"pod {self.name}: {e.message}", e.errno, e.phase) from None

    async def stop_container(self, name: str, timeout: float = 10.0) -> Container:
        """docker stop for one container: its stop signal, `timeout` seconds, then SIGKILL; it is not restarted.
        The pod and its other containers go on."""
        c = self.container(name)
        if not c.started.is_set() or c.done.is_set():
            return c
        if self.state != PodState.RUNNING or not self.agent:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        self._removing.add(c.name)
        for sig, wait in ((c.stop_signal, timeout), (9, 5.0)):
            with contextlib.suppress(HCError):
                await self.agent.signal(c.stream, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.done.wait(), wait)
            if c.done.is_set():
                break
        return c

    async def remove_container(self, name: str, force: bool = False) -> None:
        """Removes one container of the running pod: stopped first with force (else it must have exited), its
        slot freed in the guest (REMOVE_CONTAINER), its root unmounted on the host and its writable layer and
        log deleted. The name can be used again. A pod that is not kept alive stops with its last container."""
        c = self.container(name)
        if c.started.is_set() and not c.done.is_set():
            if not force:
                raise Conflict(f"container {c.name} of pod {self.name} is running: stop it first or use rm -f")
            await self.stop_container(c.name, timeout=0)
        self._removing.add(c.name)
        try:
            if self.agent and self.state == PodState.RUNNING and c.started.is_set():
                try:
                    await self.agent.remove_container(c.name)
                except AgentRequestError as e:
                    if e.errno != errno.ENOENT:  # never created in the guest (a failed start): nothing to free
                        raise
            self.tree.unmount_root(c.root_dir or c.name)
            if c.streams and self.agent:
                self.agent.detach(c.stream)
            remove_tree(self.statedir / "containers" / c.name)
            c.log_path.unlink(missing_ok=True)
        finally:
            self._removing.discard(c.name)
        self.containers.remove(c)
        used = {m.name for x in self.containers for m in x.spec.volumes}
        dropped = {v for v in c.brought if v not in used}  # the volumes it brought that no one else mounts
        for v in dropped:
            for rel in (f"{parent}/{v}" for parent in VOLUME_DIRS):
                self.tree.undo(rel)
        self.spec = self.spec.model_copy(update={
            "containers": [x for x in self.spec.containers if x.name != name],
            "volumes": [v for v in self.spec.volumes if v.name not in dropped]})
        self._wake.set()
        self.changed()
        self.emit("remove", container=c.name)

    def _should_restart(self, c: Container) -> bool:
        policy = self.spec.restart_policy
        if self._stopping or self.state != PodState.RUNNING or c.error is not None or c.name in self._removing:
            return False
        return policy == "Always" or (policy == "OnFailure" and c.exit_code != 0)

    async def _supervise(self, c: Container) -> None:
        """Restarts a container that exited, as its policy says, with backoff: 0.1 s doubling to 10 s, back to
        0.1 s after a run of 10 s or more."""
        delay = RESTART_BACKOFF_MIN
        while True:
            began = time.monotonic()
            await c.done.wait()
            if c.oom_killed:
                self.emit("oom", container=c.name, exit_code=c.exit_code)
            if not self._should_restart(c):
                return
            if time.monotonic() - began >= RESTART_BACKOFF_MAX:
                delay = RESTART_BACKOFF_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF_MAX)
            if not self._should_restart(c):
                return
            c.reset()
            c.stream = self._next_stream()
            try:
                await self._start_container(c, c.fields)
            except HCError as e:
                c.finish(125, e.message)
                return
            c.restarts += 1
            self.changed()
            self.emit("restart", container=c.name, restarts=c.restarts)
            log.info("pod %s: container %s restarted (%d)", self.name, c.name, c.restarts)

    def _next_stream(self) -> int:
        self._stream_seq = max(self._stream_seq, 2 * len(self.containers)) + 2
        if self.agent:
            self.agent.max_stream = self._stream_seq
        return self._stream_seq

    async def exec(self, container: str | None, command: list[str], *, tty: bool = False, stdin: bool = False,
                   user: str | None = None, env: list[str] | None = None, workdir: str | None = None,
                   size: tuple[int, int] | None = None) -> ProcessStreams:
        """A new process in a running container: its namespaces, its env and user unless given. `size`: (rows,
        cols) of its terminal from the start (with `tty`)."""
        c = self.container(container)
        if self.state != PodState.RUNNING or not self.agent or not c.started.is_set() or c.done.is_set():
            raise Conflict(f"container {c.name} of pod {self.name} is not running")
        if not command:
            raise InvalidArgument("exec needs a command")
        fields = dict(c.fields, arg=command, terminal=int(tty), stdin=int(stdin))
        fields.pop("readonly", None)
        if user:
            try:
                with self.tree.open_root(c.root_dir or c.name) as root:
                    u = resolve(root, user)
            except OSError as e:
                raise Conflict(f"container {c.name}: its root is not there to resolve user {user}: {e}") from None
            fields.update(uid=u.uid, gid=u.gid, group=list(u.groups))
        if env:
            base = fields.get("env")
            fields["env"] = [*(base if isinstance(base, list) else []), *env]
        if workdir:
            fields["cwd"] = workdir
        if tty and size and size[0] > 0 and size[1] > 0:
            fields.update(rows=size[0], cols=size[1])
        return await self.exec_fields(c.name, fields, tty=tty)

    async def exec_detached(self, container: str | None, command: list[str], *, user: str | None = None,
                            env: list[str] | None = None, workdir: str | None = None) -> dict[str, Any]:
        """docker exec -d: the process runs on by itself (its output dropped); its exit code is kept in `execs`
        (inspect shows them)."""
        proc = await self.exec(container, command, user=user, env=env, workdir=workdir)
        rec: dict[str, Any] = {"id": os.urandom(8).hex(), "container": self.container(container).name,
                               "command": list(command), "exit_code": None, "running": True}
        self.execs.append(rec)
        del self.execs[:-64]  # the latest 64 are kept

        async def reap() -> None:
            async def drain(q: asyncio.Queue[bytes | None]) -> None:
                while await q.get() is not None:
                    pass

            try:
                await asyncio.gather(drain(proc.stdout), drain(proc.stderr))
                rec["exit_code"] = await proc.exit
            except HCError as e:
                rec["error"] = e.message
            finally:
                rec["running"] = False
                proc.client.unregister(proc.stream)
                if self.state not in (PodState.EXITED, PodState.FAILED):  # a final record is written once
                    self.changed()

        task = asyncio.create_task(reap())
        self._exec_tasks.add(task)
        task.add_done_callback(self._exec_tasks.discard)
        self.changed()
        return rec

    async def exec_fields(self, container: str, fields: Fields, *, tty: bool = False) -> ProcessStreams:
        """EXEC with the process fields given whole (runv: from an OCI process)."""
        c = self.container(container)
        if self.state != PodState.RUNNING or not self.agent or not c.started.is_set() or c.done.is_set():
            raise Conflict(f"container {c.name} of pod {self.name} is not running")
        fields = dict(fields, terminal=int(tty))
        fields.setdefault("stdin", 1)
        fields.setdefault("rlimit", c.fields.get("rlimit", []))
        stream = self._next_stream()
        self.changed()
        arg = fields.get("arg")
        self.emit("exec", container=c.name, command=" ".join(map(str, arg)) if isinstance(arg, list) else "")
        try:
            req = ExecRequest.from_fields(fields, id=c.name, stream=stream)
        except ValueError as e:
            raise InvalidArgument(f"exec in {c.name}: {e}") from None
        return await self.agent.exec(req)

    async def signal_stream(self, stream: int, sig: int) -> None:
        if self.agent and self.state == PodState.RUNNING:
            with contextlib.suppress(HCError):
                await self.agent.signal(stream, sig)

    async def resize_stream(self, stream: int, rows: int, cols: int) -> None:
        if self.agent and self.state == PodState.RUNNING:
            with contextlib.suppress(HCError):
                await self.agent.winsize(stream, rows, cols)

    async def signal(self, container: str | None, sig: int) -> None:
        c = self.container(container)
        if self.state != PodState.RUNNING or not self.agent or c.done.is_set():
            raise HCError(f"container {c.name} of pod {self.name} is not running")
        await self.agent.signal(c.stream, sig)

    async def resize(self, container: str | None, rows: int, cols: int) -> None:
        c = self.container(container)
        if self.agent and c.started.is_set() and not c.done.is_set() and c.spec.tty:
            with contextlib.suppress(HCError):
                await self.agent.winsize(c.stream, rows, cols)

    async def graceful_stop(self, timeout: float) -> None:
        """docker stop: each container's stop signal (the image's StopSignal, else SIGTERM), `timeout` seconds to
        exit, then SIGKILL; then the VM goes down."""
        self._stopping = True
        running = [c for c in self.containers if c.started.is_set() and not c.done.is_set()]
        if self.state == PodState.RUNNING and self.agent:
            for c in running:
                with contextlib.suppress(HCError):
                    await self.agent.signal(c.stream, c.stop_signal)
            done = asyncio.gather(*(c.done.wait() for c in running))
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                for c in running:
                    if not c.done.is_set():
                        with contextlib.suppress(HCError):
                            await self.agent.signal(c.stream, 9)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in running)), 5)
        await self.stop()

    async def pause(self) -> None:
        if self.state != PodState.RUNNING or not self.machine:
            raise Conflict(f"pod {self.name} is {self.state.value}, not running")
        if self.agent:
            self.agent.paused = True  # a request in flight waits for the unpause, not for a reply timeout
        try:
            await self.machine.qmp("stop")
        except BaseException:
            if self.agent:
                self.agent.paused = False
            raise
        self._set(PodState.PAUSED)

    async def unpause(self) -> None:
        if self.state != PodState.PAUSED or not self.machine:
            raise Conflict(f"pod {self.name} is {self.state.value}, not paused")
        await self.machine.qmp("cont")
        if self.agent:
            self.agent.paused = False
        self._set(PodState.RUNNING)

    async def stop(self) -> None:
        """Shuts the VM down (the agent syncs and powers off) and releases everything."""
        async with self._lock:
            if self.state not in (PodState.RUNNING, PodState.PAUSED):  # a start in progress is cancelled instead
                return
            self._set(PodState.STOPPING)
            await self.teardown()
            for c in self.containers:
                c.finish(137, "pod stopped before the container exited") if not c.done.is_set() else None
            self.exit_code = self.containers[0].exit_code if self.containers else 0
            self.finished = time.time()
            self._set(PodState.FAILED if self._failed else PodState.EXITED)

    async def teardown(self) -> None:
        """Idempotent. The guest is asked to power off (it syncs), the VM gets a moment to do so and the
        containers' output is drained; then everything the start registered is undone, last made first."""
        if self.agent and self.machine and self.machine.proc and self.machine.proc.returncode is None \
                and self.state != PodState.PAUSED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.agent.shutdown(), 1.0)
        if self.machine:
            await self.machine.stop(grace=2.0)
        for t in self._relays:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(t), 2.0)
            t.cancel()
        await self._undo.aclose()

    def changed(self) -> None:
        for cb in self.on_change:
            cb(self)

    def emit(self, action: str, **attrs: object) -> None:
        for cb in self.on_event:
            cb(self, action, attrs)

    def runtime(self) -> dict[str, Any]:
        """What a later hyperd needs to take this pod over: processes, streams, container state."""
        vm = self.machine.proc if self.machine else None
        share = self.share.proc if self.share else None
        return {
            "vm_pid": vm.pid if vm else None, "vm_start": procs.start_time(vm.pid) if vm else None,
            "share_pid": share.pid if share else None, "share_start": procs.start_time(share.pid) if share else None,
            "stream_seq": self._stream_seq, "generation": self._generation,
            "rundir": str(self.rundir), "share_dir": str(self.share_dir),
            "network": self.net.to_dict() if self.net else None,
            "containers": {c.name: {"stream": c.stream, "fields": c.fields, "mounts": c.mounts,
                                    "started": c.started.is_set(), "done": c.done.is_set(),
                                    "exit_code": c.exit_code, "error": c.error, "restarts": c.restarts, "pid": c.pid,
                                    "oom_killed": c.oom_killed, "root_dir": c.root_dir,
                                    "cri_log": str(c.cri_log) if c.cri_log else None, "brought": list(c.brought),
                                    "started_at": c.started_at, "finished_at": c.finished_at}
                           for c in self.containers},
        }

    def net_info(self) -> dict[str, Any]:
        if not self.net:
            return {"mode": "none"}
        return {"mode": self.net.mode, "ip": self.net.address, "prefixlen": self.net.prefixlen,
                "gateway": self.net.gateway, "mac": self.net.mac, "tap": self.net.tap,
                "ports": [{"host_ip": p.host_ip, "host_port": p.host_port, "container_port": p.container_port,
                           "protocol": p.protocol} for p in self.net.ports],
                "netns": self.net.netns,
                "interfaces": [{"mac": i.mac, "tap": i.tap, "addresses": list(i.addresses), "mtu": i.mtu}
                               for i in self.net.nics()],
                "routes": [{"dst": r.dst, "via": r.via, "mac": r.mac} for r in self.net.guest_routes()]}

    def info(self) -> PodInfo:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "hostname": self.hostname,
            "image": self.containers[0].spec.image if self.containers else None,
            "command": self.containers[0].spec.command if self.containers else None,
            "exit_code": self.exit_code,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
            "vm": {"pid": self.machine.pid if self.machine else None, "accel": self.assets.accel,
                   "boot": self.boot, "booted_from": self.booted_from,
                   "vcpu": self.spec.resources.vcpu, "memory_mib": self.spec.resources.memory},
            "timings": self.timings.marks,
            "network": self.net_info(),
            "restart_policy": self.spec.restart_policy,
            "containers": [{"name": c.name, "image": c.image.id, "pid": c.pid, "exit_code": c.exit_code,
                            "error": c.error, "restarts": c.restarts, "OOMKilled": c.oom_killed,
                            "started_at": c.started_at, "finished_at": c.finished_at,
                            "state": "exited" if c.done.is_set() else "running" if c.started.is_set() else "created"}
                           for c in self.containers],
            "labels": dict(self.spec.labels),
            "execs": [dict(e, running=e["running"] and self.state in (PodState.RUNNING, PodState.PAUSED))
                      for e in self.execs],
            "spec": self.spec.model_dump(mode="json"),
            "runtime": self.runtime(),
            "meta": self.meta,
        }

    # ---- usage, as the host sees it ----------------------------------------------------------------------
    def host_usage(self) -> HostUsage | None:
        """CPU time and resident memory of the pod's VM (QEMU, which runs the guest's vCPUs, and its file server)
        as the host counts them; None when it does not run."""
        if self.state not in (PodState.RUNNING, PodState.PAUSED):
            return None
        pids = [p.pid for p in (self.machine.proc if self.machine else None, self.share.proc if self.share else None)
                if p is not None]
        usage = [u for u in (_proc_usage(pid) for pid in pids) if u is not None]
        if not usage:
            return None
        return HostUsage(time.time_ns(), sum(u[0] for u in usage), sum(u[1] for u in usage))

    def layer_usage(self, name: str) -> tuple[int, int] | None:
        """Bytes (allocated) and inodes of a container's writable layer on the host; None if it has none."""
        upper = self.statedir / "containers" / name / "upper"
        if not upper.is_dir():
            return None
        size = inodes = 0
        stack = [str(upper)]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for e in it:
                        inodes += 1
                        with contextlib.suppress(OSError):
                            size += e.stat(follow_symlinks=False).st_blocks * 512
                            if e.is_dir(follow_symlinks=False):
                                stack.append(e.path)
            except OSError:
                continue
        return size, inodes
