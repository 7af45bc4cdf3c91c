"""A hostile guest (issue 17): a test build of the agent (hostile.c, `make hostile`) breaks the protocol on cue,
an EXEC of `hostile:MODE` (docs/protocol.md, "Hostile guest"). hyperd must keep its other pods working, keep its
memory bounded, mark the hostile pod failed with the breach named, and leave nothing of it behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from hypercontainer.guest import assets as guest_assets

from .conftest import AGENT_SRC, Daemon

MARKER = b"HC-HOSTILE-AGENT-BUILD"  # hostile.c's hostile_marker
SHIPPED = Path(os.environ.get("HYPERCONTAINER_ASSETS", "/var/lib/hypercontainer/assets"))


def build(target: str, out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(AGENT_SRC), f"OUT={out}", f"{out}/{target}"], check=True)
    return out / target


def test_shipped_agent_is_not_hostile(tmp_path: Path) -> None:
    """The hostile code is compiled only into hc-agent-hostile: never into hc-agent or the initramfs hyperd boots."""
    assert MARKER not in build("hc-agent", tmp_path).read_bytes()
    assert MARKER in build("hc-agent-hostile", tmp_path).read_bytes()
    current = SHIPPED / "current.json"
    if not current.exists():
        pytest.skip(f"no assets built in {SHIPPED}")
    initrd = Path(json.loads(current.read_text())["initrd"])
    assert MARKER not in initrd.read_bytes(), initrd


def hostile_assets(dest: Path) -> dict[str, str]:
    """An assets directory whose agent is the hostile one: built where guest/assets.py's build_agent() looks for
    the agent of the current sources, so hyperd's own ensure() makes the initramfs from it; the shipped kernel
    linked in. Returns the environment for the Daemon."""
    shipped = json.loads((SHIPPED / "current.json").read_text())
    kernel_home = Path(shipped["kernel"]).parent
    dest.mkdir(parents=True)
    (dest / kernel_home.name).symlink_to(kernel_home)
    digest = guest_assets._tree_hash(guest_assets.AGENT_SRC, ("*.c", "*.h", "Makefile"))
    binary = build("hc-agent-hostile", dest / "hostile-build")
    (dest / f"agent-{digest}").mkdir()
    shutil.copy(binary, dest / f"agent-{digest}" / "hc-agent")
    env = {"HYPERCONTAINER_ASSETS": str(dest), "HYPERCONTAINER_BOOT": "cold",
           "HYPERCONTAINER_KERNEL": "own" if kernel_home.name.startswith("kernel-own-") else "distro"}
    accel = SHIPPED / "accel.json"
    if accel.exists():  # the probe's answer for the shipped assets holds for these: no second 15 s probe
        env["HYPERCONTAINER_ACCEL"] = json.loads(accel.read_text())["accel"]["name"]
    return env


@pytest.fixture(scope="module")
def hostile(busybox_tar: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (overlay mounts, QEMU)")
    if not (SHIPPED / "current.json").exists():
        pytest.skip(f"no assets built in {SHIPPED}")
    root = Path(tempfile.mkdtemp(prefix="hc-hostile-"))
    d = Daemon(root)
    d.env.update(hostile_assets(root / "assets"))
    try:
        d.start()
        booted = Path(json.loads((root / "assets" / "current.json").read_text())["initrd"])
        assert MARKER in booted.read_bytes(), "hyperd must boot the hostile agent here"
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def inspect(d: Daemon, pod: str) -> dict:
    return json.loads(d.hyperctl("inspect", pod, check=True).stdout)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def qemu_of(rundir: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", rundir], capture_output=True, text=True).stdout.split()


def wait_state(d: Daemon, pod: str, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = inspect(d, pod)
        if info["state"] in states or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def count(pipe: IO[bytes], got: list[int], i: int) -> None:
    while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
        got[i] += len(chunk)


class RssPeak:
    """hyperd's VmRSS sampled every 0.1 s while in the `with`: `growth` (MiB) of the peak over the start."""

    def __init__(self, d: Daemon) -> None:
        assert d.proc
        self.pid = d.proc.pid
        self.before = self.peak = rss_kib(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.1)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return (self.peak - self.before) / 1024


def flood(d: Daemon, pod: str, secs: int, stall: float) -> float:
    """`hostile:flood SECS` in `pod`, its output read by a client that first stalls for `stall` s: hyperd's peak
    RSS growth in MiB meanwhile."""
    t = time.monotonic()
    with RssPeak(d) as rss:
        proc = d.popen("exec", pod, "hostile:flood", str(secs), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(stall)
        got = [0, 0]
        readers = [threading.Thread(target=count, args=(p, got, i)) for i, p in enumerate((proc.stdout, proc.stderr))]
        for reader in readers:
            reader.start()
        assert proc.wait(120) == 0
        for reader in readers:
            reader.join()
    print(f"flood {secs} s, reader stalled {stall} s: {time.monotonic() - t:.1f} s, {sum(got) >> 20} MiB relayed; "
          f"hyperd RSS {rss.before >> 10} MiB before, peak growth {rss.growth:.1f} MiB")
    assert sum(got) > 0
    return rss.growth


def assert_alive(d: Daemon) -> None:
    r = d.hyperctl("exec", "good", "echo", "still here", timeout=120)
    assert (r.returncode, r.stdout) == (0, b"still here\n"), r


def assert_gone(d: Daemon, info: dict) -> None:
    """Nothing of the pod is left: no QEMU, no mount under its state, its runtime directory removed."""
    rundir = info["runtime"]["rundir"]
    assert qemu_of(rundir) == [], rundir
    assert d.mounts_under(d.statedir / "pods" / info["id"]) == []
    assert d.mounts_under(Path(info["runtime"]["share_dir"])) == []
    assert not Path(rundir).exists(), rundir


# Each mode: what hyperd must end the pod with, and a word its error must hold. The pod as a whole fails where the
# guest broke the protocol (a frame over a limit, an event for a stream never given, a reply that never comes):
# nothing it says can be trusted any more. A forged exit is indistinguishable from a real one (the agent is the
# pod's own process manager): the container ends with the forged status, the pod exits as usual, and nothing leaks.
BREACHES = {
    "oversized": "over the 1 MiB limit",
    "oversized-io": "over the 64 KiB limit",
    "unknown-stream": "EXITED for unknown stream",
    "truncated": "no reply",
    "silence": "no reply",
    "close-ctl": "no reply",
    "close-io": "no end of output",
}


@pytest.mark.vm
def test_hostile_guest(hostile: Daemon) -> None:
    d = hostile
    assert d.proc
    t0 = time.monotonic()
    d.hyperctl("run", "-d", "--name", "good", "busybox", "sleep", "3600", check=True)
    assert_alive(d)
    pods = {mode: f"bad-{mode}" for mode in [*BREACHES, "forge-exit", "flood"]}
    for pod in pods.values():
        d.hyperctl("run", "-d", "--name", pod, "busybox", "sleep", "3600", check=True)
    print(f"pods up after {time.monotonic() - t0:.1f} s")

    # flood: valid frames as fast as the host takes them, for 8 s; the pod survives, hyperd's memory stays bounded
    growth = flood(d, pods["flood"], 8, 0.0)
    assert growth < 50, growth
    assert inspect(d, pods["flood"])["state"] == "running"
    r = d.hyperctl("exec", pods["flood"], "echo", "after the flood", timeout=120)
    assert r.stdout == b"after the flood\n", r
    assert_alive(d)

    # an event flood: EXITED for a stream whose process is long gone, for 5 s; the pod survives, hyperd's memory and
    # log stay bounded
    log_before, t = d.log.stat().st_size, time.monotonic()
    with RssPeak(d) as rss:
        r = d.hyperctl("exec", pods["flood"], "hostile:flood-events", "5", timeout=120)
        assert r.returncode == 0, r
        time.sleep(6)  # the exec is answered at once; the events come for 5 s after it
    logged = d.log.stat().st_size - log_before
    print(f"flood-events: {time.monotonic() - t:.1f} s, hyperd RSS peak growth {rss.growth:.1f} MiB, "
          f"{logged >> 10} KiB logged")
    assert rss.growth < 50 and logged < 1 << 20, (rss.growth, logged)
    assert_alive(d)

    # the breaches: each hostile pod fails with the breach named, and goes
    cues = {}
    for mode in BREACHES:
        cues[mode] = (time.time(), d.popen("exec", pods[mode], f"hostile:{mode}", stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE))
    assert_alive(d)
    for mode, words in BREACHES.items():
        began, p = cues[mode]
        info = wait_state(d, pods[mode], ("failed", "exited"), 90)
        print(f"{mode}: {info['state']} {info['finished'] - began:.1f} s after the cue: {info['error']}")
        assert info["state"] == "failed", (mode, info["state"], info["error"])
        assert words in (info["error"] or ""), (mode, info["error"])
        out, err = p.communicate(timeout=60)
        # close-io: the EXITED (status 0) came, only the output's end never did: the exec ends with that status
        assert p.returncode != 0 or mode == "close-io", (mode, out, err)
        assert_gone(d, info)
    assert_alive(d)

    # forge-exit: the first container "exited" with 99 while its sleep ran; the pod ends as if it had
    r = d.hyperctl("exec", pods["forge-exit"], "hostile:forge-exit", timeout=120)
    info = wait_state(d, pods["forge-exit"], ("failed", "exited"), 60)
    print(f"forge-exit: exec {r.returncode}, pod {info['state']} exit {info['exit_code']}: {info['error']}")
    assert info["state"] == "exited" and info["containers"][0]["exit_code"] == 99, info
    assert_gone(d, info)

    # not a breach: the VM killed under a well-behaved agent ends its pod as before, exited (its channels close
    # with it; the host does not mistake that for a guest breaking the protocol), saying what happened
    d.hyperctl("run", "-d", "--name", "victim", "busybox", "sleep", "3600", check=True)
    victim = inspect(d, "victim")
    os.kill(victim["vm"]["pid"], 9)
    info = wait_state(d, "victim", ("failed", "exited"), 60)
    assert info["state"] == "exited" and info["error"] == "the VM (QEMU) was killed by signal 9 while the pod ran", \
        info
    assert_gone(d, info)

    assert_alive(d)
    print(f"total {time.monotonic() - t0:.1f} s")


@pytest.mark.vm
def test_flood_with_a_stalled_reader(hostile: Daemon) -> None:
    """The same flood, its client not reading for 4 s: the host must slow the guest down, not buffer for it."""
    hostile.hyperctl("run", "-d", "--name", "flood-stalled", "busybox", "sleep", "3600", check=True)
    try:
        growth = flood(hostile, "flood-stalled", 6, 4.0)
    finally:
        hostile.hyperctl("rm", "-f", "flood-stalled")
    assert growth < 50, growth
