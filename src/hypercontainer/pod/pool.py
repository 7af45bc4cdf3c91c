"""A warm pool: VMs restored from the default template ahead of time, agent connected, then paused. A pod takes
one (no QEMU start, no restore, no handshake: it resumes the VM and sends START_POD) and the pool refills in the
background.

A pool VM's 9p root and NIC backend are fixed when its QEMU starts, so a slot brings its own share directory
(the pod mounts its containers' roots there) and, in bridge mode, a tap made in advance (the pod's network
attachment adopts it; the guest takes the pod's MAC at START_POD, as any clone does). What does not depend on
the pod is done before the VM is paused: the guest mounts the slot's share (lookups over 9p go to the host each
time, so roots mounted there later show up) and reseeds its random generator with bytes of its own, so the pod's
START_POD only sets the clock, hostname and network (~30 ms less under TCG).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .. import procs
from ..network.links import Bridge
from ..network.manager import Network
from ..protocol.client import AgentClient
from ..protocol.codec import Msg
from ..storage.share import SHARE_TAG
from ..storage.volumes import make_shared, remove_tree
from ..vm.machine import Machine
from ..vm.qemu import Nic, Sockets
from .templates import TEMPLATE_MAC, Templates, vm_config

log = logging.getLogger(__name__)
POOL_TAP_PREFIX = "hcpool"
HANDSHAKE = 10.0
VM_RECORD = "vm.json"  # the slot's QEMU (pid + start time): a crashed hyperd's pool VMs are found and stopped
PREPARE_FIELDS = {"share": SHARE_TAG, "sharefs": "9p"}  # START_POD's part done before a pod takes the VM


@dataclass
class Slot:
    rundir: Path  # sockets (and the slot's logs)
    share_dir: Path  # the 9p root QEMU serves
    machine: Machine
    agent: AgentClient
    template: str
    tap: str | None


class Pool:
    def __init__(self, size: int, templates: Templates, rundir: Path, network: Network | None,
                 cpus: int = 1, memory: int = 256) -> None:
        self.size, self.templates, self.rundir, self.network = size, templates, rundir, network
        self.cpus, self.memory = cpus, memory
        self.ready: list[Slot] = []
        self._filling: asyncio.Task | None = None
        self.failures = 0

    @property
    def mode(self) -> str:
        return self.network.mode if self.network else "none"

    def matches(self, cpus: int, memory: int, mode: str) -> bool:
        """Pool VMs are of one size and network mode; user mode is left out (its port forwards are fixed when
        QEMU starts)."""
        return self.size > 0 and (cpus, memory) == (self.cpus, self.memory) and mode == self.mode != "user"

    def take(self) -> Slot | None:
        """A ready VM, if there is one. The taker calls fill() once its pod runs: a refill started at once would
        compete with that pod's start for the CPUs."""
        return self.ready.pop(0) if self.ready else None

    def fill(self) -> None:
        if self.size > 0 and self.mode != "user" and (self._filling is None or self._filling.done()):
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        while len(self.ready) < self.size and self.failures < 3:
            template = await self.templates.get(self.cpus, self.memory, self.mode != "none")
            try:
                self.ready.append(await self._make(template))
            except Exception as e:
                self.failures += 1
                log.warning("pool: could not prepare a VM: %s", e)

    async def _make(self, template) -> Slot:
        name = secrets.token_hex(8)
        rundir = self.rundir / name
        share = rundir / "share"
        share.mkdir(parents=True)
        make_shared(share)  # before QEMU opens it: the pod's container roots are mounted below it later
        tap = None
        if self.mode == "bridge" and self.network:
            tap = POOL_TAP_PREFIX + name[:8]
            await asyncio.to_thread(self.network.bridge.add_tap, tap)
        nic: Nic | bool = (Nic(TEMPLATE_MAC, tap=tap) if tap else
                           Nic(TEMPLATE_MAC, hub=0) if self.mode == "user" else False)
        sockets = Sockets(rundir)
        machine = Machine(vm_config(self.templates.kernel, self.templates.initrd, self.templates.accel, sockets,
                                    self.cpus, self.memory, share, nic, template, building=False))
        agent = AgentClient(sockets.ctl, sockets.io)
        try:
            await machine.start(record=rundir / VM_RECORD)
            await machine.restore(template.state)
            await agent.connect()
            await asyncio.wait_for(agent.handshake(HANDSHAKE), HANDSHAKE)
            await asyncio.wait_for(agent.request(Msg.START_POD, PREPARE_FIELDS | {
                "clock_ns": time.time_ns(), "seed": os.urandom(32).hex()}), HANDSHAKE)
            await machine.qmp("stop")
        except BaseException:
            await agent.close()
            await machine.stop(grace=0)
            if tap:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(Bridge.remove_tap, tap)
            remove_tree(rundir)
            raise
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
        for slot in self.ready:
            await slot.agent.close()
            await slot.machine.stop(grace=0)
            if slot.tap:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(Bridge.remove_tap, slot.tap)
            remove_tree(slot.rundir)
        self.ready.clear()

    def info(self) -> dict:
        return {"size": self.size, "ready": len(self.ready)}
