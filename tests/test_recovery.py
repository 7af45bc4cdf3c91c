"""A hyperd killed while a pod starts: what it spawned is recorded before it runs, and the next hyperd removes
it (no QEMU or virtiofsd without a pod, no mount, no lease)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Daemon

pytestmark = pytest.mark.vm


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def test_killed_during_a_cold_boot(busybox_tar: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path, HYPERCONTAINER_BOOT="cold")
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        client = d.popen("run", "-d", "--name", "booting", "busybox", "sleep", "600", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        pids: dict = {}
        for _ in range(600):  # until QEMU (and virtiofsd) are spawned, while the guest still boots
            r = d.hyperctl("inspect", "booting")
            if r.returncode == 0:
                info = json.loads(r.stdout)
                rt = info["runtime"]
                if info["state"] == "starting" and rt["vm_pid"]:
                    pids = {k: rt[k] for k in ("vm_pid", "share_pid") if rt[k]}
                    break
            time.sleep(0.01)
        assert pids and d.proc, "the pod's QEMU was never recorded while it booted"
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        client.wait(30)
        assert all(alive(p) for p in pids.values())  # the crash left them running
        d.start()
        for _ in range(100):
            if not any(alive(p) for p in pids.values()):
                break
            time.sleep(0.05)
        assert not any(alive(p) for p in pids.values()), pids
        line = [x for x in d.hyperctl("ps", "-a", check=True).stdout.decode().splitlines() if "booting" in x]
        assert len(line) == 1 and "Exited (255)" in line[0], line
        assert str(d.statedir) not in d.mountinfo()
        d.hyperctl("rm", "booting", check=True)
    finally:
        d.stop()
