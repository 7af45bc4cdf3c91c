"""storage/mountns.py: a process that left the host's mount namespace still clones host paths as the host sees
them (mounts made after it left included), and what it attaches is no mount point on the host, so the owner of a
shared directory can remove it while the pod runs (what kubelets and critest do with volumes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hypercontainer.storage.mount import mounts_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")

# The sharer: leaves (or not) the host's namespace, waits for the host to mount a tmpfs under the volume, clones
# the volume into its share, proves the tmpfs came along, then waits until told to finish.
SHARER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from hypercontainer.storage import mountns
    from hypercontainer.storage.sharetree import ShareTree
    vol, share, leave = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    if leave:
        mountns.leave_host()
    print("ready", flush=True)
    sys.stdin.readline()  # the host mounted vol/sub meanwhile
    tree = ShareTree(share)
    tree.prepare()
    rel = tree.volume("v", vol, readonly=True, recursive=False)
    (share / rel / "sub" / "from-sharer").write_text("x")  # the tmpfs below a top-only read-only volume
    try:
        (share / rel / "top").write_text("x")
        print("top writable", flush=True)
    except OSError as e:
        print(f"top {e.strerror}", flush=True)
    sys.stdin.readline()
    tree.release()
""")


def run_sharer(tmp_path: Path, leave: bool) -> tuple[subprocess.Popen[str], Path, Path]:
    vol, share = tmp_path / "vol", tmp_path / "share"
    (vol / "sub").mkdir(parents=True)
    share.mkdir()
    p = subprocess.Popen([sys.executable, "-c", SHARER, str(vol), str(share), "1" if leave else "0"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin and p.stdout and p.stdout.readline() == "ready\n"
    subprocess.run(["mount", "-t", "tmpfs", "none", str(vol / "sub")], check=True)  # after the sharer left
    p.stdin.write("go\n")
    p.stdin.flush()
    return p, vol, share


def finish(p: subprocess.Popen[str]) -> None:
    assert p.stdin
    p.stdin.write("done\n")
    p.stdin.flush()
    assert p.wait(timeout=30) == 0


def test_a_shim_namespace_sees_later_host_mounts_and_pins_nothing(tmp_path: Path) -> None:
    p, vol, share = run_sharer(tmp_path, leave=True)
    try:
        assert p.stdout and p.stdout.readline() == "top Read-only file system\n"
        assert (vol / "sub" / "from-sharer").read_text() == "x"  # written through the clone, into the host's tmpfs
        assert mounts_under(share) == []  # the share's mounts are the sharer's alone
        subprocess.run(["umount", "-l", str(vol / "sub")], check=True)
        (vol / "sub").rmdir()  # critest's clean-up: no EBUSY
    finally:
        subprocess.run(["umount", "-l", str(vol / "sub")], capture_output=True)
        finish(p)


def test_in_the_host_namespace_the_clone_pins_the_directory(tmp_path: Path) -> None:
    """The failure the namespace prevents, shown: the same sharer without leaving."""
    p, vol, share = run_sharer(tmp_path, leave=False)
    try:
        assert p.stdout and p.stdout.readline() == "top Read-only file system\n"
        subprocess.run(["umount", "-l", str(vol / "sub")], check=True)
        with pytest.raises(OSError) as e:
            (vol / "sub").rmdir()
        assert e.value.strerror == "Device or resource busy"
    finally:
        finish(p)
    assert mounts_under(share) == []


def test_a_missing_host_path_is_named(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from hypercontainer.storage import mountns
        mountns.leave_host()
        try:
            mountns.clone_tree(Path(sys.argv[1]))
        except OSError as e:
            print(e.errno, e.strerror)
    """)
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "gone")], capture_output=True, text=True,
                       timeout=30)
    want = f"2 No such file or directory: {tmp_path / 'gone'}"
    assert r.returncode == 0 and r.stdout.strip() == want, r.stdout + r.stderr
