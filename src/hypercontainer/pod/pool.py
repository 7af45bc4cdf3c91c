"""A warm pool: VMs restored from the default template ahead of time, agent connected, then paused. A pod takes
one (no QEMU start, no restore, no handshake: it resumes the VM and sends START_POD) and the pool refills in the
background.

How a slot is made and warmed up: slot.py. Only providers that say `poolable` get pool VMs: not user mode (its port
forwards are fixed when QEMU starts), not a pod whose network is an existing namespace (network/provider.py).

hyperd keeps a pool unless told not to (`--pool 0`). Its size, unless given (`--pool N`), is hyperd's: one VM at
first, one more each time a pod found the pool empty (pods came faster than it refills), up to `auto_limit` of
the memory the host has available (re-read before each VM is made, so a host that runs short stops the refill).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any

from .. import procs
from ..network.manager import Network
from ..network.none_mode import NoneProvider
from ..network.provider import Provider
from ..spec.pod import PodSpec
from ..storage.volumes import remove_tree
from ..vm.qemu import Nic
from .slot import VM_RECORD, Slot, make_slot
from .templates import TEMPLATE_MAC, Template, Templates

log = logging.getLogger(__name__)
AUTO_MAX = 4  # an auto-sized pool grows to this many VMs at most
AUTO_VM_COST = 64 << 20  # host memory budgeted per pool VM (an idle clone's PSS is ~40-46 MiB, see bench/density.py)
AUTO_MEMORY_SHARE = 0.05  # an auto-sized pool holds at most this share of the host's available memory


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


class Pool:
    def __init__(self, size: int | None, templates: Templates, rundir: Path, network: Network | None,
                 cpus: int = 1, memory: int = 256, warmup: dict[str, Any] | None = None) -> None:
        """`size` None: sized by the pool itself (see the module's docstring). `warmup`: see slot.warm_up()."""
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
        provider = self.provider
        tap = await provider.premake(name)  # the NIC backend, made before QEMU opens it
        nic: Nic | bool = (Nic(TEMPLATE_MAC, tap=tap) if tap else Nic(TEMPLATE_MAC, hub=0) if provider.nic else False)
        try:
            return await make_slot(self.templates, template, self.rundir / name, self.cpus, self.memory, nic, tap,
                                   self.warmup)
        except BaseException:
            if tap:
                await provider.discard(tap)
            raise

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
            await slot.discard()
            if slot.tap:
                await self.provider.discard(slot.tap)

    async def renew(self) -> None:
        """The guest changed (hyperd switched kernels): the VMs made from the old one go, new ones are made."""
        await self.close()
        self.failures, self.filled = 0, False
        self.fill()

    def info(self) -> dict[str, object]:
        return {"size": self.size, "ready": len(self.ready), "auto": self.auto, "misses": self.misses}
