"""QEMU or virtiofsd killed (SIGKILL, through hyperd's hidden --crash-at POINT:VICTIM hook) at each step of a cold
and a template start, with real VMs (issue 17): hyperd lives on, the start ends (a clone falls back to a cold boot,
or the pod fails with its reason), `rm` leaves no QEMU, virtiofsd, mount or lease of it, and a pod that was
running before runs on. (hyperd itself killed at each step: test_crash_recovery.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import Daemon
from .test_crash_recovery import inspect, leftovers, wait_ready

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]
CASES = [  # (kind, victim, point): where the victim exists (a clone's share is QEMU's own 9p: no virtiofsd)
    *[("cold", "virtiofsd", p) for p in ("share", "qemu", "agent", "start-pod", "container")],
    *[("cold", "qemu", p) for p in ("qemu", "agent", "start-pod", "container")],
    *[("template", "qemu", p) for p in ("qemu", "restored", "agent", "start-pod", "container")],
]


def wait_ended(d: Daemon, name: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(d.hyperctl("inspect", name, check=True).stdout)
        if state["state"] in ("exited", "failed") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_a_vmm_process_killed_at_each_step(busybox_tar: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        wait_ready(d, "template")
        d.hyperctl("run", "-d", "--name", "keeper", "--boot", "template", "busybox", "sleep", "3600", check=True)
        outcomes = {}
        for i, (kind, victim, point) in enumerate(CASES):
            assert d.proc
            d.proc.terminate()  # the keeper runs on (live restore); the next hyperd is armed
            d.proc.wait(30)
            d.env["HYPERCONTAINER_CRASH_AT"] = f"{point}:{victim}"
            d.start()
            wait_ready(d, kind)
            name = f"v{i}-{kind}-{victim}-{point}"
            r = d.hyperctl("run", "-d", "--name", name, "--boot", kind, "busybox", "sleep", "600", timeout=300)
            assert d.proc.poll() is None, f"hyperd died when {victim} was killed at {point} of a {kind} start"
            assert f"crash point {point}: killing {victim}" in d.log.read_text(), (kind, victim, point, r.stderr)
            state = json.loads(d.hyperctl("inspect", name, check=True).stdout)
            if r.returncode == 0 and point == "container":  # killed as it ran: its pod ends
                state = wait_ended(d, name)
            outcomes[name] = (r.returncode, state["state"], state.get("error"))
            if r.returncode != 0:  # a failed start says why (a boot failure adds QEMU's words), its pod too
                assert r.stderr.startswith(b"hyperctl: ") and b"Traceback" not in r.stderr, (name, r)
                assert state["state"] == "failed" and state["error"], (name, state)
            d.hyperctl("rm", "-f", name, check=True)
            keeper = inspect(d, "keeper")
            assert keeper["state"] == "running"
            assert d.hyperctl("exec", "keeper", "echo", "alive").stdout == b"alive\n"
            assert leftovers(d, keeper, None) == [], (name, leftovers(d, keeper, None))
        # a clone whose QEMU died before it ran falls back to a cold boot and runs; once the pod runs, its VM's end
        # or its file server's is said
        assert outcomes["v9-template-qemu-qemu"][1] == "running", outcomes
        assert outcomes["v8-cold-qemu-container"][1:] == ("exited", "the VM (QEMU) was killed by signal 9 while the "
                                                          "pod ran"), outcomes
        assert outcomes["v4-cold-virtiofsd-container"][1:] == (
            "failed", "the pod's file server (virtiofsd) was killed by signal 9 while the pod ran"), outcomes
    finally:
        d.env.pop("HYPERCONTAINER_CRASH_AT", None)
        d.stop()
