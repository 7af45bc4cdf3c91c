"""Where a pod's VM comes from: a cold boot, a clone of a VM template, or a VM of the warm pool, behind one
interface. A source says where the pod's runtime files and share live (a pool VM brings its own), then boots (or
resumes) a VM with the agent connected and returns what it made; each resource is registered on the caller's
AsyncExitStack as soon as it exists, so one undo path serves every failure and the pod's teardown alike.

    source.placement(default, stack) -> Placement  (rundir, share directory, a NIC backend made in advance)
    await source.boot(plan, stack) -> Booted  (machine, agent, share)

The QEMU, virtiofsd and agent classes come from `Parts`, which unit tests replace with fakes that fail a given
step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from .. import faults
from ..errors import VMError
from ..protocol.agent import Agent
from ..storage.share import PodShare, ninep
from ..vm.machine import Machine
from ..vm.qemu import Share, Sockets, VMConfig
from .slot import Slot
from .templates import Template

BOOT_TIMEOUT = 60.0  # TCG on a loaded 2-core host can be slow; KVM boots in well under a second
CLONE_HANDSHAKE = 10.0  # a restored guest is running already: it answers at once or not at all
T = TypeVar("T")


@dataclass(frozen=True)
class Parts:
    """The classes a source builds a VM from (unit tests give fakes)."""

    machine: Callable[[VMConfig], Machine] = Machine
    share: Callable[[Path, Path, bool], PodShare] = PodShare
    agent: Callable[[Path, Path], Agent] = Agent.at


@dataclass(frozen=True)
class Placement:
    rundir: Path  # sockets and runtime files
    share_dir: Path  # what the guest sees as its share (container roots are mounted below it)
    tap: str | None = None  # a NIC backend made in advance (a pool VM's)


@dataclass(frozen=True)
class BootPlan:
    """What a source needs of the pod: its VM's configuration for a share (and template), its logs, callbacks."""

    sockets: Sockets
    share_dir: Path
    vm_config: Callable[[Sockets, Share, Template | None], VMConfig]
    max_stream: int
    spawned: Callable[[Machine | None, PodShare | None], None]  # QEMU or virtiofsd exists: record it at once
    mark: Callable[[str], None]  # a timing mark


@dataclass
class Booted:
    machine: Machine
    agent: Agent
    share: Share
    daemon: PodShare | None  # virtiofsd, for a cold VM
    clone: bool = False  # restored from a snapshot: its clock and random state are not its own yet
    prepared: bool = False  # a pool VM: share mounted and random state reseeded before it was paused


async def guarded(machine: Machine, aw: Awaitable[T]) -> T:
    """Runs a guest request, failing fast (with QEMU's and the console's last words) if QEMU dies meanwhile."""
    task = asyncio.ensure_future(aw)
    died = asyncio.ensure_future(machine.wait())
    try:
        done, _ = await asyncio.wait({task, died}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise VMError(f"the VM exited with status {died.result()} during boot. "
                      f"{machine.qemu_log_tail()}\nGuest console:\n{machine.console_tail()}")
    finally:
        for t in (task, died):
            if not t.done():
                t.cancel()


class VMSource(Protocol):
    @property
    def origin(self) -> str: ...

    def placement(self, default: Placement, stack: contextlib.AsyncExitStack) -> Placement: ...

    async def boot(self, plan: BootPlan, stack: contextlib.AsyncExitStack) -> Booted: ...


@dataclass
class ColdSource:
    """A fresh QEMU that boots the kernel; the share served by virtiofsd (9p by QEMU where it is missing)."""

    parts: Parts = field(default_factory=Parts)
    origin: str = "cold"

    def placement(self, default: Placement, stack: contextlib.AsyncExitStack) -> Placement:
        return default

    async def boot(self, plan: BootPlan, stack: contextlib.AsyncExitStack) -> Booted:
        s = plan.sockets
        daemon = self.parts.share(plan.share_dir, s.rundir, False)
        daemon.on_spawn = lambda: plan.spawned(None, daemon)
        stack.push_async_callback(daemon.stop)
        share = await daemon.start()
        plan.mark("share")
        faults.point("share")
        machine, agent = await _start_qemu(self.parts, plan, share, None, stack)
        await guarded(machine, agent.handshake(BOOT_TIMEOUT))
        return Booted(machine, agent, share, daemon)


@dataclass
class TemplateSource:
    """A fresh QEMU that maps the template's memory copy-on-write and loads its device state: no kernel boot.
    Its share is 9p, served by QEMU itself (a vhost-user-fs device cannot be migrated)."""

    template: Template
    parts: Parts = field(default_factory=Parts)

    @property
    def origin(self) -> str:
        return self.template.home.name

    def placement(self, default: Placement, stack: contextlib.AsyncExitStack) -> Placement:
        return default

    async def boot(self, plan: BootPlan, stack: contextlib.AsyncExitStack) -> Booted:
        share = ninep(plan.share_dir)
        machine, agent = await _start_qemu(self.parts, plan, share, self.template, stack)
        await guarded(machine, agent.handshake(CLONE_HANDSHAKE))
        return Booted(machine, agent, share, None, clone=True)


@dataclass
class PoolSource:
    """A VM of the warm pool: restored from the template ahead of time, agent connected, share mounted, paused.
    It brings its own runtime directory, share and tap; booting it is resuming it."""

    slot: Slot
    _agent: Agent | None = field(default=None, init=False)

    @property
    def origin(self) -> str:
        return f"pool:{self.slot.template}"

    def placement(self, default: Placement, stack: contextlib.AsyncExitStack) -> Placement:
        """The slot is the pod's from here on: its VM goes with the pod, also if the start fails before boot."""
        self._agent = Agent(self.slot.agent)
        stack.push_async_callback(self._agent.close)
        stack.push_async_callback(self.slot.machine.stop, 0)
        return Placement(self.slot.rundir, self.slot.share_dir, self.slot.tap)

    async def boot(self, plan: BootPlan, stack: contextlib.AsyncExitStack) -> Booted:
        machine, agent = self.slot.machine, self._agent
        assert agent, "placement() first"
        # Again (both are idempotent), so that a failure from here on stops QEMU, its 9p server, before the share
        # tree, disk and network it serves go.
        stack.push_async_callback(agent.close)
        stack.push_async_callback(machine.stop, 0)
        agent.max_stream = plan.max_stream
        await machine.qmp("cont")
        plan.mark("resumed")
        return Booted(machine, agent, ninep(self.slot.share_dir), None, clone=True,
                      prepared=True)


async def _start_qemu(parts: Parts, plan: BootPlan, share: Share, template: Template | None,
                      stack: contextlib.AsyncExitStack) -> tuple[Machine, Agent]:
    """QEMU for `share` (restored from `template` if given) and the agent connected: the agent's close and QEMU's
    stop registered before either exists, so the stack undoes them in the right order (QEMU first)."""
    s = plan.sockets
    agent = parts.agent(s.ctl, s.io)
    agent.max_stream = plan.max_stream
    stack.push_async_callback(agent.close)
    machine = parts.machine(plan.vm_config(s, share, template))
    machine.on_spawn = lambda: plan.spawned(machine, None)
    stack.push_async_callback(machine.stop, 0)
    await machine.start()
    plan.mark("qemu")
    if template:
        await machine.restore(template.state)
        plan.mark("restored")
        faults.point("restored")
    await agent.connect()
    if template:
        await machine.resume()  # only now: see Machine.restore
    return machine, agent
