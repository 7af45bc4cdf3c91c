"""Issue 12, host side, with real VMs: what a container (or a guest that took its agent over) writes into its
pod's share never makes hyperd mount, unmount or write outside it; read-only volumes are read-only on the host;
what a container creates is out of every other host user's reach. The host's decoys and mount table are compared
before and after each attack."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hypercontainer.cli.rest import Rest
from hypercontainer.errors import HCError

from .conftest import BUILD, Daemon

pytestmark = pytest.mark.vm


def host_mounts(d: Daemon, exclude: str) -> list[str]:
    """The mounts (mount point and options) that no test or daemon running meanwhile makes or removes, in the
    host's namespace and in hyperd's (storage/mountns.py: where a mount hyperd was tricked into would land):
    everything outside /tmp, /run, /var/lib and build/ (where other pods', daemons' and engines' mounts come
    and go), without what lies under `exclude`. The decoys are checked on their own."""
    busy = ("/tmp/", "/run/", "/var/lib/", f"{BUILD}/")
    out = []
    for where, table in (("host", Path("/proc/self/mountinfo").read_text()), ("hyperd", d.mountinfo())):
        points = [line.split()[4:6] for line in table.splitlines()]
        out += [f"{where} {' '.join(p)}" for p in points if exclude not in p[0] and not p[0].startswith(busy)]
    return sorted(out)


def share_of(d: Daemon, pod: str) -> Path:
    return Path(json.loads(d.hyperctl("inspect", pod, check=True).stdout)["runtime"]["share_dir"])


def as_nobody(*argv: str, d: Daemon | None = None) -> subprocess.CompletedProcess:
    """argv as user nobody; in hyperd's mount namespace if `d` is given (the share's mounts are there)."""
    ns = ["nsenter", f"--mount=/proc/{d.proc.pid}/ns/mnt"] if d and d.proc else []
    return subprocess.run([*ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          capture_output=True, text=True)


@pytest.fixture
def decoy(tmp_path: Path):
    """A host directory with a file and a tmpfs of its own: what the attacker aims at."""
    d = tmp_path / "decoy"
    (d / "mnt").mkdir(parents=True)
    (d / "keep").write_text("host file\n")
    subprocess.run(["mount", "-t", "tmpfs", "hc-decoy", str(d / "mnt")], check=True)
    yield d
    subprocess.run(["umount", str(d / "mnt")], check=False)


class MountWatch:
    """Reads the host's mount table and hyperd's (its own namespace, where a mount it was tricked into would
    land) in a loop while an attack runs: any mount appearing at or below `decoy`, or one there going away even
    for a moment, is recorded (hyperd could undo either before the end)."""

    def __init__(self, decoy: Path, d: Daemon) -> None:
        self.decoy, self.seen = str(decoy), set[str]()
        assert d.proc
        self.tables = [Path("/proc/self/mountinfo"), Path(f"/proc/{d.proc.pid}/mountinfo")]
        self.expected = [self._under(t) for t in self.tables]  # the host's: the decoy's tmpfs
        assert self.expected[0] == {self.decoy + "/mnt"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _under(self, table: Path) -> set[str]:
        points = [line.split()[4] for line in table.read_text().splitlines()]
        return {p for p in points if p == self.decoy or p.startswith(self.decoy + "/")}

    def _run(self) -> None:
        while not self._stop.is_set():
            for table, expected in zip(self.tables, self.expected, strict=True):
                under = self._under(table)
                if under != expected:
                    self.seen.add(f"{table}: {sorted(under)}")

    def __enter__(self) -> MountWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def untouched(decoy: Path) -> bool:
    return sorted(os.listdir(decoy)) == ["keep", "mnt"] and os.listdir(decoy / "mnt") == [] \
        and (decoy / "keep").read_text() == "host file\n" and os.path.ismount(decoy / "mnt")


def test_planted_container_root_symlink(hyperd: Daemon, decoy: Path) -> None:
    """The guest plants the next container's name in its share as a symlink to a host directory: the create
    fails loudly, nothing is mounted on the host directory, and removing the pod leaves no mount behind."""
    vol = decoy.parent / "vol"
    vol.mkdir()
    hyperd.hyperctl("run", "-d", "--name", "plant", "-v", f"{vol}:/v", "busybox", "sleep", "600", check=True)
    share = share_of(hyperd, "plant")
    before = host_mounts(hyperd, str(share))
    try:
        guest = hyperd.view(share)  # the share as its guest sees it: through hyperd's mount namespace
        (guest / "evil").symlink_to(decoy / "mnt")  # what a guest writing its share does
        with MountWatch(decoy, hyperd) as watch:  # its root goes to a directory of its own (evil@1), never through it
            hyperd.hyperctl("create", "-c", "plant", "--name", "evil", "busybox", "true")
        assert not watch.seen, watch.seen
        assert (guest / "evil").is_symlink() and untouched(decoy)
        assert untouched(decoy) and host_mounts(hyperd, str(share)) == before
        (guest / ".volumes-ro").symlink_to(decoy)  # and where the pod's volume would be bound read-only
        with MountWatch(decoy, hyperd) as watch, pytest.raises(HCError) as e:  # a container that mounts it read-only
            Rest(hyperd.rundir / "hyperd.sock", 60).request("POST", "/v1/pods/plant/containers", json={"container": {
                "name": "rovol", "image": "busybox", "command": ["true"],
                "volumes": [{"name": "v0", "path": "/v", "readonly": True}]}})
        assert "volume" in e.value.message, e.value.message
        assert not watch.seen and untouched(decoy), watch.seen
        ok = hyperd.hyperctl("create", "-c", "plant", "--name", "fine", "busybox", "true")
        assert ok.returncode == 0, ok.stderr  # the pod itself goes on
    finally:
        hyperd.hyperctl("rm", "-f", "plant", check=True)
    assert untouched(decoy) and host_mounts(hyperd, str(share)) == before
    assert not any(str(share) in line for line in hyperd.mountinfo().splitlines())


def test_flipping_symlinks_while_containers_come_and_go(hyperd: Daemon, decoy: Path) -> None:
    """The guest flips names between real directories and symlinks to the host, in a loop, while containers are
    added (and their failures undone) and the pod is removed: no host mount is made, moved or unmounted."""
    vol = decoy.parent / "vol"
    vol.mkdir()
    hyperd.hyperctl("run", "-d", "--name", "flip", "-v", f"{vol}:/v", "busybox", "sleep", "600", check=True)
    share = share_of(hyperd, "flip")
    guest = hyperd.view(share)  # the share as its guest sees it: through hyperd's mount namespace
    before = host_mounts(hyperd, str(share))
    stop = threading.Event()

    def flip() -> None:
        """Each name in turn: a real directory, moved away, a symlink to the host, removed; again."""
        names = [f"c{i}" for i in range(8)] + [".volumes", ".volumes-ro"]
        step = 0
        while not stop.is_set():
            step += 1
            for n in names:
                p = guest / n
                try:
                    if p.is_symlink():
                        p.unlink()
                    elif p.is_dir():
                        os.rename(p, guest / f".gone-{n}-{time.monotonic_ns()}")
                    elif step % 2:
                        p.mkdir()
                    else:
                        p.symlink_to(decoy / "mnt" if n.startswith("c") else decoy)
                except OSError:
                    pass

    t = threading.Thread(target=flip)
    t.start()
    try:
        with MountWatch(decoy, hyperd) as watch:
            for i in range(8):
                hyperd.hyperctl("create", "-c", "flip", "--name", f"c{i}", "-v", f"{vol}:/w{':ro' if i % 2 else ''}",
                                "busybox", "true")
    finally:
        stop.set()
        t.join()
    try:
        assert not watch.seen, watch.seen
        assert untouched(decoy) and host_mounts(hyperd, str(share)) == before
    finally:
        hyperd.hyperctl("rm", "-f", "flip", check=True)
    assert untouched(decoy) and host_mounts(hyperd, str(share)) == before
    assert not any(str(share) in line for line in hyperd.mountinfo().splitlines())


def test_read_only_volume_is_read_only_on_the_host(hyperd: Daemon, tmp_path: Path) -> None:
    """`-v DIR:/data:ro`: the share holds only a read-only bind of DIR (nosuid, nodev): neither a container going
    around its mount namespace nor a guest writing its share can change DIR."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "file").write_text("original\n")
    hyperd.hyperctl("run", "-d", "--name", "rovol", "-v", f"{vol}:/data:ro", "busybox", "sleep", "600", check=True)
    try:
        share = share_of(hyperd, "rovol")
        # from inside: every route to the share this container may know of
        r = hyperd.hyperctl("exec", "rovol", "sh", "-c",
                            "for f in /data/file /proc/1/root/run/hc/share/.volumes/data/file "
                            "/proc/1/root/run/hc/share/.volumes-ro/data/file; do echo pwned > $f; done; "
                            "cp /bin/busybox /data/sh 2>/dev/null; true")
        assert r.returncode == 0
        # as the guest that writes its share: the host bind itself refuses
        binds = list(hyperd.view(share).glob(".volumes*/*/file"))
        assert [b.parent.parent.name for b in binds] == [".volumes-ro"], binds  # no writable bind of it at all
        for b in binds:
            with pytest.raises(OSError) as e:
                b.write_text("pwned\n")
            assert e.value.errno == 30  # EROFS
        real = share / binds[0].parent.relative_to(hyperd.view(share))
        opts = [line.split()[5] for line in hyperd.mountinfo().splitlines() if line.split()[4] == str(real)]
        assert opts and all(o.split(",")[0] == "ro" and "nosuid" in o and "nodev" in o for o in opts), opts
        assert (vol / "file").read_text() == "original\n" and sorted(os.listdir(vol)) == ["file"]
    finally:
        hyperd.hyperctl("rm", "-f", "rovol", check=True)
    assert (vol / "file").read_text() == "original\n"


def test_setuid_and_device_files_out_of_host_users_reach(hyperd: Daemon) -> None:
    """A container makes a setuid-root shell and a device node in its root; no other host user can reach either
    (the state tree is hyperd's alone), and nothing under the share is setuid or a device on the host."""
    hyperd.hyperctl("run", "-d", "--name", "suid", "busybox", "sh", "-c",
                    "cp /bin/busybox /suidsh && chmod 4755 /suidsh; mknod /kmsg c 1 11; sleep 600", check=True)
    try:
        info = json.loads(hyperd.hyperctl("inspect", "suid", check=True).stdout)
        share = Path(info["runtime"]["share_dir"])
        statedir = hyperd.statedir / "pods" / info["id"]
        for _ in range(100):
            if any(hyperd.view(share).glob("*/suidsh")):
                break
            time.sleep(0.1)
        for d in (hyperd.statedir, hyperd.statedir / "pods", statedir, hyperd.rundir):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        root = hyperd.view(Path("/"))  # the writable layers' disk and the share are mounted in hyperd's namespace
        upper = [Path("/") / p.relative_to(root) for p in hyperd.view(statedir).rglob("suidsh")]
        in_share = [Path("/") / p.relative_to(root) for p in hyperd.view(share).glob("*/suidsh")]
        assert upper and in_share, (upper, in_share)
        in_share += [Path("/") / p.relative_to(root) for p in hyperd.view(share).glob("*/kmsg")]
        for target in [*upper, *in_share]:
            r = as_nobody("stat", str(target), d=hyperd)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (target, r)
        r = as_nobody("sh", "-c", f"echo pwned > {statedir}/containers/*/upper/kmsg", d=hyperd)
        assert r.returncode != 0
    finally:
        hyperd.hyperctl("rm", "-f", "suid", check=True)


def test_a_full_pod_disk_is_the_pods_own(busybox_tar: Path, tmp_path: Path) -> None:
    """hyperd --storage-size 64M: a container writing 200 MiB gets "No space left on device" from its own disk
    image, which stays within 64 MiB on the host; removing the pod removes the image and its loop device."""
    d = Daemon(tmp_path, HYPERCONTAINER_STORAGE_SIZE="64M", HYPERCONTAINER_BOOT="cold")
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        r = d.hyperctl("run", "--name", "filler", "busybox", "sh", "-c",
                       "dd if=/dev/zero of=/big bs=1M count=200; sync; echo still-here")
        assert b"No space left on device" in r.stderr and r.stdout.endswith(b"still-here\n"), (r.stdout, r.stderr)
        pod_id = json.loads(d.hyperctl("inspect", "filler", check=True).stdout)["id"]
        image = d.statedir / "pods" / pod_id / "disk.img"
        assert 0 < image.stat().st_blocks * 512 <= 64 << 20
        d.hyperctl("rm", "filler", check=True)
        assert not image.exists()
        assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        (tmp_path / "bad").mkdir()
        bad = Daemon(tmp_path / "bad", HYPERCONTAINER_STORAGE_SIZE="lots")
        with pytest.raises(RuntimeError, match="storage size 'lots'"):
            bad.start()
    finally:
        d.stop()
