"""A ready VM, made ahead of its pod (a slot): restored from a template, agent connected, then paused. A pod
takes one (no QEMU start, no restore, no handshake: it resumes the VM and sends START_POD). hyperd's pool keeps a
few (pool.py); runv's factory lends them to shims (cli/runv/factory.py). Making one needs none of the pod models:
this module imports no pydantic.

A slot's 9p root and NIC backend are fixed when its QEMU starts (microvm has no hotplug), so a slot brings its own
share directory (the pod mounts its containers' roots there) and the NIC backend made in advance (bridge: a tap on
the bridge; the pod's attachment takes it over; the guest takes the pod's MAC at START_POD, as any clone does).

What does not depend on the pod is done before the VM is paused: the guest mounts the slot's share (lookups over
9p go to the host each time, so roots mounted there later show up) and reseeds its random generator with bytes of
its own, so the pod's START_POD only sets the clock, hostname and network (~30 ms less under TCG). Then a throwaway
container (`busybox true` on a root of its own in the share) starts, exits and goes: under TCG a fresh QEMU
translates the guest code it runs the first time it runs it, and a container's set-up (namespaces, mounts, exec)
is most of a pod's start; the translations stay in the paused QEMU, so the pod's own container starts warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol.agent import Agent, ContainerRequest, ProcessRequest
from ..protocol.client import AgentClient
from ..protocol.codec import Fields, Msg
from ..storage.share import SHARE_TAG
from ..storage.volumes import make_shared, remove_tree
from ..vm.machine import Machine
from ..vm.qemu import Nic, Sockets
from .templates import Template, Templates, vm_config

if TYPE_CHECKING:
    from ..spec.pod import PodSpec

HANDSHAKE = 10.0
VM_RECORD = "vm.json"  # the slot's QEMU (pid + start time): whoever finds a maker's leftovers stops that QEMU
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

    async def discard(self) -> None:
        """A slot no pod took: its VM stops and its directory goes (a tap is its maker's to discard)."""
        await self.agent.close()
        await self.machine.stop(grace=0)
        remove_tree(self.rundir)


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
    `fields`: NEW_CONTAINER's for it, the shape of the containers the VM will run (runv's: an engine's config, its
    seccomp filter, masked paths, capabilities); it is then held and started as runv's are."""
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


async def make_slot(templates: Templates, template: Template, rundir: Path, cpus: int, memory: int,
                    nic: Nic | bool = False, tap: str | None = None, warmup: dict[str, Any] | None = None) -> Slot:
    """A slot in `rundir` (made here; `nic`: the VM's NIC, on `tap` if given), its guest warmed up with a container
    of `warmup`'s shape (warm_up()). On failure nothing is left of it."""
    share = rundir / "share"
    async with contextlib.AsyncExitStack() as stack:  # each undo registered as its resource is made
        stack.callback(remove_tree, rundir)
        share.mkdir(parents=True)
        make_shared(share)  # before QEMU opens it: the pod's container roots are mounted below it later
        sockets = Sockets(rundir)
        machine = Machine(vm_config(templates.kernel, templates.initrd, templates.accel, sockets, cpus, memory,
                                    share, nic, template, building=False))
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
        await asyncio.wait_for(warm_up(agent, share, warmup), HANDSHAKE)
        await machine.qmp("stop")
        stack.pop_all()  # ready: the slot owns all of it now
    return Slot(rundir, share, machine, agent, template.home.name, tap)
