"""runv's shim killed (SIGKILL) at each step of a container's life (issue 17): after created, after started, with an
exec running. The engine's next call (`state`, `delete --force`) finds it gone and leaves no QEMU or virtiofsd,
mount, socket or state behind, and a new container of the same id runs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hypercontainer.storage.mount import mounts_under

from .test_crash_recovery import vmms_under
from .test_runv import Runv, bundle, configure, rootfs_tar, runv  # noqa: F401  (fixtures)

pytestmark = pytest.mark.vm
STEPS = ("created", "running", "exec")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def booted(runv: Runv, cid: str, timeout: float = 60) -> None:  # noqa: F811
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if json.loads((runv.root / cid / "state.json").read_text()).get("booted_from"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{cid}: its VM never came up")


@pytest.mark.parametrize("step", STEPS)
def test_the_shim_killed_at_each_step(runv: Runv, bundle: Path, tmp_path: Path, step: str) -> None:  # noqa: F811
    configure(bundle, ["sleep", "300"], readonly=False)
    assert runv.detached("create", "--bundle", str(bundle), "k1").returncode == 0
    if step in ("running", "exec"):
        assert runv("start", "k1").returncode == 0
    if step == "exec":
        assert runv.detached("exec", "--detach", "k1", "sleep", "200").returncode == 0
    shim = runv.state("k1")["pid"]
    booted(runv, "k1")  # create returns while the VM boots (the shim records it once it is up)
    assert vmms_under(tmp_path), "no VM to leave behind"
    os.kill(shim, signal.SIGKILL)
    assert gone(shim)
    assert runv.state("k1")["status"] == "stopped"
    r = runv("delete", "--force", "k1")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    while vmms_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vmms_under(tmp_path), "a VM outlived its shim and the delete"
    assert not mounts_under(tmp_path)
    leftovers = [p for p in runv.root.rglob("*")] if runv.root.exists() else []
    assert leftovers == [], leftovers
    # the id is free again
    configure(bundle, ["echo", "again"], readonly=False)
    r = runv("run", "--bundle", str(bundle), "k1")
    assert (r.returncode, r.stdout) == (0, b"again\n"), r
