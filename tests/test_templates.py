"""VM templates with real VMs: a pod started from a template behaves like a cold one, clones do not share their
random state, hostnames or clocks, and a changed agent makes a new template."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hypercontainer.guest import assets
from hypercontainer.pod.templates import Templates

from .conftest import Daemon

pytestmark = pytest.mark.timeout(600)


def run(d: Daemon, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return d.hyperctl("run", "--rm", *args, input=input)


def template_ready(d: Daemon) -> None:
    """hyperd builds the default template in the background at start; wait until a pod uses it."""
    for _ in range(120):
        d.hyperctl("run", "--name", "probe-tmpl", "--boot", "template", "busybox", "true")
        info = json.loads(d.hyperctl("inspect", "probe-tmpl").stdout or b"{}")
        d.hyperctl("rm", "-f", "probe-tmpl")
        if info.get("vm", {}).get("booted_from") not in (None, "cold"):
            return
        time.sleep(0.5)
    raise AssertionError("the template never became ready")


def test_template_pod_behaves_like_a_cold_one(hyperd: Daemon) -> None:
    template_ready(hyperd)
    script = "echo out; echo err >&2; read x; echo got $x; ls /sys/class/net; exit 7"
    results = {}
    for boot in ("cold", "template"):
        r = run(hyperd, "-i", "--boot", boot, "busybox", "sh", "-c", script, input=b"hello\n")
        results[boot] = (r.returncode, r.stdout, r.stderr)
    assert results["cold"] == results["template"] == (7, b"out\ngot hello\nlo\n", b"err\n")

    pod = hyperd.hyperctl("run", "-d", "--boot", "template", "busybox", "sleep", "300", check=True).stdout
    pod_id = pod.decode().strip()
    try:
        info = json.loads(hyperd.hyperctl("inspect", pod_id, check=True).stdout)
        assert info["vm"]["booted_from"] != "cold" and "restored" in info["timings"]
        r = hyperd.hyperctl("exec", "-i", pod_id, "sh", "-c", "cat; exit 4", input=b"via exec\n")
        assert (r.returncode, r.stdout) == (4, b"via exec\n")
        r = hyperd.hyperctl("exec", "-t", pod_id, "sh", "-c", "tty")
        assert r.stdout.startswith(b"/dev/pts/")
    finally:
        hyperd.hyperctl("rm", "-f", pod_id)


def test_clones_do_not_share_random_state_hostname_or_clock(hyperd: Daemon) -> None:
    template_ready(hyperd)
    script = "hostname; head -c 16 /dev/urandom | od -An -tx1; cat /proc/sys/kernel/random/boot_id; date +%s"
    outs = []
    for name in ("clone-a", "clone-b"):
        r = run(hyperd, "--boot", "template", "--hostname", name, "busybox", "sh", "-c", script)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.decode().split("\n"))
    (host_a, rand_a, boot_a, clock_a), (host_b, rand_b, boot_b, clock_b) = (o[:4] for o in outs)
    assert (host_a, host_b) == ("clone-a", "clone-b")
    assert rand_a != rand_b and boot_a != boot_b
    assert abs(int(clock_a) - time.time()) < 60 and abs(int(clock_b) - time.time()) < 60


def test_changed_agent_makes_a_new_template(hyperd: Daemon, tmp_path: Path) -> None:
    """The template key covers the initramfs, so the agent: an agent that differs by one byte gets a template of
    its own (booted to "agent ready" with that agent), and the old one is pruned."""
    info = json.loads(hyperd.hyperctl("info", "--json", check=True).stdout)
    cache = Path(hyperd.env["HYPERCONTAINER_ASSETS"])
    kernel = assets.choose_kernel(cache)
    agent, _ = assets.build_agent(cache)
    changed = tmp_path / "hc-agent"
    changed.write_bytes(agent.read_bytes() + b"\0changed")  # trailing bytes: the same program, another file
    initrds = [assets.build_initrd(tmp_path, a, kernel) for a in (agent, changed)]
    digests = [assets.digest(kernel, i) for i in initrds]
    assert digests[0] != digests[1]
    home, rundir = tmp_path / "templates", tmp_path / "run"
    accel = info["accelerator"]["name"]

    async def build(initrd: Path, digest: str) -> tuple[Templates, Path]:
        t = Templates(kernel.image, initrd, accel, digest, home, rundir)
        t.prune()
        return t, (await t.get(1, 128)).home

    old, old_home = asyncio.run(build(initrds[0], digests[0]))
    new, new_home = asyncio.run(build(initrds[1], digests[1]))
    assert old.key(1, 128) != new.key(1, 128)
    assert new_home.exists() and not old_home.exists()
    assert json.loads((new_home / "meta.json").read_text())["digest"] == digests[1]
    shutil.rmtree(home)


@pytest.fixture(scope="module")
def pooled(busybox_tar: Path, tmp_path_factory):
    """A hyperd keeping two VMs ready (pool policy)."""
    d = Daemon(tmp_path_factory.mktemp("pool"), HYPERCONTAINER_BOOT="pool", HYPERCONTAINER_POOL="2")
    d.start()
    d.hyperctl("load", "-i", str(busybox_tar), check=True)
    yield d
    d.stop()


def pool_dirs(d: Daemon) -> list[str]:
    pool = d.rundir / "pool"
    return sorted(p.name for p in pool.iterdir()) if pool.exists() else []


def test_pool_pods_behave_like_cold_ones_and_are_replaced(pooled: Daemon) -> None:
    pooled.wait_pool_ready()
    before = pool_dirs(pooled)
    script = "echo out; echo err >&2; read x; echo got $x; hostname; head -c 16 /dev/urandom | od -An -tx1; exit 7"
    outs = []
    for name in ("pool-a", "pool-b"):
        r = pooled.hyperctl("run", "-i", "--name", name, "--hostname", name, "busybox", "sh", "-c", script,
                            input=b"hello\n")
        assert r.returncode == 7 and r.stderr == b"err\n", r.stderr
        lines = r.stdout.decode().split("\n")
        assert lines[:3] == ["out", "got hello", name]
        outs.append(lines[3])
        info = json.loads(pooled.hyperctl("inspect", name, check=True).stdout)
        assert info["vm"]["booted_from"].startswith("pool:") and "resumed" in info["timings"]
        pooled.hyperctl("rm", name, check=True)
    assert outs[0] != outs[1]  # two pool VMs of one template: their own random state
    pooled.wait_pool_ready()  # taken VMs are replaced
    assert len(pool_dirs(pooled)) == 2 and not set(pool_dirs(pooled)) & set(before)


def qemus_under(path: Path) -> set[int]:
    """The QEMU processes whose command line names something under `path`."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"qemu-system" in argv and str(path).encode() in argv:
            found.add(int(proc.name))
    return found


def test_a_crashed_hyperds_pool_vms_go_and_its_pool_pods_stay(busybox_tar: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path, HYPERCONTAINER_BOOT="pool", HYPERCONTAINER_POOL="1")
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        d.wait_pool_ready()
        d.hyperctl("run", "-d", "--name", "kept", "busybox", "sleep", "300", check=True)
        info = json.loads(d.hyperctl("inspect", "kept", check=True).stdout)
        assert info["vm"]["booted_from"].startswith("pool:")
        pod_dir = Path(info["runtime"]["rundir"])
        d.wait_pool_ready()  # a spare VM besides the pod's
        assert len(qemus_under(d.rundir / "pool")) == 2 and len(pool_dirs(d)) == 2
        d.proc.kill()  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        d.env["HYPERCONTAINER_POOL"] = "0"
        d.start()
        assert qemus_under(d.rundir / "pool") == qemus_under(pod_dir)  # the spare's QEMU is gone, the pod's runs
        assert pool_dirs(d) == [pod_dir.name]
        r = d.hyperctl("exec", "kept", "echo", "still here")
        assert r.returncode == 0 and r.stdout == b"still here\n", r.stderr
    finally:
        d.stop()
    assert not qemus_under(tmp_path)


def test_a_template_build_a_dead_hyperd_left_is_swept(busybox_tar: Path) -> None:
    """hyperd killed (-9) while it builds a template: its builder QEMU is orphaned; the next hyperd kills it and
    removes its directories (the half-made template included)."""
    import tempfile

    from .test_crash_recovery import vmms_under

    root = Path(tempfile.mkdtemp(prefix="hc-tb-"))  # short: the builder's sockets live under it
    d = Daemon(root)
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        # an unusual size: its template is built now, in the background (this pod boots cold meanwhile); hyperd
        # is killed as soon as the builder runs (a build takes about a second)
        home = Path(d.env["HYPERCONTAINER_ASSETS"]) / "templates"
        for meta in home.glob("*/meta.json"):
            if json.loads(meta.read_text())["memory"] == 272:
                shutil.rmtree(meta.parent)
        run = d.popen("run", "-d", "--name", "odd", "--memory", "272", "busybox", "sleep", "600",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        builds = d.rundir / "templates"
        deadline = time.monotonic() + 60
        while not (builders := vmms_under(builds)):
            assert time.monotonic() < deadline, d.log.read_text()[-1500:]
        assert d.proc
        d.proc.kill()
        d.proc.wait()
        run.wait(30)
        assert vmms_under(builds) == builders, "the builder went with hyperd: nothing to sweep"
        d.start()
        assert not vmms_under(builds) and not list(builds.iterdir())
        assert not [t for t in home.iterdir() if t.name.startswith(".")], "a half-made template is left"
    finally:
        d.hyperctl("rm", "-f", "odd")
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
        for meta in (Path(d.env["HYPERCONTAINER_ASSETS"]) / "templates").glob("*/meta.json"):
            if json.loads(meta.read_text())["memory"] == 272:  # none should be, but the shared assets stay clean
                shutil.rmtree(meta.parent, ignore_errors=True)


def test_a_changed_device_set_makes_a_new_template(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A template restores only into the device set it was saved with: a device added to QEMU's command line (or
    another machine option) changes the key; paths (a clone's own sockets and files) do not."""
    from hypercontainer.pod import templates as tm

    t = Templates(tmp_path / "vmlinux", tmp_path / "initrd", "tcg", "digest", tmp_path / "home", tmp_path / "run")
    before = t.key(1, 256)
    assert Templates(tmp_path / "k2", tmp_path / "i2", "tcg", "digest", tmp_path / "h2", tmp_path / "r2") \
        .key(1, 256) == before
    real = tm.command
    monkeypatch.setattr(tm, "command", lambda cfg: [*real(cfg), "-device", "virtio-balloon-device"])
    assert t.key(1, 256) != before
    monkeypatch.setattr(tm, "command", lambda cfg: ["qemu64" if a == "max" else a for a in real(cfg)])  # -cpu
    assert t.key(1, 256) != before
