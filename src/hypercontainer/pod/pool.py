"""A warm pool: VMs restored from the default template ahead of time, agent connected, then paused. A pod takes
one (no QEMU start, no restore, no handshake: it resumes the VM and sends START_POD) and the pool refills in the
background.

A pool VM's 9p root and NIC backend are fixed when its QEMU starts (microvm has no hotplug), so a slot brings its
own share directory (the pod mounts its containers' roots there) and the NIC backend the network provider made in
advance (bridge: a tap on the bridge; the pod's attachment takes it over; the guest takes the pod's MAC at
START_POD, as any clone does). Only providers that say `poolable` get pool VMs: not user mode (its port forwards
are fixed when QEMU starts), not a pod whose network is an existing namespace (network/provider.py).

What does not depend on the pod is done before the VM is paused: the guest mounts the slot's share (lookups over
9p go to the host each time, so roots mounted there later show up) and reseeds its random generator with bytes of
its own, so the pod's START_POD only sets the clock, hostname and network (~30 ms less under TCG). Then a throwaway
container (`busybox true` on a root of its own in the share) starts, exits and goes: under TCG a fresh QEMU
translates the guest code it runs the first time it runs it, and a container's set-up (namespaces, mounts, exec)
is most of a pod's start; the translations stay in the paused QEMU, so the pod's own container starts warm.

hyperd keeps a pool unless told not to (`--pool 0`). Its size, unless given (`--pool N`), is hyperd's: one VM at
first, one more each time a pod found the pool empty (pods came faster than it refills), up to `auto_limit` of
the memory the host has available (re-read before each VM is made, so a host that runs short stops the refill).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import procs
from ..network.manager import Network
from ..network.none_mode import NoneProvider
from ..network.provider import Provider
from ..protocol.agent import Agent, ContainerRequest, ProcessRequest
from ..protocol.client import AgentClient
from ..protocol.codec import Fields, Msg
from ..spec.pod import PodSpec
from ..storage.share import SHARE_TAG
from ..storage.volumes import make_shared, remove_tree
from ..vm.machine import Machine
from ..vm.qemu import Nic, Sockets
from .templates import TEMPLATE_MAC, Template, Templates, vm_config

log = logging.getLogger(__name__)
AUTO_MAX = 4  # an auto-sized pool grows to this many VMs at most
AUTO_VM_COST = 64 << 20  # host memory budgeted per pool VM (an idle clone's PSS is ~40-46 MiB, see bench/density.py)
AUTO_MEMORY_SHARE = 0.05  # an auto-sized pool holds at most this share of the host's available memory
HANDSHAKE = 10.0
VM_RECORD = "vm.json"  # the slot's QEMU (pid + start time): a crashed hyperd's pool VMs are found and stopped
WARMUP = "hc-warmup"  # the throwaway container's name and root directory in the share
WARMUP_STREAM = 1 << 20  # its stream: far from any a pod's containers and execs take
PREPARE_FIELDS: Fields = {"share": SHARE_TAG, "sharefs": "9p"}  # START_POD's part done before a pod takes the VM


@dataclass
class Slot:
    rundir: Path  # sockets (and the slot's logs)
    share_dir: Path  # the 9p root QEMU serves
    machine: Machine
    agent: AgentClient
    template: str
    tap: str | None


def available_memory() -> int:
    """The host's MemAvailable, in bytes (0 if it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def auto_limit(available: int) -> int:
    """How many VMs an auto-sized pool may hold with `available` bytes of host memory free."""
    return min(AUTO_MAX, int(available * AUTO_MEMORY_SHARE) // AUTO_VM_COST)


class SlotSource(Protocol):
    """Where a pod takes a ready VM from: hyperd's pool, or one VM lent by runv's factory."""

    def take(self, spec: PodSpec | None = None) -> Slot | None: ...

    def fill(self) -> None: ...


class Lent:
    """One VM another process made and lent (runv's factory: cli/runv/factory.py), for one pod."""

    def __init__(self, slot: Slot) -> None:
        self.slot: Slot | None = slot

    def take(self, spec: PodSpec | None = None) -> Slot | None:
        slot, self.slot = self.slot, None
        return slot

    def fill(self) -> None:
        pass


async def warm_up(client: AgentClient, share: Path, fields: dict[str, Any] | None = None) -> None:
    """A throwaway container in the VM (see the module's docstring); nothing if there is no static busybox.
    `fields`: NEW_CONTAINER's for it, the shape of the containers the pool's VMs will run (runv's factory: an
    engine's config, its seccomp filter, masked paths, capabilities); it is then held and started as runv's are."""
    busybox = shutil.which("busybox")
    if not busybox:
        return
    root = share / WARMUP
    try:
        (root / "bin").mkdir(parents=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        agent = Agent(client)
        if fields:  # held, then started, as runv's containers are
            streams = await agent.new_container(ContainerRequest.from_fields(
                {**fields, "arg": ["/bin/busybox", "true"], "rootfs": WARMUP, "hold": 1}, id=WARMUP,
                stream=WARMUP_STREAM))
            await agent.start_container(WARMUP)
        else:
            streams = await agent.new_container(ContainerRequest(WARMUP, WARMUP_STREAM,
                                                                 ProcessRequest(("/bin/busybox", "true")),
                                                                 rootfs=WARMUP))
        await streams.exit
        await agent.remove_container(WARMUP)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Pool:
    def __init__(self, size: int | None, templates: Templates, rundir: Path, network: Network | None,
                 cpus: int = 1, memory: int = 256, warmup: dict[str, Any] | None = None) -> None:
        """`size` None: sized by the pool itself (see the module's docstring). `warmup`: see warm_up()."""
        self.warmup = warmup
        self.auto = size is None
        self.size = min(1, auto_limit(available_memory())) if size is None else size
        self.templates, self.rundir, self.network = templates, rundir, network
        self.cpus, self.memory = cpus, memory
        self.misses = 0  # pods that found no VM ready
        self.filled = False  # whether it has been full once
        self.ready: list[Slot] = []
        self._filling: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def provider(self) -> Provider:
        """The network provider of the pool's VMs: hyperd's default mode's."""
        return self.network.default if self.network else NoneProvider()

    @property
    def mode(self) -> str:
        return self.provider.mode

    def matches(self, cpus: int, memory: int, mode: str) -> bool:
        """Pool VMs are of one size and network mode, and serve only pods whose provider can use a VM made before
        the pod was known (`poolable`)."""
        return (self.size > 0 and (cpus, memory) == (self.cpus, self.memory) and mode == self.mode
                and self.provider.poolable)

    def take(self, spec: PodSpec | None = None) -> Slot | None:
        """A ready VM, if there is one (and, given the pod's spec, if it can serve that pod: its size and network
        provider; no block volumes, which are not in templates). The taker calls fill() once its pod runs: a refill
        started at once would compete with that pod's start for the CPUs."""
        if spec is not None:
            mode = self.network.mode_for(spec) if self.network else "none"
            if any(v.block for v in spec.volumes) or spec.network_name \
                    or not self.matches(spec.resources.vcpu, spec.resources.memory, mode):
                return None
        if self.ready:
            return self.ready.pop(0)
        if self.size > 0:
            self.misses += 1
            # once it has been full: pods come faster than it refills (not while its template is being built)
            if self.auto and self.filled and not self.failures and self.size < auto_limit(available_memory()):
                self.size += 1
                log.info("pool: a pod found no VM ready; keeping %d from now on", self.size)
        return None

    def fill(self) -> None:
        if self.size > 0 and self.provider.poolable and self.templates.supported \
                and (self._filling is None or self._filling.done()):
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        while len(self.ready) < self.size and self.failures < 3:
            if self.auto and len(self.ready) >= auto_limit(available_memory()):
                log.info("pool: the host is short of memory; %d VMs ready, not more", len(self.ready))
                return
            template = await self.templates.get(self.cpus, self.memory, self.provider.nic)
            try:
                self.ready.append(await self._make(template))
                self.filled, self.failures = self.filled or len(self.ready) >= self.size, 0
            except Exception as e:
                self.failures += 1
                log.warning("pool: could not prepare a VM: %s", e)

    async def _make(self, template: Template) -> Slot:
        name = secrets.token_hex(8)
        rundir = self.rundir / name
        share = rundir / "share"
        provider = self.provider
        async with contextlib.AsyncExitStack() as stack:  # each undo registered as its resource is made
            stack.callback(remove_tree, rundir)
            share.mkdir(parents=True)
            make_shared(share)  # before QEMU opens it: the pod's container roots are mounted below it later
            tap = await provider.premake(name)  # the NIC backend, made before QEMU opens it
            if tap:
                stack.push_async_callback(provider.discard, tap)
            nic: Nic | bool = (Nic(TEMPLATE_MAC, tap=tap) if tap else
                               Nic(TEMPLATE_MAC, hub=0) if provider.nic else False)
            sockets = Sockets(rundir)
            machine = Machine(vm_config(self.templates.kernel, self.templates.initrd, self.templates.accel, sockets,
                                        self.cpus, self.memory, share, nic, template, building=False))
            agent = AgentClient(sockets.ctl, sockets.io)
            stack.push_async_callback(agent.close)
            stack.push_async_callback(machine.stop, 0)
            await machine.start(record=rundir / VM_RECORD)
            await machine.restore(template.state)
            await agent.connect()
            await machine.resume()  # only now: see Machine.restore
            await asyncio.wait_for(agent.handshake(HANDSHAKE), HANDSHAKE)
            await asyncio.wait_for(agent.request(Msg.START_POD, PREPARE_FIELDS | {
                "clock_ns": time.time_ns(), "seed": os.urandom(32).hex()}), HANDSHAKE)
            await asyncio.wait_for(warm_up(agent, share, self.warmup), HANDSHAKE)
            await machine.qmp("stop")
            stack.pop_all()  # ready: the slot owns all of it now
        return Slot(rundir, share, machine, agent, template.home.name, tap)

    def sweep(self, keep: set[Path]) -> int:
        """At start: pool VMs a crashed hyperd left (paused QEMUs, their share and sockets) go, except the
        directories in `keep` (pods that took a slot and were taken over). Returns how many went."""
        if not self.rundir.is_dir():
            return 0
        gone = 0
        for home in self.rundir.iterdir():
            if home in keep:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                rec = json.loads((home / VM_RECORD).read_text())
                procs.kill_if_ours(rec["pid"], rec["start"], str(home))
            remove_tree(home)
            gone += 1
        return gone

    async def close(self) -> None:
        """hyperd is stopping: pool VMs are not pods; they go."""
        if self._filling:
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
        slots, self.ready = self.ready, []
        for slot in slots:
            await slot.agent.close()
            await slot.machine.stop(grace=0)
            if slot.tap:
                await self.provider.discard(slot.tap)
            remove_tree(slot.rundir)

    async def renew(self) -> None:
        """The guest changed (hyperd switched kernels): the VMs made from the old one go, new ones are made."""
        await self.close()
        self.failures, self.filled = 0, False
        self.fill()

    def info(self) -> dict[str, object]:
        return {"size": self.size, "ready": len(self.ready), "auto": self.auto, "misses": self.misses}
