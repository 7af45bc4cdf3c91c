"""The host side of a pod share, played against an attacker who writes the share as a guest would (no VM: the
guest's writes land in the same host directory). Mounts are real; the host's decoys and mount table are
compared before and after."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from hypercontainer.storage.mount import mounts_under
from hypercontainer.storage.sharetree import VOLUMES, VOLUMES_RO, ShareTree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def mount_table() -> list[str]:
    """The host's mounts outside /tmp, /run and /var/lib (other tests' and daemons' mounts come and go there
    meanwhile; the decoys under /tmp are checked on their own)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[3:5] for line in f]
    return sorted(" ".join(p) for p in points if not p[1].startswith(("/tmp/", "/run/", "/var/lib/")))


def layer(tmp: Path, name: str, files: dict[str, str]) -> Path:
    d = tmp / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


@pytest.fixture
def share(tmp_path: Path):
    tree = ShareTree(tmp_path / "pod" / "share")
    tree.prepare()
    yield tree
    tree.release()
    assert not mounts_under(tmp_path)


def test_readonly_volume_is_readonly_on_the_host(share: ShareTree, tmp_path: Path) -> None:
    vol = layer(tmp_path, "vol", {"file": "original\n"})
    sub = vol / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "subtmp", str(sub)], check=True)  # a mount inside the volume
    try:
        rel = share.volume("v1", vol, readonly=True)
        assert rel == f"{VOLUMES_RO}/v1"
        seen = share.root / rel
        assert (seen / "file").read_text() == "original\n"
        for target in (seen / "file", seen / "new", seen / "sub" / "new"):  # the volume and what is mounted in it
            with pytest.raises(OSError) as e:
                target.write_text("pwned\n")
            assert e.value.errno == 30  # EROFS
        assert (vol / "file").read_text() == "original\n" and not (vol / "new").exists()
        rw = share.volume("v1", vol, readonly=False)
        (share.root / rw / "new").write_text("allowed\n")  # the same volume, mounted rw by another container
        assert (vol / "new").read_text() == "allowed\n"
        # runc's plain `ro` (the CRI's non-recursive read-only): the volume read-only, the mount in it as it is
        top = share.root / share.volume("v1", vol, readonly=True, recursive=False)
        assert top != seen
        with pytest.raises(OSError) as e:
            (top / "other").write_text("pwned\n")
        assert e.value.errno == 30 and not (vol / "other").exists()
        (top / "sub" / "new").write_text("the tmpfs below is writable\n")
        assert (sub / "new").exists()
        assert "nosuid" in next(line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                                if line.split()[4] == str(top / "sub"))  # still nosuid,nodev all the way down
    finally:
        share.release()
        subprocess.run(["umount", str(sub)], check=True)


def test_share_mounts_are_nosuid_nodev(share: ShareTree, tmp_path: Path) -> None:
    vol = layer(tmp_path, "vol", {"f": "x"})
    share.volume("v", vol, readonly=False)
    fd = share.container_root("c1", layers=[layer(tmp_path, "l0", {"etc/passwd": "root:x:0:0::/:/bin/sh\n"})],
                              upper=tmp_path / "pod" / "c1" / "upper", work=tmp_path / "pod" / "c1" / "work")
    os.close(fd)
    with open("/proc/self/mountinfo") as f:
        ours = [line.split() for line in f if str(share.root) in line.split()[4]]
    assert len(ours) >= 3  # the share itself, the volume, the root
    for fields in ours:
        opts = fields[5].split(",")
        assert "nosuid" in opts and "nodev" in opts, fields


def test_planted_symlink_is_not_mounted_through(share: ShareTree, tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "keep").write_text("host file\n")
    before = mount_table()
    (share.root / "c1").symlink_to(decoy)  # the guest plants the next container's root name
    (share.root / VOLUMES).symlink_to(decoy)  # and the volumes directory
    with pytest.raises(OSError):
        share.container_root("c1", layers=[layer(tmp_path, "l0", {"a": "b"})], upper=tmp_path / "u",
                             work=tmp_path / "w")
    with pytest.raises(OSError):
        share.volume("v", layer(tmp_path, "vol", {"f": "x"}), readonly=False)
    assert mount_table() == before and sorted(os.listdir(decoy)) == ["keep"]


def test_flipping_symlinks_never_reach_the_host(share: ShareTree, tmp_path: Path) -> None:
    """The guest flips a name between a directory and a symlink to a host directory (which has a tmpfs of its
    own mounted) while hyperd mounts roots there and unmounts them: every host mount stays, nothing lands on the
    decoy."""
    decoy = tmp_path / "decoy"
    (decoy / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "decoytmp", str(decoy / "mnt")], check=True)
    try:
        before = mount_table()
        stop = threading.Event()

        def flip() -> None:
            root = share.root
            while not stop.is_set():
                for name in ("c", "d"):
                    p = root / name
                    try:
                        if p.is_symlink():
                            p.unlink()
                            p.mkdir()
                        else:
                            os.rename(p, root / f".old-{name}") if p.exists() else None
                            p.symlink_to(decoy / "mnt" if name == "c" else decoy)
                    except OSError:
                        pass

        t = threading.Thread(target=flip)
        t.start()
        lower = layer(tmp_path, "l0", {"etc/hostname": "x\n"})
        made = 0
        try:
            for i in range(200):
                name = "cd"[i % 2]
                try:
                    fd = share.container_root(name, layers=[lower], upper=tmp_path / f"u{i}", work=tmp_path / f"w{i}")
                except OSError:
                    continue
                made += 1
                os.close(fd)
                share.undo(name)
        finally:
            stop.set()
            t.join()
        share.release()
        after = [m for m in mount_table() if str(share.root) not in m]
        assert after == [m for m in before if str(share.root) not in m]
        assert os.listdir(decoy / "mnt") == [] and sorted(os.listdir(decoy)) == ["mnt"]
        assert os.path.ismount(decoy / "mnt")  # the host's own mount there was never unmounted
        assert made > 0  # some mounts did happen between flips: the race was run, not just refused
    finally:
        subprocess.run(["umount", str(decoy / "mnt")], check=False)


def test_pod_disk_bounds_what_a_pod_writes(tmp_path: Path) -> None:
    """The pod's writable layers on a disk of their own: writing past its size fails with ENOSPC, the host
    file stays sparse and bounded, and the loop device goes with the unmount."""
    import asyncio
    import errno

    from hypercontainer.storage.disk import mount_pod_disk, parse_size, unmount_pod_disk

    size = parse_size("40M")
    image, target = tmp_path / "disk.img", tmp_path / "containers"
    asyncio.run(mount_pod_disk(image, target, size, tmp_path / "blanks"))
    try:
        opts = [line.split()[5] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4] == str(target)]
        assert opts and "nosuid" in opts[0] and "nodev" in opts[0]
        with pytest.raises(OSError) as e, open(target / "fill", "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        assert e.value.errno == errno.ENOSPC
        assert image.stat().st_blocks * 512 <= size
        loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
        assert str(image) in loops
    finally:
        unmount_pod_disk(target)
    assert not os.path.ismount(target)
    for _ in range(50):  # autoclear frees the device once the lazy unmount completes
        if not subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout:
            break
        import time
        time.sleep(0.05)
    assert not subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    for bad in ("ten", "1M", "-5G"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert (parse_size("0"), parse_size("10G"), parse_size("512Mi")) == (0, 10 << 30, 512 << 20)
