"""Which accelerator works here, found by a real, time-boxed boot of the guest kernel; cached.

/dev/kvm existing proves nothing (some hosts only run special guest kernels under it), so KVM counts only
when the real kernel and initramfs boot to init and power off within the time box.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import VMError
from .machine import Machine
from .qemu import Sockets, VMConfig

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class Accel:
    name: str  # kvm | tcg
    reason: str
    probe_seconds: float | None = None


async def probe_kvm(kernel: Path, initrd: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, float, str]:
    """Boots with KVM to an init that powers off at once, confined as every VM is (a KVM that only works for an
    unconfined QEMU is no use to pods). Returns (worked, seconds, why not)."""
    rundir = Path(tempfile.mkdtemp(prefix="hc-probe-"))
    machine = Machine(VMConfig(kernel, initrd, Sockets(rundir), accel="kvm", memory_mib=128,
                               cmdline=("hc.probe",), with_ports=False))
    t0 = time.monotonic()
    try:
        await machine.start()
        rc = await asyncio.wait_for(machine.wait(), timeout)
        took = time.monotonic() - t0
        if rc != 0:
            err = machine.cfg.sockets.qemu_log.read_text(errors="replace").strip().splitlines()
            return False, took, f"qemu -accel kvm failed: {err[-1] if err else rc}"
        return True, took, "probe boot under KVM succeeded"
    except TimeoutError:
        return False, timeout, f"a KVM guest did not boot within {timeout:.0f} s"
    except VMError as e:
        return False, time.monotonic() - t0, f"qemu -accel kvm failed: {e.message[-300:]}"
    finally:
        await machine.stop(grace=0)
        shutil.rmtree(rundir, ignore_errors=True)


async def detect(kernel: Path, initrd: Path, digest: str, cache: Path, forced: str | None = None) -> Accel:
    """`forced` (kvm or tcg: hyperd --accel, HYPERCONTAINER_ACCEL) skips the probe; None probes (cached)."""
    if forced:
        if forced not in ("kvm", "tcg"):
            raise VMError(f"the accelerator must be kvm or tcg, not {forced!r}")
        return Accel(forced, "set by --accel / HYPERCONTAINER_ACCEL")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "no usable /dev/kvm")
    key = f"{digest}:{os.stat('/dev/kvm').st_rdev}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Accel(**cached["accel"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ok, took, why = await probe_kvm(kernel, initrd)
    accel = Accel("kvm" if ok else "tcg", why, round(took, 3))
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "accel": asdict(accel)}))
    tmp.rename(cache)
    return accel
