"""Per-container lifecycle in a running pod: containers come and go (REMOVE_CONTAINER frees the agent's slot,
the host unmounts the root), a pod kept alive outlives all of them, names can be used again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hypercontainer.cli.rest import Rest
from hypercontainer.errors import HCError

from .conftest import Daemon

pytestmark = pytest.mark.vm


def state(d: Daemon, pod: str, name: str | None = None) -> str:
    info = json.loads(d.hyperctl("inspect", pod, check=True).stdout)
    if name is None:
        return info["state"]
    return next((c["state"] for c in info["containers"] if c["name"] == name), "gone")


def wait_for(pred, tries: int = 600, every: float = 0.05) -> None:
    for _ in range(tries):
        if pred():
            return
        time.sleep(every)
    raise AssertionError("condition never held")


def share_mounts(d: Daemon, share: str) -> int:
    return sum(1 for line in d.mountinfo().splitlines() if share in line.split()[4])


def test_kept_alive_pod_outlives_its_containers(hyperd: Daemon) -> None:
    hyperd.hyperctl("run", "-d", "--keep-alive", "--name", "sandbox", "busybox", "true", check=True)
    try:
        wait_for(lambda: state(hyperd, "sandbox", "sandbox") == "exited")
        time.sleep(1)
        assert state(hyperd, "sandbox") == "running"  # no container runs, the VM stays
        r = hyperd.hyperctl("create", "-c", "sandbox", "--name", "late", "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        r = hyperd.hyperctl("exec", "sandbox/late", "sh", "-c", "echo $((6*7)); cat /proc/1/cmdline")
        assert r.returncode == 0 and r.stdout.startswith(b"42\nsleep"), (r.stdout, r.stderr)
        r = hyperd.hyperctl("rm", "sandbox/late")
        assert r.returncode != 0 and b"is running" in r.stderr
        assert hyperd.hyperctl("rm", "sandbox/sandbox").returncode == 0  # an exited one goes without -f
        assert hyperd.hyperctl("rm", "-f", "sandbox/late").returncode == 0
        info = json.loads(hyperd.hyperctl("inspect", "sandbox", check=True).stdout)
        assert info["state"] == "running" and info["containers"] == []
        r = hyperd.hyperctl("create", "-c", "sandbox", "--name", "late", "busybox", "sh", "-c", "echo again")
        assert r.returncode == 0, r.stderr  # the name is free again
        wait_for(lambda: state(hyperd, "sandbox", "late") == "exited")
        assert hyperd.hyperctl("logs", "-c", "late", "sandbox").stdout == b"again\n"
    finally:
        hyperd.hyperctl("rm", "-f", "sandbox")


def test_pod_not_kept_alive_stops_with_its_last_container(hyperd: Daemon) -> None:
    hyperd.hyperctl("run", "-d", "--name", "short", "busybox", "sleep", "600", check=True)
    try:
        vm = json.loads(hyperd.hyperctl("inspect", "short", check=True).stdout)["vm"]["pid"]
        assert hyperd.hyperctl("rm", "-f", "short/short").returncode == 0
        wait_for(lambda: not Path(f"/proc/{vm}").exists())
        assert "Exited" in hyperd.hyperctl("ps", "-a").stdout.decode().split("short")[1].splitlines()[0]
    finally:
        hyperd.hyperctl("rm", "-f", "short")


def test_three_hundred_containers_come_and_go(hyperd: Daemon) -> None:
    """create -> start -> exit -> remove, 300 times in one pod: all succeed; the agent's containers, processes
    and fds and the host's mounts under the share end where they started."""
    hyperd.hyperctl("run", "-d", "--keep-alive", "--name", "churn", "busybox", "sleep", "3600", check=True)
    rest = Rest(hyperd.rundir / "hyperd.sock", 60)
    try:
        share = json.loads(hyperd.hyperctl("inspect", "churn", check=True).stdout)["runtime"]["share_dir"]
        before = rest.request("GET", "/v1/pods/churn/agent")
        mounts = share_mounts(hyperd, share)
        for i in range(300):
            name = f"c{i % 3}"
            rest.request("POST", "/v1/pods/churn/containers", json={"container": {
                "name": name, "image": "busybox", "command": ["true"]}})
            for _ in range(400):
                try:
                    rest.request("DELETE", f"/v1/pods/churn/containers/{name}")
                    break
                except HCError as e:
                    assert "is running" in e.message, e.message
                    time.sleep(0.01)
            else:
                raise AssertionError(f"container {name} never exited")
        after = rest.request("GET", "/v1/pods/churn/agent")
        assert after == before, (before, after)
        assert share_mounts(hyperd, share) == mounts
        info = json.loads(hyperd.hyperctl("inspect", "churn", check=True).stdout)
        assert [c["name"] for c in info["containers"]] == ["churn"] and info["state"] == "running"
    finally:
        hyperd.hyperctl("rm", "-f", "churn")
