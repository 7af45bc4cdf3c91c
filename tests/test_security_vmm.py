"""The confined VMM (issue 12), with real VMs and real QEMU: every kind of pod's QEMU runs under its own uid, with
Seccomp 2, in its own mount namespace and cgroup (limits set), with the minimal capabilities; containers cannot
leave setuid/setgid files or device nodes on the host through 9p or virtio-fs; console.log stays bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypercontainer.errors import HCError, VMError
from hypercontainer.vm import cgroups, console, uids
from hypercontainer.vm.jail import Jail, Spec, status_of
from hypercontainer.vm.machine import Machine
from hypercontainer.vm.qemu import Share, Sockets, VMConfig

from .conftest import Daemon
from .test_runv import Runv, bundle, configure, rootfs_tar, runv  # noqa: F401 - fixtures
from .test_templates import qemus_under, template_ready

pytestmark = pytest.mark.timeout(600)
NINEP_CAPS = 0b1011  # CAP_CHOWN | CAP_DAC_OVERRIDE | CAP_FOWNER
CAP_MKNOD, CAP_SETFCAP = 27, 31
MIB = 1 << 20
TMP_ROOTS = (Path("/tmp"), Path("/run/hypercontainer"), Path(os.environ.get("HYPERCONTAINER_ASSETS",
                                                                             "/var/lib/hypercontainer/assets")))


# ---- helpers -----------------------------------------------------------------------------------------------------
def cgroup_dirs(pid: int) -> dict[str, Path]:
    """controller -> the cgroup directory of `pid` (v1 memory and pids, or v2)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else ["unified"]:
            if c in ("memory", "pids"):
                out[c] = cgroups.ROOT / c / path.lstrip("/")
            elif c == "unified" and cgroups.unified():
                out["memory"] = out["pids"] = cgroups.ROOT / path.lstrip("/")
    return out


def memory_limit(d: Path) -> int:
    f = d / "memory.limit_in_bytes"
    return int((f if f.exists() else d / "memory.max").read_text())


def assert_confined_qemu(pid: int, caps: int, guest_mib: int = 256) -> dict:
    """Everything the issue asks of a running QEMU; returns its status and cgroups for further checks."""
    st = status_of(pid)
    uid = int(st["Uid"].split()[0])
    lo, hi = uids.uid_range()
    assert uid != 0 and lo <= uid <= hi and st["Uid"].split() == [str(uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(uid)] * 4 and st["Groups"] == ""
    assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
    assert int(st["CapEff"], 16) == caps and int(st["CapBnd"], 16) == caps and int(st["CapAmb"], 16) == caps
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    groups = cgroup_dirs(pid)
    for c in ("memory", "pids"):
        assert groups[c].name == f"vm-{uid}" and groups[c].parent.name == cgroups.GROUP, groups
    assert memory_limit(groups["memory"]) == (guest_mib + 512) * MIB  # TCG: guest RAM + QEMU's overhead
    assert int((groups["pids"] / "pids.max").read_text()) == 512
    limits = Path(f"/proc/{pid}/limits").read_text()
    core = next(ln for ln in limits.splitlines() if ln.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
    # the jail: /usr and a few files, nothing else of the host
    root = Path(f"/proc/{pid}/root")
    assert (root / "usr/bin").is_dir() and os.listdir(root / "etc") == ["ld.so.cache"]
    assert not (root / "home").exists() and not (root / "root").exists() and not (root / "var/log").exists()
    assert set(os.listdir(root / "dev")) <= {"kvm", "null", "random", "urandom", "zero"}
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = (fields[5], line.split(" - ")[1])
    assert "hidepid=invisible" in mounts["/proc"][1] and "subset=pid" in mounts["/proc"][1]  # it sees itself only
    assert "ro" in mounts["/"][0].split(",") and "ro" in mounts["/usr"][0].split(",")
    allowed = ("/", "/usr", "/etc/ld.so.cache", "/dev/", "/proc", "/var/lib/hypercontainer/assets/",
               *(str(p) for p in TMP_ROOTS))
    stray = [m for m in mounts if not m.startswith(allowed[1:]) and m != "/"]
    assert not stray, stray
    return {"uid": uid, "cgroups": groups, "mounts": mounts}


def assert_released(info: dict) -> None:
    """After the VM went: its cgroups are removed, its uid lease is gone."""
    for d in info["cgroups"].values():
        assert not d.exists(), d
    assert info["uid"] not in uids.held()


def attack_files(d: Daemon, pod: str) -> None:
    """As root in the container: setuid/setgid bits and device nodes on its root and on a host volume."""
    script = ("touch /f; chmod 4755 /f; chmod 2755 /f; echo x > /v/new; chmod 4755 /v/new; chmod 6777 /v/old;"
              "mknod /dev-c c 1 11; mknod /v/kmsg c 1 11; mknod /v/blk b 7 0; mknod /v/fifo p;"
              "ls -l /f /v/new /v/old /v/fifo 2>&1; ls /v")
    r = d.hyperctl("exec", pod, "sh", "-c", script)
    out = r.stdout.decode()
    assert "-rw" in out and "fifo" in out, out  # the files are there, the fifo too: only the bits were refused
    for line in out.splitlines():
        assert not line.startswith(("-rws", "-rwS", "c", "b")) and "rws" not in line, out
    assert "kmsg" not in out and "blk" not in out
    assert b"Operation not permitted" in r.stderr


def assert_no_setuid_or_nodes(*roots: Path) -> None:
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID) or stat.S_ISDIR(st.st_mode), (dirpath, name)
                assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev) and not stat.S_ISBLK(st.st_mode), (dirpath, name)


def pod_with_volume(d: Daemon, tmp_path: Path, boot: str) -> tuple[str, dict, Path]:
    vol = tmp_path / f"vol-{boot}"
    vol.mkdir()
    (vol / "old").write_text("old\n")
    name = f"sec-{boot}-{time.monotonic_ns()}"
    d.hyperctl("run", "-d", "--name", name, "--boot", boot, "-v", f"{vol}:/v", "busybox", "sleep", "600",
               check=True)
    info = json.loads(d.hyperctl("inspect", name, check=True).stdout)
    return name, info, vol


# ---- no VM: the pieces ---------------------------------------------------------------------------------------------
def test_filter_refuses_setuid_files_and_device_nodes(tmp_path: Path) -> None:
    """The extra seccomp filter, loaded into a real process the way a VMM gets it."""
    code = r"""
import errno, os, stat, sys
d = sys.argv[1]
def try_(what, fn):
    try:
        fn(); print(what, "ok")
    except OSError as e:
        print(what, errno.errorcode[e.errno])
try_("creat-suid", lambda: os.close(os.open(d + "/a", os.O_CREAT | os.O_WRONLY, 0o4755)))
try_("creat-sgid", lambda: os.close(os.open(d + "/b", os.O_CREAT | os.O_WRONLY, 0o2755)))
try_("tmpfile-suid", lambda: os.close(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o4755)))
try_("creat-plain", lambda: os.close(os.open(d + "/c", os.O_CREAT | os.O_WRONLY, 0o755)))
try_("chmod-suid", lambda: os.chmod(d + "/c", 0o4755))
try_("chmod-sgid", lambda: os.chmod(d + "/c", 0o2755))
try_("fchmod-suid", lambda: os.fchmod(os.open(d + "/c", os.O_RDONLY), 0o4755))
try_("chmod-plain", lambda: os.chmod(d + "/c", 0o700))
try_("mknod-chr", lambda: os.mknod(d + "/n", stat.S_IFCHR | 0o666, os.makedev(1, 11)))
try_("mknod-blk", lambda: os.mknod(d + "/m", stat.S_IFBLK | 0o666, os.makedev(7, 0)))
try_("mknod-fifo", lambda: os.mknod(d + "/p", stat.S_IFIFO | 0o600))
"""
    jail = Jail(Spec(mount_ns=False, proc=False))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], preexec_fn=jail.preexec, capture_output=True,
                       text=True, check=True)
    got = dict(line.split() for line in r.stdout.splitlines())
    assert got == {"creat-suid": "EPERM", "creat-sgid": "EPERM", "tmpfile-suid": "EPERM", "creat-plain": "ok",
                   "chmod-suid": "EPERM", "chmod-sgid": "EPERM", "fchmod-suid": "EPERM", "chmod-plain": "ok",
                   "mknod-chr": "EPERM", "mknod-blk": "EPERM", "mknod-fifo": "ok"}, r.stdout
    assert sorted(os.listdir(tmp_path)) == ["c", "p"]


def test_uid_leases_are_unique_and_outlive_their_claimer() -> None:
    own = (1879113728, 1879113743)  # 16 of their own
    claimed = [uids.claim(own) for _ in range(16)]
    try:
        assert len(set(claimed)) == 16 and all(1879113728 <= u <= 1879113743 for u in claimed)
        with pytest.raises(HCError, match="every uid"):
            uids.claim(own)
        # a lease names its holder by pid and start time: one whose process is gone is free again
        child = subprocess.Popen(["sleep", "0.1"])
        uids.hand_to(claimed[0], child.pid)
        assert uids.held()[claimed[0]] == child.pid
        child.wait()
        assert uids.claim(own) == claimed[0]
    finally:
        for u in claimed:
            uids.release(u)
    with pytest.raises(HCError, match="holds user root"):
        uids.check_range((0, 100))
    with pytest.raises(HCError, match="FIRST-LAST"):
        uids.parse_range("12")


def test_console_rotation_keeps_the_tail_and_a_bound(tmp_path: Path) -> None:
    """Real console data through the rotation: never more than 2 x cap on disk, the tail still readable."""
    log = tmp_path / "console.log"
    sink = console.RotatingLog(log, cap=4096, truncate=True)
    lines = [f"[{i:6d}] guest says something rather long, line {i}\n".encode() for i in range(2000)]
    for i in range(0, len(lines), 7):
        sink.write(b"".join(lines[i:i + 7]))
    sink.close()
    assert log.stat().st_size <= 4096 and (tmp_path / "console.log.1").stat().st_size == 4096
    tail = console.tail(log, 100).splitlines()
    assert tail == [x.decode().rstrip("\n") for x in lines[-100:]]  # reaches into console.log.1
    sink = console.RotatingLog(log, cap=4096, truncate=True)  # a new VM starts a new console
    sink.close()
    assert log.stat().st_size == 0 and not (tmp_path / "console.log.1").exists()


def test_a_qemu_that_cannot_be_jailed_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uids, "_range", (1879113744, 1879113759))  # as uids.use_range() sets it, undone after
    cur = json.loads(Path(os.environ.get("HYPERCONTAINER_ASSETS", "/var/lib/hypercontainer/assets"),
                          "current.json").read_text())
    share = tmp_path / "share"
    share.mkdir()
    (tmp_path / "run").mkdir()
    cfg = VMConfig(Path(cur["kernel"]), tmp_path / "no-such-initrd", Sockets(tmp_path / "run", logdir=tmp_path),
                   share=Share("9p", "hcshare", path=share))
    m = Machine(cfg)
    with pytest.raises(VMError, match=r"jail: bind .*no-such-initrd: No such file"):
        asyncio.run(m.start())
    assert not qemus_under(tmp_path) and not [u for u in uids.held() if 1879113744 <= u <= 1879113759]
    assert not [p for b in cgroups.bases() if b.exists() for p in b.iterdir()
                if p.name.startswith("vm-18791137")]


# ---- real pods of each kind ----------------------------------------------------------------------------------------
def test_cold_pod(hyperd: Daemon, tmp_path: Path) -> None:
    name, info, vol = pod_with_volume(hyperd, tmp_path, "cold")
    try:
        assert info["vm"]["booted_from"] == "cold"
        vm = assert_confined_qemu(info["vm"]["pid"], caps=0)  # virtio-fs: QEMU touches no file of the pod
        fs = info["runtime"]["share_pid"]
        st = status_of(fs)
        assert st["Seccomp"] == "2" and cgroup_dirs(fs)["memory"].name.startswith("fs-")
        for task in [fs, *map(int, Path(f"/proc/{fs}/task/{fs}/children").read_text().split())]:
            prm = int(status_of(task)["CapPrm"], 16)
            assert not prm & (1 << CAP_MKNOD | 1 << CAP_SETFCAP), hex(prm)  # virtiofsd's modcaps
        attack_files(hyperd, name)
        assert_no_setuid_or_nodes(vol, hyperd.statedir / "pods" / info["id"] / "containers")
    finally:
        hyperd.hyperctl("rm", "-f", name)
    assert_released(vm)


def test_template_pod(hyperd: Daemon, tmp_path: Path) -> None:
    template_ready(hyperd)
    name, info, vol = pod_with_volume(hyperd, tmp_path, "template")
    try:
        assert info["vm"]["booted_from"] != "cold", hyperd.log.read_text()[-3000:]
        vm = assert_confined_qemu(info["vm"]["pid"], caps=NINEP_CAPS)  # 9p passthrough keeps ownership
        if info["vm"]["accel"] == "tcg":  # its translation buffer in small pages: what the clone ran, not 14 MiB
            assert status_of(info["vm"]["pid"]).get("THP_enabled", "0") == "0"
            rollup = Path(f"/proc/{info['vm']['pid']}/smaps_rollup").read_text()
            assert "AnonHugePages:         0 kB" in rollup, rollup
        root = Path(f"/proc/{info['vm']['pid']}/root")
        share = Path(info["runtime"]["share_dir"])
        assert (root / share.relative_to("/") / ".volumes").is_dir()  # the share, at its own path
        # a container added to the running pod is mounted under the share later: it reaches QEMU's 9p server
        r = hyperd.hyperctl("create", "-c", name, "--name", "late", "busybox", "sh", "-c", "echo late; sleep 600")
        assert r.returncode == 0, r.stderr
        assert (root / share.relative_to("/") / "late" / "bin").is_dir()
        attack_files(hyperd, name)
        assert_no_setuid_or_nodes(vol, hyperd.statedir / "pods" / info["id"] / "containers")
    finally:
        hyperd.hyperctl("rm", "-f", name)
    assert_released(vm)


def test_console_of_a_chatty_guest_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real guest that prints a lot on its serial console (every initcall, every log level) through QEMU's
    console socket: console.log rotates at the cap (made small here), the tail stays readable. (Containers cannot
    reach the serial port: the agent refuses device nodes there.)"""
    monkeypatch.setattr(console, "CAP", 16 * 1024)
    cur = json.loads((TMP_ROOTS[2] / "current.json").read_text())
    (tmp_path / "run").mkdir()
    sockets = Sockets(tmp_path / "run", logdir=tmp_path)
    cfg = VMConfig(Path(cur["kernel"]), Path(cur["initrd"]), sockets, with_ports=False,
                   cmdline=("initcall_debug", "ignore_loglevel", "hc.probe"))  # init powers off at once

    async def boot() -> Machine:
        m = Machine(cfg)
        await m.start()
        assert_confined_qemu(m.pid, caps=0)  # type: ignore[arg-type]
        await asyncio.wait_for(m.wait(), 120)
        await m.stop()
        return m

    m = asyncio.run(boot())
    log, old = sockets.console, tmp_path / "console.log.1"
    assert old.stat().st_size == 16 * 1024 and 0 < log.stat().st_size <= 16 * 1024
    assert "initcall" in m.console_tail(50)


@pytest.fixture(scope="module")
def pooled(busybox_tar: Path, tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("secpool"), HYPERCONTAINER_BOOT="pool", HYPERCONTAINER_POOL="1")
    d.start()
    d.hyperctl("load", "-i", str(busybox_tar), check=True)
    yield d
    d.stop()


def test_pool_pod_and_pool_vm(pooled: Daemon, tmp_path: Path) -> None:
    pooled.wait_pool_ready()
    spare = qemus_under(pooled.rundir / "pool")
    assert len(spare) == 1
    assert_confined_qemu(spare.pop(), caps=NINEP_CAPS)  # a pool VM waiting for its pod
    name, info, vol = pod_with_volume(pooled, tmp_path, "pool")
    try:
        assert info["vm"]["booted_from"].startswith("pool:")
        vm = assert_confined_qemu(info["vm"]["pid"], caps=NINEP_CAPS)
        attack_files(pooled, name)
        assert_no_setuid_or_nodes(vol, pooled.statedir / "pods" / info["id"] / "containers")
    finally:
        pooled.hyperctl("rm", "-f", name)
    assert_released(vm)


def test_taken_over_vm_is_released_at_its_end(busybox_tar: Path, tmp_path: Path) -> None:
    """Live restore: a new hyperd adopts the VM (and reconnects to its console); removing the pod then frees its
    uid and cgroup although that hyperd did not start it."""
    d = Daemon(tmp_path)
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        d.hyperctl("run", "-d", "--name", "kept", "--boot", "cold", "busybox", "sleep", "600", check=True)
        info = json.loads(d.hyperctl("inspect", "kept", check=True).stdout)
        vm = assert_confined_qemu(info["vm"]["pid"], caps=0)
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        d.start()
        r = d.hyperctl("exec", "kept", "echo", "still here")
        assert r.returncode == 0 and r.stdout == b"still here\n", r.stderr
        assert "not followed" not in d.log.read_text()  # the new hyperd reads the VM's console again
        assert d.hyperctl("rm", "-f", "kept").returncode == 0
        assert_released(vm)
    finally:
        d.stop()


def test_runv_vm(runv: Runv, bundle: Path, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    configure(bundle, ["sleep", "300"])
    assert runv.detached("run", "-d", "--bundle", str(bundle), "sec1").returncode == 0
    try:
        pid = json.loads((runv.root / "sec1" / "state.json").read_text())["vm_pid"]
        caps = int(status_of(pid)["CapEff"], 16)
        assert caps in (0, NINEP_CAPS)  # cold (virtio-fs) or from a template (9p)
        vm = assert_confined_qemu(pid, caps=caps)
    finally:
        assert runv("delete", "--force", "sec1").returncode == 0
    assert_released(vm)
