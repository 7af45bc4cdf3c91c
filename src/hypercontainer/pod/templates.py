"""VM templates: a VM booted once to "agent ready", paused and saved; pods then start from it in a fraction of a
cold boot, each with its own copy-on-write view of the template's memory.

    <assets>/templates/<key>/mem         the guest RAM (a sparse file; clones map it privately)
    <assets>/templates/<key>/state       QEMU's device state (migration stream without RAM: x-ignore-shared)
    <assets>/templates/<key>/meta.json   what it was made from

The key covers kernel + initramfs (so the agent), kernel command line, accelerator, vCPUs, memory and this recipe:
changing any of them makes a new template, and hyperd removes the ones that no longer match. The device set is fixed
so that every clone matches it: the pod share over 9p (QEMU serves it; the guest mounts it only at START_POD, after
the restore — virtio-fs could not be migrated at all), a NIC on an isolated hub (a clone's NIC gets its real
backend), no disks. The host stays connected to the agent's ports while the state is saved, so a clone's guest never
sees a disconnection (one seen at snapshot time left restored guests deaf to later requests now and then).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import procs
from ..guest.kernel import serves_9p
from ..protocol.client import AgentClient
from ..storage.share import ninep
from ..vm.machine import Machine
from ..vm.qemu import Nic, Sockets, VMConfig, command, qemu_binary

log = logging.getLogger(__name__)
RECIPE = "1"
TEMPLATE_MAC = "02:68:63:ff:ff:fe"
BUILD_TIMEOUT = 120.0


@dataclass(frozen=True)
class Template:
    home: Path

    @property
    def mem(self) -> Path:
        return self.home / "mem"

    @property
    def state(self) -> Path:
        return self.home / "state"


def vm_config(kernel: Path, initrd: Path, accel: str, sockets: Sockets, cpus: int, memory: int, share_dir: Path,
              nic: Nic | bool, template: Template, building: bool) -> VMConfig:
    """The one VM configuration of a template and of every clone of it (the device sets must match: one NIC or
    none). `nic`: the clone's NIC, True for a template with one (on an isolated hub), False for none (pods without
    network)."""
    if nic is True:
        nic = Nic(TEMPLATE_MAC, hub=0)
    return VMConfig(kernel, initrd, sockets, accel=accel, cpus=cpus, memory_mib=memory,  # type: ignore[arg-type]
                    share=ninep(share_dir), nics=(nic,) if nic else (), memory_file=template.mem,
                    memory_shared=building, incoming=not building)


SHAPE_OPTIONS = ("-M", "-global", "-cpu", "-accel", "-device", "-append")


def machine_shape(accel: str) -> str:
    """The options of a template's QEMU command line that fix the machine, its CPU and devices, and the kernel's
    command line, without paths (a clone's sockets and files are its own); the NIC, the share and the size are
    keyed apart."""
    cfg = vm_config(Path("/k"), Path("/i"), accel, Sockets(Path("/r")), 1, 256, Path("/s"), False,
                    Template(Path("/t")), building=False)
    argv = command(cfg)
    return " ".join(f"{o} {v}" for o, v in itertools.pairwise(argv) if o in SHAPE_OPTIONS)


def qemu_version() -> str:
    """Identifies the QEMU build (path, size, mtime: no process to start, runv's shims ask once per container)."""
    path = qemu_binary()
    st = os.stat(path)
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


class Templates:
    """The templates of one hyperd: found ready, or built in the background the first time a size is asked for."""

    def __init__(self, kernel: Path, initrd: Path, accel: str, digest: str, home: Path, rundir: Path) -> None:
        self.kernel, self.initrd, self.accel, self.digest = kernel, initrd, accel, digest
        self.supported = serves_9p(kernel)  # a clone's share is 9p: without it every pod boots cold
        self.home, self.rundir = home, rundir
        self._building: dict[str, asyncio.Task[None]] = {}
        self._qemu = qemu_version()
        self.failures: dict[str, str] = {}

    def key(self, cpus: int, memory: int, nic: bool = True) -> str:
        """Names what a clone must match: guest (kernel, initramfs), accelerator, kernel command line, size, QEMU
        build, and the machine and device set QEMU is given (a device added or changed there is a new template:
        a restore into another device set fails)."""
        text = f"{RECIPE}:{self.digest}:{self.accel}:{cpus}:{memory}:{nic}:{self._qemu}:{machine_shape(self.accel)}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def ready(self, cpus: int, memory: int, nic: bool = True) -> Template | None:
        """The template for this size (with a NIC or without: pods with no network have none) if it is built;
        otherwise None, and a build starts in the background."""
        if not self.supported:
            return None
        key = self.key(cpus, memory, nic)
        t = Template(self.home / key)
        if (t.home / "meta.json").exists():
            return t
        if key not in self._building and key not in self.failures:
            self._building[key] = asyncio.ensure_future(self._build_logged(key, cpus, memory, nic))
        return None

    async def get(self, cpus: int, memory: int, nic: bool = True) -> Template:
        """The template, built now if need be (benchmarks and tests wait for it)."""
        if not self.supported:
            raise RuntimeError(f"the guest kernel {self.kernel} cannot mount 9p: no VM templates with it")
        if t := self.ready(cpus, memory, nic):
            return t
        key = self.key(cpus, memory, nic)
        if key in self._building:
            await asyncio.shield(self._building[key])
        t = self.ready(cpus, memory, nic)
        if not t:
            raise RuntimeError(self.failures.get(key, "template build failed"))
        return t

    @property
    def building(self) -> bool:
        return bool(self._building)

    async def settle(self) -> None:
        """Waits for the builds under way (each ends within its own timeouts): for a process that is about to
        exit (runv's shim), whose build would otherwise leave its QEMU running."""
        await asyncio.gather(*(asyncio.shield(t) for t in self._building.values()), return_exceptions=True)

    async def switch(self, kernel: Path, initrd: Path, accel: str, digest: str) -> None:
        """New templates are made from this guest (hyperd switched kernels) once the builds under way are done
        (a build reads the guest it was asked for as it goes). The old templates stay for the clones that map them;
        the next hyperd's prune() removes them."""
        await self.settle()
        self.kernel, self.initrd, self.accel, self.digest = kernel, initrd, accel, digest
        self.supported = serves_9p(kernel)
        self.failures.clear()

    def list(self) -> list[dict[str, object]]:
        """The templates on disk (meta.json of each), and the ones being built."""
        out = []
        if self.home.exists():
            for d in sorted(self.home.iterdir()):
                with contextlib.suppress(OSError, ValueError):
                    out.append(json.loads((d / "meta.json").read_text()))
        return out + [{"key": k, "building": True} for k in self._building]

    def prune(self) -> None:
        """Removes templates made from other assets, accelerators or QEMU versions (and half-made ones), and the
        builds a dead hyperd left: their QEMU (found by its run directory on its command line) and directories."""
        if self.rundir.exists():
            for d in self.rundir.iterdir():
                procs.kill_and_wait(procs.with_arg(str(d).encode() + b"/"))
                shutil.rmtree(d, ignore_errors=True)
        if not self.home.exists():
            return
        for d in self.home.iterdir():
            try:
                meta = json.loads((d / "meta.json").read_text())
                current = meta.get("key") == self.key(meta["cpus"], meta["memory"], meta.get("nic", True))
            except (OSError, ValueError, KeyError):
                current = False
            if not current:
                shutil.rmtree(d, ignore_errors=True)

    async def _build_logged(self, key: str, cpus: int, memory: int, nic: bool) -> None:
        t0 = time.monotonic()
        try:
            await self._build(key, cpus, memory, nic)
            log.info("template %s (%d vCPU, %d MiB) ready in %.1f s", key, cpus, memory, time.monotonic() - t0)
        except Exception as e:
            self.failures[key] = f"{type(e).__name__}: {e}"
            log.warning("template %s could not be built (pods boot cold): %s", key, e)
        finally:
            self._building.pop(key, None)

    async def _build(self, key: str, cpus: int, memory: int, nic: bool) -> None:
        final = self.home / key
        tmp = self.home / f".{key}.{os.getpid()}"
        rundir = self.rundir / f"template-{key[:8]}"
        async with contextlib.AsyncExitStack() as stack:  # each undo registered as its resource is made
            shutil.rmtree(tmp, ignore_errors=True)
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)  # gone once renamed into place
            (tmp / "share").mkdir(parents=True)
            stack.callback(shutil.rmtree, rundir, ignore_errors=True)
            rundir.mkdir(parents=True, exist_ok=True)
            template = Template(tmp)
            sockets = Sockets(rundir, logdir=tmp)
            machine = Machine(vm_config(self.kernel, self.initrd, self.accel, sockets, cpus, memory, tmp / "share",
                                        nic, template, building=True))
            agent = AgentClient(sockets.ctl, sockets.io)
            stack.push_async_callback(agent.close)
            stack.push_async_callback(machine.stop, 0)
            await machine.start()
            await agent.connect()
            await asyncio.wait_for(agent.handshake(BUILD_TIMEOUT), BUILD_TIMEOUT)
            await machine.snapshot(template.state)  # the agent stays connected: see the module's docstring
            await machine.stop(grace=0)
            (tmp / "meta.json").write_text(json.dumps({
                "key": key, "cpus": cpus, "memory": memory, "nic": nic, "digest": self.digest, "accel": self.accel,
                "qemu": self._qemu, "recipe": RECIPE, "created": time.time(),
                "guest_uptime_at_agent": agent.guest_uptime}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
