"""runv, the OCI runtime CLI, with real VMs: its own lifecycle (modelled on runc's tests), then driven by the real
clients on this machine — podman, containerd's ctr and dockerd — each with its state in a temp directory."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypercontainer import procs
from hypercontainer.cli.runv.state import Store
from hypercontainer.spec import oci
from hypercontainer.storage.mount import mounts_under, umount
from hypercontainer.vm import confine, uids

from .conftest import BIN, REPO

pytestmark = pytest.mark.timeout(600)
RUNV = str(BIN / "runv")
ASSETS = os.environ.get("HYPERCONTAINER_ASSETS", "/var/lib/hypercontainer/assets")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is missing: make test installs it (tools/bootstrap.sh)")
    return path


def unmount_all(root: Path) -> None:
    for mp in sorted(mounts_under(root), key=lambda p: len(str(p)), reverse=True):
        try:
            umount(mp)
        except OSError:
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)


@pytest.fixture(scope="module")
def rootfs_tar(busybox_tar: Path, tmp_path_factory) -> Path:
    """The busybox image's one layer."""
    out = tmp_path_factory.mktemp("layer")
    with tarfile.open(busybox_tar) as t:
        layer = next(m for m in t.getmembers() if m.name.endswith("layer.tar"))
        (out / "layer.tar").write_bytes(t.extractfile(layer).read())  # type: ignore[union-attr]
    return out / "layer.tar"


class Runv:
    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.env = dict(os.environ, HYPERCONTAINER_ASSETS=ASSETS)

    def __call__(self, *args: str, cwd: Path | None = None, timeout: float = 120,
                 input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([RUNV, "--root", str(self.root), "--log", str(self.log), "--log-format", "json",
                               *args], cwd=cwd, env=self.env, capture_output=True, timeout=timeout, input=input)

    def detached(self, *args: str) -> subprocess.CompletedProcess:
        """create / run -d: the shim keeps the stdio it inherits (the container's), so files, not pipes."""
        out, err = self.root.parent / f"out-{time.monotonic_ns()}", self.root.parent / f"err-{time.monotonic_ns()}"
        with open(out, "wb") as o, open(err, "wb") as e:
            r = subprocess.run([RUNV, "--root", str(self.root), "--log", str(self.log), "--log-format", "json",
                                *args], env=self.env, stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=120)
        return subprocess.CompletedProcess(r.args, r.returncode, out.read_bytes(), err.read_bytes())

    def state(self, cid: str) -> dict:
        r = self("state", cid)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def wait_status(self, cid: str, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(cid)["status"] == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"{cid} never became {status}: {self.state(cid)}")


@pytest.fixture
def runv(tmp_path: Path):
    r = Runv(tmp_path / "runv-root", tmp_path / "runv-log.json")
    yield r
    for cid in (r.root.iterdir() if r.root.exists() else []):
        r("delete", "--force", cid.name)
    unmount_all(tmp_path)


@pytest.fixture
def bundle(tmp_path: Path, rootfs_tar: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    with tarfile.open(rootfs_tar) as t:
        t.extractall(b / "rootfs", filter="tar")
    subprocess.run([RUNV, "spec", "--bundle", str(b)], check=True)
    return b


def configure(bundle: Path, args: list[str], readonly: bool = True, **process: object) -> None:
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"].update(args=args, terminal=False, **process)
    cfg["root"]["readonly"] = readonly
    (bundle / "config.json").write_text(json.dumps(cfg))


# ---- runv's own lifecycle --------------------------------------------------------------------------------------
def test_version_features_spec(tmp_path: Path) -> None:
    out = subprocess.run([RUNV, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("runv version ") and "\nspec: 1." in out
    features = json.loads(subprocess.run([RUNV, "features"], capture_output=True, check=True).stdout)
    assert features["ociVersionMax"].startswith("1.")
    subprocess.run([RUNV, "spec", "--bundle", str(tmp_path)], check=True)
    assert json.loads((tmp_path / "config.json").read_text())["process"]["args"] == ["sh"]


def test_state_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`runv state ID | grep -q ...`: a reader that went away ends the writer as SIGPIPE would (141), without a
    traceback."""
    (tmp_path / "root" / "c1").mkdir(parents=True)
    (tmp_path / "root" / "c1" / "state.json").write_text(json.dumps({"id": "c1", "bundle": str(tmp_path),
                                                                      "status": "stopped", "pid": 0}))
    p = subprocess.Popen([RUNV, "--root", str(tmp_path / "root"), "state", "c1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.stdout and p.stderr
    p.stdout.close()
    err = p.stderr.read()
    assert (p.wait(timeout=30), err) == (141, b"")


def imported(argv: list[str]) -> set[str]:
    """The modules a Python command line imports (`-X importtime`)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=60)
    return {line.split("|")[2].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def test_the_engines_hot_verbs_and_the_shim_import_only_what_they_need(tmp_path: Path) -> None:
    """Every engine call is a new runv process: state, start, kill and delete, as engines give them, leave click,
    the pod core, pydantic's models and asyncio alone; the shim imports the pod core for the boot, after create has
    answered. A verb the hot path does not take goes to the full command line."""
    heavy = {"click", "asyncio", "pydantic", "hypercontainer.spec.pod", "hypercontainer.spec.oci",
             "hypercontainer.pod.pod", "hypercontainer.network.manager"}
    main = "from hypercontainer.cli.runv.hot import main; main()"
    log = ["--log", str(tmp_path / "log.json"), "--log-format=json"]
    for verb in (["state", "c1"], ["start", "c1"], ["kill", "c1", "9"], ["kill", "--all", "c1", "KILL"],
                 ["delete", "--force", "c1"], ["delete", "c1"],
                 ["create", "--bundle", str(tmp_path / "none"), "--pid-file=/dev/null", "--no-pivot", "c1"]):
        assert not heavy & imported(["-c", main, "--root", str(tmp_path), *log, *verb]), verb
    assert "click" in imported(["-c", main, "--root", str(tmp_path), "list"])
    assert "click" in imported(["-c", main, "--root", str(tmp_path), "kill", "--bogus", "c1"])
    shim = imported(["-c", "import hypercontainer.cli.runv.shim"])
    assert "hypercontainer.spec.oci" in shim and not {"hypercontainer.pod.pod", "hypercontainer.network.manager",
                                                        "hypercontainer.spec.pod"} & shim


def test_run_relays_stdio_and_exit_code(runv: Runv, bundle: Path) -> None:
    configure(bundle, ["sh", "-c", "read x; echo out $x; echo err >&2; exit 3"])
    r = runv("run", "--bundle", str(bundle), "r1", input=b"hello\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out hello\n", b"err\n")
    assert runv("state", "r1").returncode == 1  # run removes what it made
    assert not mounts_under(runv.root)


def test_create_start_state_kill_delete(runv: Runv, bundle: Path, tmp_path: Path) -> None:
    configure(bundle, ["sleep", "300"])
    pid_file = tmp_path / "init.pid"
    r = runv.detached("create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1")
    assert r.returncode == 0, r.stderr
    st = runv.state("c1")
    assert st["status"] == "created" and st["id"] == "c1" and st["bundle"] == str(bundle)
    assert int(pid_file.read_text()) == st["pid"] and Path(f"/proc/{st['pid']}").exists()
    assert runv("create", "--bundle", str(bundle), "c1").returncode == 1  # the id is taken
    assert runv("start", "c1").returncode == 0
    assert runv.state("c1")["status"] == "running"
    # the share's mounts live in the shim's mount namespace alone: no host directory becomes a mount point
    assert f" {runv.root / 'c1'}/" in Path(f"/proc/{st['pid']}/mountinfo").read_text()
    assert not mounts_under(runv.root)
    assert runv("start", "c1").returncode == 1
    r = runv("delete", "c1")
    assert r.returncode == 1 and b"not stopped" in r.stderr
    assert "not stopped" in runv.log.read_text().splitlines()[-1]  # {"level":"error","msg":...} for the shim
    assert json.loads(runv.log.read_text().splitlines()[-1])["level"] == "error"
    ids = runv("list", "--format", "json")
    assert [s["id"] for s in json.loads(ids.stdout)] == ["c1"]
    assert json.loads(runv("ps", "--format", "json", "c1").stdout) == [st["pid"]]
    assert runv("kill", "c1", "TERM").returncode == 0
    runv.wait_status("c1", "stopped")
    r = runv("kill", "c1", "9")
    assert r.returncode == 1 and b"not running" in r.stderr
    assert runv("delete", "c1").returncode == 0
    assert runv("state", "c1").returncode == 1
    assert not (runv.root / "c1").exists() and not mounts_under(runv.root)


def test_delete_force_of_a_running_container(runv: Runv, bundle: Path) -> None:
    configure(bundle, ["sleep", "300"])
    assert runv.detached("run", "-d", "--bundle", str(bundle), "c2").returncode == 0
    st = runv.state("c2")
    vm_pid = json.loads((runv.root / "c2" / "state.json").read_text())["vm_pid"]
    assert runv("pause", "c2").returncode == 0 and runv.state("c2")["status"] == "paused"
    assert runv("resume", "c2").returncode == 0 and runv.state("c2")["status"] == "running"
    assert runv("delete", "--force", "c2").returncode == 0
    for _ in range(100):
        if not Path(f"/proc/{st['pid']}").exists() and not Path(f"/proc/{vm_pid}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{vm_pid}").exists(), "the VM outlived delete --force"
    assert runv("delete", "--force", "c2").returncode == 0  # already gone: fine with --force
    assert runv("delete", "c2").returncode == 1


def test_delete_force_after_the_shim_was_killed(runv: Runv, bundle: Path) -> None:
    """kill -9 of the shim leaves its VM running: delete --force stops it, says so in --log, and no traceback."""
    configure(bundle, ["sleep", "300"])
    assert runv.detached("run", "-d", "--bundle", str(bundle), "k1").returncode == 0
    st = json.loads((runv.root / "k1" / "state.json").read_text())
    os.kill(st["pid"], signal.SIGKILL)
    for _ in range(100):
        if not Path(f"/proc/{st['pid']}").exists():
            break
        time.sleep(0.05)
    assert running(st["vm_pid"]), "the VM went with its shim: nothing to show"
    uid, cgroup = confine.inspect(st["vm_pid"])  # what the shim held for the VM
    assert uid and cgroup and (uids.LEASES / str(uid)).exists()
    try:
        r = runv("delete", "--force", "k1")
        assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
        assert not running(st["vm_pid"]), "the VM outlived delete --force"  # gone, or dead and not reaped by init
    finally:
        procs.kill_if_ours(st["vm_pid"], st["vm_start"], "")  # a failure leaves no VM behind
    last = json.loads(runv.log.read_text().splitlines()[-1])
    assert last["level"] == "warning" and "shim" in last["msg"] and "was gone" in last["msg"], last
    assert f"VM (pid {st['vm_pid']}) was stopped" in last["msg"], last
    assert runv("state", "k1").returncode == 1 and not (runv.root / "k1").exists()
    assert not (uids.LEASES / str(uid)).exists() and not any(p.exists() for p in cgroup.paths)
    assert not processes_of(runv, "k1")  # virtiofsd neither
    assert not mounts_under(runv.root)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_exec_foreground_and_detached(runv: Runv, bundle: Path, tmp_path: Path) -> None:
    configure(bundle, ["sleep", "300"], readonly=False)
    assert runv.detached("run", "-d", "--bundle", str(bundle), "c3").returncode == 0
    r = runv("exec", "c3", "sh", "-c", "cat; echo $X; exit 4", input=b"in\n")
    assert (r.returncode, r.stdout) == (4, b"in\n\n")
    proc = {"args": ["sh", "-c", "echo $X > /tmp/x; sleep 1"], "env": ["X=from-process-json"], "cwd": "/"}
    (tmp_path / "p.json").write_text(json.dumps(proc))
    r = runv.detached("exec", "--detach", "--pid-file", str(tmp_path / "e.pid"), "--process",
                      str(tmp_path / "p.json"), "c3")
    assert r.returncode == 0, r.stderr
    assert int((tmp_path / "e.pid").read_text()) > 0
    time.sleep(2)
    assert runv("exec", "c3", "cat", "/tmp/x").stdout == b"from-process-json\n"
    r = runv("exec", "c3", "no-such-command")
    assert r.returncode != 0 and b"no-such-command" in r.stderr
    # A quick process's status is never lost to the exec's late stdin EOF (the shim used to close on it, the
    # connection was reset and runv exec exited 255 about once in twenty).
    codes = [runv("exec", "c3", "sh", "-c", "echo x >&2; exit 3").returncode for _ in range(30)]
    assert set(codes) == {3}, codes


def sandbox_and_member(runv: Runv, bundle: Path, tmp_path: Path, rootfs_tar: Path) -> tuple[dict, Path]:
    """A CRI sandbox "sb" running `sleep 300` from `bundle` (its own VM), and a second bundle with its own root
    whose config (returned, to change and write) joins it (containerd's CRI annotations)."""
    configure(bundle, ["sleep", "300"], readonly=False)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "sb"}
    (bundle / "config.json").write_text(json.dumps(cfg))
    assert runv.detached("run", "-d", "--bundle", str(bundle), "sb").returncode == 0
    member = tmp_path / "member"
    (member / "rootfs").mkdir(parents=True)
    with tarfile.open(rootfs_tar) as t:
        t.extractall(member / "rootfs", filter="tar")
    cfg["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb"}
    return cfg, member


def test_two_containers_in_one_vm_by_annotation(runv: Runv, bundle: Path, tmp_path: Path,
                                                rootfs_tar: Path) -> None:
    """containerd's CRI annotations: the sandbox boots the VM, a container of that sandbox joins it."""
    cfg, member = sandbox_and_member(runv, bundle, tmp_path, rootfs_tar)
    cfg["process"]["args"] = ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; ps; exit 5"]
    # CRI's pod-wide PID namespace (shareProcessNamespace): the member names the sandbox's.
    sb_pid = runv.state("sb")["pid"]
    cfg["linux"]["namespaces"] = [*(n for n in cfg["linux"].get("namespaces", []) if n.get("type") != "pid"),
                                  {"type": "pid", "path": f"/proc/{sb_pid}/ns/pid"}]
    (member / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(member), "m1")
    assert r.returncode == 5, r.stderr
    boot_id = runv("exec", "sb", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    lines = r.stdout.splitlines()
    assert lines[0] == boot_id  # the same kernel: one VM
    assert any(b"sleep 300" in line for line in lines[1:]), r.stdout  # and the sandbox's processes are there
    # Without it (CRI's default): one VM still, but a PID namespace of its own, as in Kubernetes.
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n.get("type") != "pid"]
    (member / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(member), "m2")
    assert r.returncode == 5 and r.stdout.splitlines()[0] == boot_id, r.stderr
    assert not any(b"sleep 300" in line for line in r.stdout.splitlines()[1:])
    # exec into a container that joined the VM: its own root, stdin, exit code (CRI's ExecSync into a pod's app)
    (member / "rootfs" / "marker").write_text("the member's root\n")
    cfg["process"]["args"] = ["sleep", "300"]
    (member / "config.json").write_text(json.dumps(cfg))
    assert runv.detached("run", "-d", "--bundle", str(member), "m3").returncode == 0
    r = runv("exec", "m3", "sh", "-c", "cat /marker; cat; exit 3", input=b"typed\n")
    assert (r.returncode, r.stdout) == (3, b"the member's root\ntyped\n"), r.stderr
    assert runv("exec", "sb", "cat", "/marker").returncode != 0  # not in the sandbox's container
    vm = json.loads((runv.root / "sb" / "state.json").read_text())["vm_pid"]
    assert runv("delete", "--force", "sb").returncode == 0
    for _ in range(100):
        if not Path(f"/proc/{vm}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{vm}").exists()


def test_sysctls_apply_in_the_guest(runv: Runv, bundle: Path) -> None:
    configure(bundle, ["cat", "/proc/sys/net/core/somaxconn"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["sysctl"] = {"net.core.somaxconn": "777"}
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(bundle), "s1")
    assert (r.returncode, r.stdout) == (0, b"777\n"), r.stderr
    assert "linux.sysctl" not in runv.log.read_text()  # applied, not reported as ignored


def test_hooks_run_on_the_host_with_the_state(runv: Runv, bundle: Path, tmp_path: Path) -> None:
    """prestart (docker's networking), createRuntime and poststart see the container's state and the shim's pid;
    poststop runs at delete; a failing prestart hook fails create and leaves nothing."""
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\n{{ echo \"$1 $HOOK_ENV\"; cat; echo; }} >> {log}\n")
    hook.chmod(0o755)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"].update(args=["sleep", "300"], terminal=False)
    cfg["hooks"] = {kind: [{"path": str(hook), "args": ["hook.sh", kind], "env": ["HOOK_ENV=set"]}]
                    for kind in ("prestart", "createRuntime", "poststart", "poststop")}
    (bundle / "config.json").write_text(json.dumps(cfg))
    assert runv.detached("create", "--bundle", str(bundle), "h1").returncode == 0
    pid = runv.state("h1")["pid"]
    assert runv("start", "h1").returncode == 0
    assert runv("delete", "--force", "h1").returncode == 0
    lines = log.read_text().splitlines()
    assert [line for line in lines[::2]] == [f"{k} set" for k in ("prestart", "createRuntime", "poststart",
                                                                   "poststop")]
    states = [json.loads(line) for line in lines[1::2]]
    assert [s["pid"] for s in states[:3]] == [pid] * 3 and states[0]["id"] == "h1"
    # the shim's own network namespace (docker's hook moves the container's interface there)
    assert states[0]["status"] == "creating" and states[2]["status"] == "running"
    cfg["hooks"] = {"prestart": [{"path": "/bin/false"}]}
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv.detached("create", "--bundle", str(bundle), "h2")
    assert r.returncode == 1 and b"prestart hook /bin/false exited with status 1" in r.stderr, r.stderr
    assert not (runv.root / "h2").exists() and not processes_of(runv, "h2")


def test_the_shim_joins_the_configs_memory_cgroup_and_a_guest_oom_shows_there(runv: Runv, bundle: Path) -> None:
    """containerd learns of OOM kills from the host memory cgroup of the container's pid (the shim): the shim joins
    linux.cgroupsPath, and an OOM recorded there reaches an eventfd registered the way containerd's runc shim
    registers its own (cgroup v1: cgroup.event_control on memory.oom_control), and kills nothing."""
    from hypercontainer.cli.runv import hostoom

    configure(bundle, ["sleep", "300"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["cgroupsPath"] = f"/hc-test-{os.getpid()}/o1"
    (bundle / "config.json").write_text(json.dumps(cfg))
    assert runv.detached("run", "-d", "--bundle", str(bundle), "o1").returncode == 0
    cg = hostoom.memory_cgroup(oci.load(bundle))
    assert cg and str(runv.state("o1")["pid"]) in (cg / "cgroup.procs").read_text().split()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    control = os.open(cg / "memory.oom_control", os.O_RDONLY)
    try:
        (cg / "cgroup.event_control").write_text(f"{efd} {control}")
        assert not select.select([efd], [], [], 0)[0]
        assert hostoom.record_oom(cg)
        assert select.select([efd], [], [], 5)[0] and os.eventfd_read(efd) >= 1
        assert runv.state("o1")["status"] == "running"  # nothing was killed: the shim lives on
        assert "oom_kill 0" in (cg / "memory.oom_control").read_text()
        assert runv("exec", "o1", "true").returncode == 0
        assert "9223372036854771712" in (cg / "memory.limit_in_bytes").read_text()  # the limit lifted again
    finally:
        os.close(efd)
        os.close(control)
        assert runv("delete", "--force", "o1").returncode == 0
    assert not cg.exists()
    cg.parent.rmdir()
    # containerd's CRI gives a relative path (its pod names no parent): from the runtime's own cgroup, as runc does
    cfg["linux"]["cgroupsPath"] = "o2"
    (bundle / "config.json").write_text(json.dumps(cfg))
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if "memory" in line.split(":")[1].split(","))
    assert hostoom.memory_cgroup(oci.load(bundle)) == Path("/sys/fs/cgroup/memory", own.strip("/"), "o2")


def processes_of(runv: Runv, cid: str) -> list[Path]:
    """Processes (QEMU, virtiofsd, a shim) whose command line names the container's runtime directory."""
    rundir = str(Store(runv.root).rundir(cid)).encode()
    return [p for p in Path("/proc").glob("[0-9]*") if rundir in read_cmdline(p)]


def test_bad_bundles_leave_nothing(runv: Runv, bundle: Path, tmp_path: Path) -> None:
    r = runv("create", "--bundle", str(tmp_path / "nowhere"), "b1")
    assert r.returncode == 1 and b"has no config.json" in r.stderr
    (bundle / "config.json").write_text("{not json")
    r = runv("create", "--bundle", str(bundle), "b2")
    assert r.returncode == 1 and b"not JSON" in r.stderr
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "missing"},
                                                    "process": {"args": ["true"]}}))
    r = runv("create", "--bundle", str(bundle), "b3")
    assert r.returncode == 1 and b"is not a directory" in r.stderr
    assert runv("create", "--bundle", str(bundle), "bad/id").returncode == 1
    assert not list(runv.root.iterdir()) and not mounts_under(tmp_path)
    assert not [p for cid in ("b1", "b2", "b3") for p in processes_of(runv, cid)]


def test_a_missing_command_fails_create_as_runcs_does(runv: Runv, bundle: Path, tmp_path: Path) -> None:
    """A command that is certainly not in the root fails `create` with runc's words (engines make that exit 127);
    one the host cannot decide (here it comes from a volume over a PATH directory) is the guest's to find."""
    configure(bundle, ["no-such-command"])
    r = runv("create", "--bundle", str(bundle), "m1")
    assert r.returncode == 1 and b'exec: "no-such-command": executable file not found in $PATH' in r.stderr, r
    configure(bundle, ["/no/such"])
    r = runv("create", "--bundle", str(bundle), "m2")
    assert r.returncode == 1 and b"stat /no/such: no such file or directory" in r.stderr, r
    assert not list(runv.root.iterdir()) and not mounts_under(tmp_path)
    assert not [p for cid in ("m1", "m2") for p in processes_of(runv, cid)]
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tool").write_text("#!/bin/sh\necho tool ran\n")
    (tools / "tool").chmod(0o755)
    configure(bundle, ["tool"], env=["PATH=/opt/tools:/bin"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["mounts"].append({"destination": "/opt/tools", "type": "bind", "source": str(tools), "options": ["rbind"]})
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(bundle), "m3")
    assert (r.returncode, r.stdout) == (0, b"tool ran\n"), r


def test_a_create_that_fails_once_the_boot_began_leaves_nothing(runv: Runv, bundle: Path, tmp_path: Path) -> None:
    """The VM begins to boot before create answers (its last steps overlap the boot): a create that fails after
    that (here its shim cannot listen: a directory holds its socket's path) stops the boot; no QEMU, mount, state
    or process of the container is left, and the error names the cause."""
    configure(bundle, ["true"])
    sock = Store(runv.root).sock("f1")
    (sock / "taken").mkdir(parents=True)
    try:
        r = runv("create", "--bundle", str(bundle), "f1")
        assert r.returncode == 1 and b"shim.sock" in r.stderr, r.stderr
        assert not processes_of(runv, "f1")
        assert not list(runv.root.iterdir()) and not mounts_under(tmp_path)
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)


# ---- podman ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman(busybox_tar: Path):
    need("podman")
    d = Path(tempfile.mkdtemp(prefix="hc-podman-"))
    (d / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                                       '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(d / "containers.conf"), HYPERCONTAINER_ASSETS=ASSETS)
    (d / "net").mkdir()  # its own network configs: `system reset` below removes every one it sees
    base = ["podman", "--root", str(d / "root"), "--runroot", str(d / "runroot"), "--storage-driver", "vfs",
            "--runtime", RUNV, "--network-config-dir", str(d / "net")]

    def pm(*args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, capture_output=True, timeout=timeout, **kw)

    assert pm("load", "-i", str(busybox_tar)).returncode == 0
    pm.argv, pm.env = base, env  # type: ignore[attr-defined]
    yield pm
    pm("rm", "-af")
    pm("system", "reset", "-f")
    unmount_all(d)
    shutil.rmtree(d, ignore_errors=True)


def test_podman_run_rm_echo(podman) -> None:
    r = podman("run", "--rm", "--network", "none", "busybox", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    r = podman("run", "--rm", "--network", "none", "busybox", "uname", "-r")
    assert r.stdout.strip().decode() != os.uname().release  # the VM's kernel
    assert podman("run", "--rm", "--network", "none", "busybox", "sh", "-c", "exit 7").returncode == 7


def test_podman_run_of_a_missing_command_exits_127(podman) -> None:
    """As with runc: the command looked up at create, podman's exit status 127."""
    r = podman("run", "--rm", "--network", "none", "busybox", "no-such-command")
    assert r.returncode == 127 and b"executable file not found" in r.stderr, r


def test_podman_run_it_through_a_pty(podman) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(podman.argv[0], [*podman.argv, "run", "-it", "--rm", "--network", "none", "busybox", "sh"],
                   podman.env)
    out = b""
    deadline = time.monotonic() + 120
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"# " in out:
            os.write(fd, b"echo typed-$((6*7)); tty; exit 9\r")
            sent = True
    _, status = os.waitpid(pid, 0)
    assert b"typed-42" in out and b"/dev/pts/" in out, out
    assert os.waitstatus_to_exitcode(status) == 9


def test_podman_exec_stop_and_rm(podman) -> None:
    r = podman("run", "-d", "--name", "pm1", "--network", "none", "busybox", "sleep", "300")
    assert r.returncode == 0, r.stderr
    r = podman("exec", "pm1", "sh", "-c", "echo in-exec; exit 4")
    assert (r.returncode, r.stdout) == (4, b"in-exec\n")
    assert podman("exec", "-i", "pm1", "cat", input=b"piped\n").stdout == b"piped\n"
    t0 = time.monotonic()
    assert podman("stop", "-t", "2", "pm1").returncode == 0
    assert time.monotonic() - t0 < 30
    status = podman("ps", "-a", "--filter", "name=pm1", "--format", "{{.Status}}").stdout.decode()
    assert status.startswith("Exited (143)")  # SIGTERM reached sleep as PID 1's child... and ended it
    r = podman("run", "-d", "--name", "pm2", "--network", "none", "busybox", "sh", "-c",
               "trap '' TERM; sleep 300")
    assert r.returncode == 0
    assert podman("stop", "-t", "1", "pm2").returncode == 0  # TERM ignored: then KILL
    status = podman("ps", "-a", "--filter", "name=pm2", "--format", "{{.Status}}").stdout.decode()
    assert status.startswith("Exited (137)")
    r = podman("run", "-d", "--name", "pm3", "--network", "none", "busybox", "sleep", "300")
    assert podman("rm", "-f", "pm1", "pm2", "pm3").returncode == 0
    assert podman("ps", "-aq").stdout.strip() == b""


# ---- containerd and dockerd -----------------------------------------------------------------------------------
def wait_for(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@contextlib.contextmanager
def private_containerd(busybox_tar: Path, prefix: str = "hc-ctd-") -> Iterator[tuple[list[str], Path]]:
    """A containerd of its own (temp root, state and socket; its CRI plugin off) with busybox imported: ctr's argv
    and the directory. Stopped, its shims killed and the directory removed afterwards."""
    need("containerd")
    d = Path(tempfile.mkdtemp(prefix=prefix))
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                                   f'[grpc]\n  address = "{sock}"\n'
                                   '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
    daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    ctr = ["ctr", "--address", str(sock)]
    try:
        wait_for(lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0)
        subprocess.run([*ctr, "images", "import", "--base-name", "docker.io/library/busybox", str(busybox_tar)],
                       check=True, capture_output=True, timeout=120)
        yield ctr, d
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        subprocess.run(["pkill", "-f", f"containerd-shim.*{d}"], capture_output=True)
        unmount_all(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def containerd(busybox_tar: Path):
    with private_containerd(busybox_tar) as (ctr, _):
        yield ctr


def test_ctr_run(containerd) -> None:
    env = dict(os.environ, HYPERCONTAINER_ASSETS=ASSETS)
    r = subprocess.run([*containerd, "run", "--rm", "--runc-binary", RUNV, "docker.io/library/busybox:latest",
                        "ctr1", "sh", "-c", "echo hi from ctr; exit 6"], capture_output=True, timeout=180, env=env)
    assert (r.returncode, r.stdout) == (6, b"hi from ctr\n"), r.stderr


@pytest.fixture(scope="module")
def dockerd(busybox_tar: Path):
    need("dockerd")
    d = Path(tempfile.mkdtemp(prefix="hc-dk-"))
    (d / "daemon.json").write_text(json.dumps({"runtimes": {"runv": {"path": RUNV}}, "storage-driver": "vfs"}))
    sock = f"unix://{d}/docker.sock"
    env = dict(os.environ, HYPERCONTAINER_ASSETS=ASSETS)
    daemon = subprocess.Popen(["dockerd", "--data-root", str(d / "data"), "--exec-root", str(d / "exec"), "-H", sock,
                               "--pidfile", str(d / "docker.pid"), "--bridge", "none", "--iptables=false",
                               "--ip-masq=false", "--ip6tables=false", "--config-file", str(d / "daemon.json")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=env)
    docker = ["docker", "-H", sock]
    wait_for(lambda: subprocess.run([*docker, "version"], capture_output=True).returncode == 0)
    subprocess.run([*docker, "load", "-i", str(busybox_tar)], check=True, capture_output=True, timeout=120)
    yield docker
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    unmount_all(d)
    shutil.rmtree(d, ignore_errors=True)


def test_docker_run_with_the_runv_runtime(dockerd) -> None:
    r = subprocess.run([*dockerd, "run", "--rm", "--runtime", "runv", "busybox", "sh", "-c", "uname -r; exit 3"],
                       capture_output=True, timeout=180)
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip().decode() != os.uname().release


def test_repo_layout_has_no_second_vm_implementation() -> None:
    """runv goes through the pod core: nothing under cli/ builds a QEMU command line or speaks the protocol."""
    for path in (REPO / "src" / "hypercontainer" / "cli").rglob("*.py"):
        text = path.read_text()
        assert "qemu-system" not in text and "protocol.codec" not in text, path
