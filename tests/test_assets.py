"""The guest-asset cache: what is no longer current goes once it is a day old; the current assets and the
distribution's fallback kernel stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypercontainer.guest.assets import STALE_AFTER, Assets, prune


def make(path: Path, age: float, is_dir: bool = True) -> Path:
    if is_dir:
        path.mkdir()
        (path / "content").write_text("x")
    else:
        path.write_text("x")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_prune_removes_stale_assets_only(tmp_path: Path) -> None:
    old, fresh = STALE_AFTER + 60, 60.0
    kernel = make(tmp_path / "kernel-own-new", old)
    current = Assets(kernel / "vmlinux", make(tmp_path / "initrd-cur.cpio", old, False), "6.1", "cur", "d")
    keep = [kernel, current.initrd, make(tmp_path / "agent-cur", old),  # current, however old
            make(tmp_path / "agent-recent", fresh), make(tmp_path / "initrd-recent.cpio", fresh, False),
            make(tmp_path / "kernel-own-recent", fresh), make(tmp_path / "kernel-linux-image-x", old),
            make(tmp_path / "templates", old)]
    stale = [make(tmp_path / "agent-old", old), make(tmp_path / "initrd-old.cpio", old, False),
             make(tmp_path / "kernel-own-old", old)]
    assert sorted(prune(tmp_path, current)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_prune_keeps_own_kernels_while_the_distro_kernel_is_in_use(tmp_path: Path) -> None:
    distro = make(tmp_path / "kernel-linux-image-x", 0)
    (distro / "boot").mkdir()
    own = make(tmp_path / "kernel-own-old", STALE_AFTER + 60)
    current = Assets(distro / "boot" / "vmlinuz", tmp_path / "initrd-cur.cpio", "6.1", "cur", "d")
    assert prune(tmp_path, current) == [] and own.exists()


def test_one_kernel_build_at_a_time_and_what_a_killed_one_left_goes(tmp_path: Path) -> None:
    """hyperd's background build and `make assets` take one lock: the second waits, saying why, and then sweeps the
    source trees of builds that were killed (none runs while it holds the lock)."""
    import subprocess
    import sys
    import threading

    from hypercontainer.guest import kernel_build

    stale = tmp_path / ".kbuild-killed"
    (stale / "linux-source-6.1").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(tmp_path / kernel_build.LOCK)!r}, 'a+')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout and holder.stdout.readline() == "held\n"
        said: list[str] = []
        entered = threading.Event()

        def second() -> None:
            with kernel_build._locked(tmp_path, said.append):
                entered.set()

        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(1.0), "a second build ran while the first held the lock"
        assert said and "another build of it is running" in said[0] and stale.exists()
    finally:
        holder.kill()
        holder.wait()
    t.join(10)
    assert entered.is_set() and not stale.exists()
