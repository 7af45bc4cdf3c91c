"""runv's VM factory (cli/runv/factory.py): a container whose VM needs no NIC takes a VM the factory made ready,
runs in it like any other, and its VM is freed by the factory once the shim has stopped it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypercontainer.cli.runv import factory as vm_factory
from hypercontainer.cli.runv.state import Store

from .test_runv import RUNV, Runv, bundle, configure, rootfs_tar, runv, wait_for  # noqa: F401 - fixtures


def qemus_under(path: Path) -> list[int]:
    """QEMU processes whose command line names a path below `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and str(path).encode() in cmd:
                found.append(int(proc.name))
    return found


@pytest.fixture
def factory(runv: Runv, tmp_path: Path) -> Iterator[subprocess.Popen]:  # noqa: F811
    with open(tmp_path / "factory.log", "wb") as log:
        proc = subprocess.Popen([RUNV, "--root", str(runv.root), "factory", "--size", "1"], env=runv.env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: vm_factory.status(runv.root) == {"ready": 1, "size": 1, "lent": 0, "shims": 1}, 180)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def sleeper_in_a_lent_vm(runv: Runv, bundle: Path, cid: str) -> dict:  # noqa: F811
    """A `sleep 300` container in a network namespace of its own, still empty (a VM without a NIC: the factory's),
    created and started; its state (state.json)."""
    configure(bundle, ["sleep", "300"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "network"})
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv.detached("create", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr
    r = runv("start", cid)
    assert r.returncode == 0, r.stderr
    st = json.loads((runv.root / cid / "state.json").read_text())
    assert st["booted_from"].startswith("pool:") and st["vm_lent"], st  # a lent VM: no boot, no restore
    return st


def test_a_container_takes_a_ready_vm_and_the_factory_frees_it(runv: Runv, bundle: Path,  # noqa: F811
                                                                factory) -> None:
    home = vm_factory.home(runv.root)
    st = sleeper_in_a_lent_vm(runv, bundle, "f1")
    vm = st["vm_pid"]
    assert vm in qemus_under(home / "vms")
    r = runv("exec", "f1", "sh", "-c", "echo hello from $(cat /proc/1/comm)")
    assert (r.returncode, r.stdout) == (0, b"hello from sleep\n"), r.stderr
    wait_for(lambda: vm_factory.status(runv.root) == {"ready": 1, "size": 1, "lent": 1, "shims": 1}, 120)  # refilled
    assert runv("kill", "f1", "KILL").returncode == 0
    runv.wait_status("f1", "stopped")
    assert runv("delete", "f1").returncode == 0
    wait_for(lambda: not Path(f"/proc/{vm}").exists())
    wait_for(lambda: (vm_factory.status(runv.root) or {}).get("lent") == 0)  # freed: uid, cgroup, directory
    assert len(list((home / "vms").iterdir())) == 1  # the one ready
    factory.send_signal(signal.SIGTERM)
    assert factory.wait(60) == 0
    assert vm_factory.status(runv.root) is None and not qemus_under(home)
    assert not vm_factory.socket_path(runv.root).exists()


def test_a_container_without_a_factory_vm_boots_its_own(runv: Runv, bundle: Path, factory) -> None:  # noqa: F811
    """A VM with a NIC is never lent (the factory's have none): a network namespace with an interface boots from
    the template, and the factory keeps its VM."""
    configure(bundle, ["true"])  # runv spec's config: no network namespace (the host's, which has interfaces)
    r = runv("run", "--bundle", str(bundle), "f2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: vm_factory.status(runv.root) == {"ready": 1, "size": 1, "lent": 0, "shims": 1}, 120)
    assert os.path.exists(vm_factory.socket_path(runv.root))


def test_a_killed_shims_lent_vm_is_stopped_by_the_factory(runv: Runv, bundle: Path,  # noqa: F811
                                                                     factory) -> None:
    """kill -9 of the warm shim (not its stand-in, the container's pid): the stand-in exits, the factory stops the
    VM it lent."""
    st = sleeper_in_a_lent_vm(runv, bundle, "f3")
    os.kill(st["shim_pid"], signal.SIGKILL)
    wait_for(lambda: runv.state("f3")["status"] == "stopped")
    # the factory saw its borrower die: the VM is stopped and freed, delete finds nothing left to stop
    wait_for(lambda: not Path(f"/proc/{st['vm_pid']}").exists())
    wait_for(lambda: (vm_factory.status(runv.root) or {}).get("lent") == 0)
    r = runv("delete", "--force", "f3")
    assert r.returncode == 0, r.stderr


def test_a_shim_that_began_a_template_build_waits_for_it(runv: Runv, bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    """A container whose start began the template build (no template yet for its VM) and that ends first: its
    shim waits for the build before it exits, so no template QEMU outlives it, and the template is there for the
    next container."""
    assets = tmp_path / "assets"
    assets.mkdir()
    for item in Path(runv.env["HYPERCONTAINER_ASSETS"]).iterdir():
        if item.name != "templates":
            (assets / item.name).symlink_to(item)
    runv.env["HYPERCONTAINER_ASSETS"] = str(assets)
    configure(bundle, ["true"])
    r = runv("run", "--bundle", str(bundle), "t1")
    assert r.returncode == 0, r.stderr
    assert [d for d in (assets / "templates").iterdir() if (d / "meta.json").exists()]
    assert not qemus_under(assets / "templates") and not qemus_under(Store(runv.root).rundir("t1"))


def test_a_new_factory_leaves_the_vms_lent_by_the_last_one(runv: Runv, bundle: Path, factory,  # noqa: F811
                                                            tmp_path: Path) -> None:
    """A factory that stops while a container runs in a VM it lent, then starts again: the container's VM (its
    share, its mounts) is left alone and serves on; the new factory makes its own ready VMs."""
    st = sleeper_in_a_lent_vm(runv, bundle, "f5")
    factory.send_signal(signal.SIGTERM)
    assert factory.wait(60) == 0
    with open(tmp_path / "factory2.log", "wb") as log:
        again = subprocess.Popen([RUNV, "--root", str(runv.root), "factory", "--size", "1"], env=runv.env,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (vm_factory.status(runv.root) or {}).get("ready") == 1, 180)
        assert Path(f"/proc/{st['vm_pid']}").exists()
        r = runv("exec", "f5", "cat", "/proc/1/comm")
        assert (r.returncode, r.stdout) == (0, b"sleep\n"), r.stderr
        assert runv("kill", "f5", "KILL").returncode == 0
        runv.wait_status("f5", "stopped")
        assert runv("delete", "f5").returncode == 0
        wait_for(lambda: not Path(f"/proc/{st['vm_pid']}").exists())
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(60)


def warm_shim_log(tmp_path: Path) -> int:
    return (tmp_path / "factory.log").read_text().count("handed out warm shim")


def test_create_takes_a_warm_shim_its_stand_in_relays_stdio_and_exit_code(runv: Runv, bundle: Path,  # noqa: F811
                                                                           factory, tmp_path: Path) -> None:
    """`runv create` with a factory running: a warm shim creates the container; the process that stands for it is
    runv create's fork, in the network namespace the config asks for; stdio and the exit code come through it."""
    configure(bundle, ["sh", "-c", "read x; echo out $x; echo err >&2; exit 3"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "network"})
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(bundle), "w1", input=b"hello\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out hello\n", b"err\n")
    assert warm_shim_log(tmp_path) == 1
    assert runv("state", "w1").returncode == 1 and not (runv.root / "w1").exists()
    wait_for(lambda: (vm_factory.status(runv.root) or {}).get("shims") == 1, 120)  # another one ready


def test_signals_to_the_stand_in_reach_the_container_and_killing_it_ends_all(runv: Runv, bundle: Path,  # noqa: F811
                                                                             factory, tmp_path: Path) -> None:
    st = sleeper_in_a_lent_vm(runv, bundle, "w2")
    assert warm_shim_log(tmp_path) == 1 and st["shim_pid"] != st["pid"]
    assert os.readlink(f"/proc/{st['pid']}/ns/net") != os.readlink("/proc/self/ns/net")  # its own, empty
    assert b"runv" in Path(f"/proc/{st['pid']}/cmdline").read_bytes()  # runv create's fork, not the shim
    os.kill(st["pid"], signal.SIGTERM)  # forwarded: sleep ends with it
    runv.wait_status("w2", "stopped")
    assert json.loads((runv.root / "w2" / "state.json").read_text())["exit_code"] == 128 + signal.SIGTERM
    assert runv("delete", "w2").returncode == 0  # waits for the shim to stop the VM
    assert not Path(f"/proc/{st['vm_pid']}").exists() and not Path(f"/proc/{st['shim_pid']}").exists()

    wait_for(lambda: (vm_factory.status(runv.root) or {}).get("shims") == 1, 120)
    st = sleeper_in_a_lent_vm(runv, bundle, "w3")
    os.kill(st["pid"], signal.SIGKILL)  # the container's pid is gone: so is the container, its VM and shim
    wait_for(lambda: not Path(f"/proc/{st['vm_pid']}").exists() and not Path(f"/proc/{st['shim_pid']}").exists())
    runv.wait_status("w3", "stopped")
    assert runv("delete", "w3").returncode == 0


def test_a_warm_shim_with_other_settings_is_not_used(runv: Runv, bundle: Path, factory,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """A runv create whose HYPERCONTAINER_* settings differ from the factory's: the warm shim refuses it, and
    create starts a shim of its own."""
    runv.env["HYPERCONTAINER_TEST_OTHER"] = "1"
    configure(bundle, ["true"])
    r = runv.detached("create", "--bundle", str(bundle), "w4")
    assert r.returncode == 0, r.stderr
    st = json.loads((runv.root / "w4" / "state.json").read_text())
    assert "shim_pid" not in st and warm_shim_log(tmp_path) == 1
    assert runv("delete", "--force", "w4").returncode == 0


def test_the_stand_in_keeps_no_file_the_engine_gave_runv_create(runv: Runv, bundle: Path, factory,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    """An engine that passed runv create a pipe (a sync pipe, --preserve-fds) sees its end once create returns,
    though the stand-in, runv create's fork, lives on with the container."""
    configure(bundle, ["sleep", "300"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "network"})
    (bundle / "config.json").write_text(json.dumps(cfg))
    r, w = os.pipe()
    try:
        with open(tmp_path / "out", "wb") as out:
            done = subprocess.run([RUNV, "--root", str(runv.root), "create", "--bundle", str(bundle), "w5"],
                                  env=runv.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(w,),
                                  timeout=120)
        assert done.returncode == 0, (tmp_path / "out").read_bytes()
        os.close(w)
        w = -1
        st = json.loads((runv.root / "w5" / "state.json").read_text())
        assert st.get("shim_pid") and Path(f"/proc/{st['pid']}").exists()  # a warm shim's stand-in, running
        assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b""  # nobody holds the write end
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        runv("delete", "--force", "w5")
