"""What a container does inside its VM stays there (issue 17): a fork bomb and a disk filler leave hyperd and the
other pods working, and their own pods are removed cleanly (the guest's OOM kill: test_security_guest.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Daemon

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def small_disks(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Daemon]:
    """A hyperd whose pods' disks (their containers' writable layers) are 64 MiB."""
    d = Daemon(tmp_path_factory.mktemp("inside"), HYPERCONTAINER_STORAGE_SIZE="64M")
    d.start()
    try:
        assert d.hyperctl("load", "-i", str(busybox_tar)).returncode == 0
        assert d.hyperctl("run", "-d", "--name", "bystander", "busybox", "sleep", "3600").returncode == 0
        yield d
    finally:
        d.stop()


def bystander_fine(d: Daemon) -> None:
    r = d.hyperctl("exec", "bystander", "echo", "fine", timeout=60)
    assert (r.returncode, r.stdout) == (0, b"fine\n"), r
    assert d.hyperctl("ps", timeout=30).returncode == 0


def disk_usage(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def test_a_disk_filler_fills_its_own_disk_only(small_disks: Daemon) -> None:
    d = small_disks
    state = d.statedir
    before = disk_usage(state)
    r = d.hyperctl("run", "--rm", "--name", "filler", "busybox", "sh", "-c",
                   "dd if=/dev/zero of=/fill bs=1M count=200 2>&1; df -m / | tail -1", timeout=300)
    assert r.returncode == 0, r
    assert b"No space left on device" in r.stdout, r.stdout
    grown = disk_usage(state) - before
    assert grown < 80 << 20, grown  # its 64 MiB disk, and no more of the host's
    bystander_fine(d)


def test_a_fork_bomb_stays_in_its_vm(small_disks: Daemon) -> None:
    d = small_disks
    r = d.hyperctl("run", "-d", "--name", "bomb", "busybox", "sh", "-c", "b() { b | b & }; b; sleep 600")
    assert r.returncode == 0, r.stderr
    bomb = r.stdout.decode().strip()
    time.sleep(5)  # let it spread
    bystander_fine(d)
    r = d.hyperctl("rm", "-f", "bomb", timeout=120)  # its VM goes, however busy
    assert r.returncode == 0, r.stderr
    assert d.mounts_under(d.statedir / "pods" / bomb) == []
    assert bomb[:12].encode() not in d.hyperctl("ps", "-aq").stdout
    assert not any(bomb[:16] in p.name for p in d.rundir.rglob("*"))
    bystander_fine(d)
