"""hyperd killed (SIGKILL, through its hidden --crash-at hook) at each step of a cold, a template and a pool start,
with real VMs: the next hyperd leaves no QEMU or virtiofsd without a pod, no mount, tap or lease of the dead start,
and the pod is gone (listed exited, `rm` leaves nothing) while a pod that was running before runs on (exec works).

One hyperd root per kind: each restart recovers the previous crash and is armed for the next point."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypercontainer.faults import POINTS
from hypercontainer.storage.mount import mounts_under

from .conftest import Daemon
from .netns import Netns, host_and_world

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]
SPARE_TAP = "hcpool"  # network/bridge_mode.py: a pool VM's tap is this + the first 8 characters of its directory
KIND_POINTS = {  # the points each kind of start passes (pod.py _build, pod/sources.py)
    "cold": tuple(p for p in POINTS if p != "restored"),
    "template": tuple(p for p in POINTS if p != "share"),  # a clone's share is QEMU's 9p: no step of its own
    "pool": tuple(p for p in POINTS if p not in ("share", "qemu", "restored")),  # a paused VM, resumed
}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int | None) -> set[int]:
    """The child processes of `pid` (none if it is gone or None)."""
    if not pid:
        return set()
    try:
        return {int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()}
    except OSError:
        return set()


def vmms_under(path: Path) -> set[int]:
    """The QEMU and virtiofsd processes whose command line names something under `path`."""
    found = set()
    for proc in Path("/proc").iterdir():
        argv = cmdline(int(proc.name)) if proc.name.isdigit() else b""
        if (b"qemu-system" in argv or b"virtiofsd" in argv) and str(path).encode() in argv:
            found.add(int(proc.name))
    return found


def inspect(d: Daemon, ref: str) -> dict:
    return json.loads(d.hyperctl("inspect", ref, check=True).stdout)


def wait_ready(d: Daemon, kind: str) -> None:
    """What the next start of `kind` takes must be there, or it would take another path (template: cold)."""
    if kind == "pool":
        d.wait_pool_ready()
    elif kind == "template":
        for _ in range(600):
            boot = json.loads(d.hyperctl("info", "--json", check=True).stdout)["boot"]
            if any(t.get("memory") == 256 and t.get("cpus") == 1 and not t.get("building")
                   and t.get("nic") == (d.netns is not None) for t in boot["templates"]):
                return
            time.sleep(0.1)
        raise AssertionError("the template never became ready")


def pool_homes(d: Daemon) -> list[Path]:
    pool = d.rundir / "pool"
    return sorted(pool.iterdir()) if pool.is_dir() else []


def leftovers(d: Daemon, keeper: dict, netns: Netns | None) -> list[str]:
    """What belongs neither to the running pod `keeper` nor to a ready pool VM (empty when all is well)."""
    rt = keeper["runtime"]
    spares = [h for h in pool_homes(d) if str(h) != rt["rundir"]]
    allowed = {rt["vm_pid"], rt["share_pid"], *children(rt["share_pid"])}  # virtiofsd's sandboxed child (cold)
    for home in spares:
        allowed.add(json.loads((home / "vm.json").read_text())["pid"])  # a spare without its record: a leak
    out = [f"{len(spares)} spare pool VMs"] if len(spares) > int(d.env.get("HYPERCONTAINER_POOL", "0")) else []
    out += [f"process {p}: {cmdline(p)[:200]!r}" for p in vmms_under(d.root) - allowed]
    ours = [d.statedir / "pods" / keeper["id"], Path(rt["rundir"]), Path(rt["share_dir"]), *spares]
    out += [f"mount {m}" for m in d.mounts_under(d.root) if not any(m == o or o in m.parents for o in ours)]
    with sqlite3.connect(d.statedir / "hyperd.db") as db:
        leases = db.execute("SELECT ip, pod_id FROM leases").fetchall()
    out += [f"lease {ip} of {pod[:12]}" for ip, pod in leases if pod != keeper["id"]]
    if netns:
        taps = {n for n in netns.links() if n.startswith("hc") and n != "hct-up"}
        kept = {keeper["network"]["tap"]} | {SPARE_TAP + h.name[:8] for h in spares}
        out += [f"tap {t}" for t in taps - kept]
        rules = netns.run("nft", "list", "table", "bridge", "hypercontainer").stdout.decode()
        out += [f"anti-spoofing rules of {t}" for t in set(re.findall(r"jump pod_(hc\w+)", rules)) - kept]
    return out


def check_path(d: Daemon, kind: str, point: str, keeper: dict) -> None:
    """Between the crash and the next start: what the dead start left shows it took its kind's path (a pool VM's
    share holds the container's root; a template clone's QEMU maps the template, a cold one does not)."""
    if kind == "pool" and point != "network":
        assert [m for m in d.mounts_under(d.rundir / "pool") if len(m.relative_to(d.rundir / "pool").parts) > 2]
    if point in ("qemu", "restored", "agent", "start-pod", "container") and kind != "pool":
        pids = vmms_under(d.rundir / "pods") - {keeper["runtime"]["vm_pid"], keeper["runtime"]["share_pid"]}
        clones = [b"/templates/" in cmdline(p) for p in pids if b"qemu-system" in cmdline(p)]
        assert clones == [kind == "template"], (kind, point, clones)


def check_recovered(d: Daemon, keeper: str, crashed: str, netns: Netns | None) -> None:
    """After a restart: the running pod was taken over, the crashed start left nothing, its pod is gone."""
    info = inspect(d, keeper)
    assert info["state"] == "running", info["state"]
    r = d.hyperctl("exec", keeper, "echo", "alive")
    assert (r.returncode, r.stdout) == (0, b"alive\n"), r.stderr
    for _ in range(100):  # processes killed by the recovery may take a moment to go
        left = leftovers(d, info, netns)
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"after a crash at {crashed}: {left}"
    line = [x for x in d.hyperctl("ps", "-a", check=True).stdout.decode().splitlines() if f" {crashed}" in x]
    assert len(line) == 1 and "Exited (255)" in line[0], line
    with sqlite3.connect(d.statedir / "hyperd.db") as db:
        (pod_id,), = db.execute("SELECT id FROM pods WHERE name = ?", (crashed,)).fetchall()
    d.hyperctl("rm", crashed, check=True)
    assert not (d.statedir / "pods" / pod_id).exists() and not (d.rundir / "pods" / pod_id[:16]).exists()
    assert not leftovers(d, info, netns)


def crash_at_each(d: Daemon, busybox_tar: Path, kinds: dict[str, tuple[str, ...]], netns: Netns | None = None) -> None:
    """Starts `d` (unarmed), runs a pod that lives throughout, then for each kind and point: a start that kills
    hyperd there, and a new hyperd (armed for the next point) that must leave nothing of it."""
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        wait_ready(d, "template")
        d.hyperctl("run", "-d", "--name", "keeper", "--boot", "template", "busybox", "sleep", "3600", check=True)
        keeper = inspect(d, "keeper")
        crashed = None
        for kind, points in kinds.items():
            for point in points:
                assert d.proc
                d.proc.kill()  # the first time only: later ones died at their crash point
                d.proc.wait()
                d.env["HYPERCONTAINER_CRASH_AT"] = point
                d.start()
                if crashed:
                    check_recovered(d, "keeper", crashed, netns)
                wait_ready(d, kind)
                crashed = f"{kind}-{point}"
                r = d.hyperctl("run", "-d", "--name", crashed, "--boot", kind, "busybox", "sleep", "600")
                assert r.returncode != 0, f"a {kind} start did not pass {point}: the pod runs"
                assert d.proc.wait(30) == -signal.SIGKILL, f"hyperd did not die at {point} of a {kind} start"
                check_path(d, kind, point, keeper)
        del d.env["HYPERCONTAINER_CRASH_AT"]
        d.start()
        assert crashed
        check_recovered(d, "keeper", crashed, netns)
    finally:
        d.env.pop("HYPERCONTAINER_CRASH_AT", None)
        if d.proc and d.proc.poll() is not None:
            d.start()
        d.stop()
        left, mounts = vmms_under(d.root), mounts_under(d.root)  # the host's: hyperd's namespace is unpinned
        for pid in left:  # what a failed recovery leaked: gone all the same, the failure reported
            os.kill(pid, signal.SIGKILL)
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
    assert not left and not mounts, (left, mounts)


@pytest.mark.parametrize("kind", list(KIND_POINTS))
def test_kill_9_at_each_step_of_a_start(kind: str, busybox_tar: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path, HYPERCONTAINER_BOOT="pool" if kind == "pool" else "template",
               HYPERCONTAINER_POOL="1" if kind == "pool" else "0")
    crash_at_each(d, busybox_tar, {kind: KIND_POINTS[kind]})


@pytest.fixture
def netns() -> Iterator[Netns]:
    host, world = host_and_world()
    yield host
    host.delete()
    world.delete()


def test_kill_9_in_bridge_mode(netns: Netns, busybox_tar: Path, tmp_path: Path) -> None:
    """Taps and leases: a cold and a pool start killed once their network is attached, and once the agent
    answered."""
    d = Daemon(tmp_path, netns=netns.path, HYPERCONTAINER_BOOT="pool", HYPERCONTAINER_POOL="1")
    crash_at_each(d, busybox_tar, {"cold": ("network", "agent"), "pool": ("network", "agent")}, netns)
    assert not [n for n in netns.links() if n.startswith("hc") and n != "hct-up"]
