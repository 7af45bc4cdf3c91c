"""hyperd as a new user gets it: a warm pool without being asked, and a first run that boots the distribution's
kernel while ours is built in the background (daemon/kernel_switch.py)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypercontainer.guest import kernel_build
from hypercontainer.guest.kernel import distro_kernel

from .conftest import Daemon

MAIN_ASSETS = Path("/var/lib/hypercontainer/assets")


def info(d: Daemon) -> dict:
    return json.loads(d.hyperctl("info", "--json", check=True).stdout)


def booted_from(d: Daemon, name: str) -> str:
    return json.loads(d.hyperctl("inspect", name, check=True).stdout)["vm"]["booted_from"]


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A short root: sockets' paths must stay under 108 bytes."""
    root = Path(tempfile.mkdtemp(prefix="hc-pd-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_hyperd_with_no_flags_keeps_a_pool_and_grows_it_when_pods_outrun_it(busybox_tar: Path,
                                                                              short_root: Path) -> None:
    d = Daemon(short_root, HYPERCONTAINER_POOL="")  # as started with no flags (network aside: none here)
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        boot = info(d)["boot"]
        assert boot["policy"] == "pool" and boot["pool"]["auto"] and boot["pool"]["size"] == 1, boot
        d.wait_pool_ready()
        # hyperctl run with no flags takes the pool VM
        r = d.hyperctl("run", "--name", "first", "busybox", "echo", "warm")
        assert (r.returncode, r.stdout) == (0, b"warm\n"), r.stderr
        assert booted_from(d, "first").startswith("pool:")
        d.wait_pool_ready()
        # two pods at once: one VM was ready, the other pod found none; the pool keeps one more from then on
        procs = [d.popen("run", "--name", f"burst{i}", "busybox", "true", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE) for i in range(2)]
        assert [p.wait(120) for p in procs] == [0, 0], [p.stderr.read() for p in procs if p.stderr]
        froms = sorted(booted_from(d, f"burst{i}").split(":")[0] for i in range(2))
        assert froms[1] == "pool" and froms[0] != "pool", froms
        pool = info(d)["boot"]["pool"]
        assert pool["size"] == 2 and pool["misses"] >= 1, (pool, [ln for ln in d.log.read_text().splitlines()
                                                                  if "pool" in ln])
        d.wait_pool_ready()
        assert info(d)["boot"]["pool"]["ready"] == 2
    finally:
        d.stop()


def test_pool_0_turns_the_pool_off(hyperd: Daemon) -> None:
    """The suite's hyperds run with --pool 0 (conftest.py): no pool, the default policy takes templates."""
    boot = info(hyperd)["boot"]
    assert boot["policy"] == "pool" and boot["pool"] is None
    assert not (hyperd.rundir / "pool").exists() or not any((hyperd.rundir / "pool").iterdir())


def test_a_first_run_boots_the_distribution_kernel_and_switches_to_ours_once_built(busybox_tar: Path,
                                                                                   short_root: Path) -> None:
    """An assets cache with no kernel of ours: pods boot the distribution's VM kernel at once; hyperd builds ours
    in the background (here a stand-in command that copies the kernel `make assets` built, instead of ten minutes
    of compiling), then moves new pods and the pool onto it and says so in an event. A pod started before keeps
    its kernel."""
    own = kernel_build.built(MAIN_ASSETS)
    assert own, "make assets builds our kernel before the tests"
    assets = short_root / "assets"
    assets.mkdir()
    distro = distro_kernel(assets)  # what the first run fetches (apt-get download, a few seconds)
    gate = short_root / "build-may-finish"
    stand_in = (f"sh -c 'echo guest kernel: compiling; while [ ! -e {gate} ]; do sleep 0.2; done; "
                f"cp -a {shlex.quote(str(own.image.parent))} \"$HYPERCONTAINER_ASSETS/kernel-own-standin\"'")
    d = Daemon(short_root, HYPERCONTAINER_ASSETS=str(assets), HYPERCONTAINER_POOL="1",
               HYPERCONTAINER_KERNEL_BUILD_COMMAND=stand_in)
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        i = info(d)
        assert i["guest"]["kernel_release"] == distro.release and i["guest"]["build"]["state"] == "building", i
        assert "Own kernel:       building, compiling" in d.hyperctl("info", check=True).stdout.decode()
        r = d.hyperctl("run", "-d", "--name", "before", "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        r = d.hyperctl("exec", "before", "uname", "-r")
        assert r.stdout.decode().strip() == distro.release
        assert booted_from(d, "before") == "cold"  # Debian's cloud kernel has no 9p: no template, no pool VM
        since = str(time.time() - 1)
        gate.touch()
        for _ in range(600):  # the switch probes the accelerator with the new kernel first
            if (i := info(d))["guest"]["kernel_release"] == own.release:
                break
            time.sleep(0.2)
        assert i["guest"]["kernel_release"] == own.release and i["guest"]["build"]["state"] == "built", i
        ev = d.hyperctl("events", "--since", since, "--until", "0s")
        assert b" daemon kernel-switch hyperd " in ev.stdout, ev.stdout + ev.stderr
        assert f"kernel={own.release}, previous={distro.release}".encode() in ev.stdout
        d.wait_pool_ready()
        r = d.hyperctl("run", "--name", "after", "busybox", "uname", "-r")
        assert r.stdout.decode().strip() == own.release, r.stderr
        assert booted_from(d, "after").startswith("pool:")
        r = d.hyperctl("exec", "before", "uname", "-r")  # the pod from before keeps its kernel
        assert r.stdout.decode().strip() == distro.release
        assert json.loads((assets / "current.json").read_text())["kernel_release"] == own.release
    finally:
        d.stop()
