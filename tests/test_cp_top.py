"""hyperctl cp and top (issue 19) against real VMs: tar streams through the agent's builtins both ways, docker cp's
naming rules, the path-safety rules on both sides, and the guest's process list."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from .conftest import Daemon
from .test_docker_habits import ok

pytestmark = pytest.mark.vm


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def in_pod(d: Daemon, pod: str, script: str) -> str:
    return ok(d.hyperctl("exec", pod, "sh", "-c", script))


def test_cp_both_ways(hyperd: Daemon, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    big = os.urandom(10 << 20)
    (tree / "big").write_bytes(big)
    (tree / "sub" / "x").write_text("x\n")
    os.chmod(tree / "sub" / "x", 0o751)
    os.chown(tree / "sub" / "x", 1234, 4321)
    os.symlink("big", tree / "link")
    ok(hyperd.hyperctl("run", "-d", "--name", "files", "busybox", "sleep", "600"))
    try:
        # in: into an existing directory; without -a the files are root's, with -a the archive's owners
        ok(hyperd.hyperctl("cp", str(tree), "files:/tmp"))
        got = in_pod(hyperd, "files", "md5sum /tmp/tree/big; stat -c '%a %u:%g' /tmp/tree/sub/x; "
                     "readlink /tmp/tree/link")
        assert got.split() == [md5(big), "/tmp/tree/big", "751", "0:0", "big"], got
        ok(hyperd.hyperctl("cp", "-a", str(tree / "sub" / "x"), "files:/tmp/renamed"))  # saved as a new name
        assert in_pod(hyperd, "files", "stat -c '%a %u:%g' /tmp/renamed; cat /tmp/renamed").split() == \
            ["751", "1234:4321", "x"]
        # out: a new name, into an existing directory, a directory's contents, a single file over a file
        ok(hyperd.hyperctl("cp", "files:/tmp/tree", str(tmp_path / "back")))
        assert md5((tmp_path / "back" / "big").read_bytes()) == md5(big)
        assert os.readlink(tmp_path / "back" / "link") == "big"
        assert (tmp_path / "back" / "sub" / "x").stat().st_mode & 0o7777 == 0o751
        into = tmp_path / "into"
        into.mkdir()
        ok(hyperd.hyperctl("cp", "files:/tmp/tree/sub", str(into)))
        assert (into / "sub" / "x").read_text() == "x\n"
        ok(hyperd.hyperctl("cp", "files:/tmp/tree/sub/.", str(tmp_path / "contents")))
        assert sorted(os.listdir(tmp_path / "contents")) == ["x"]
        (tmp_path / "hostname").write_text("old")
        ok(hyperd.hyperctl("cp", "files:/etc/hostname", str(tmp_path / "hostname")))
        assert (tmp_path / "hostname").read_text() == in_pod(hyperd, "files", "cat /etc/hostname")
        # '-': a tar on stdout, a tar from stdin
        r = hyperd.hyperctl("cp", "files:/etc/passwd", "-")
        with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
            assert tf.getnames() == ["passwd"] and tf.extractfile("passwd").read().startswith(b"root:")  # type: ignore[union-attr]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("from-stdin/hello")
            info.size = 6
            tf.addfile(info, io.BytesIO(b"hello\n"))
        ok(hyperd.hyperctl("cp", "-", "files:/tmp", input=buf.getvalue()))
        assert in_pod(hyperd, "files", "cat /tmp/from-stdin/hello") == "hello\n"
        # bad input: one clear line, exit 1, nothing made here
        r = hyperd.hyperctl("cp", "files:/no/such", str(tmp_path / "nothing"))
        assert r.returncode == 1 and b"no such file" in r.stderr and not (tmp_path / "nothing").exists(), r
        r = hyperd.hyperctl("cp", str(tmp_path / "missing"), "files:/tmp")
        assert r.returncode == 1 and b"missing" in r.stderr, r
        r = hyperd.hyperctl("cp", str(tree), "files:/tmp/renamed")  # a directory onto a file
        assert r.returncode == 1 and b"onto the file" in r.stderr, r
        r = hyperd.hyperctl("cp", str(tree), str(tmp_path / "x"))
        assert r.returncode == 2 and b"exactly one" in r.stderr, r
        r = hyperd.hyperctl("cp", "no-such-pod:/etc", str(tmp_path))
        assert r.returncode == 1 and b"no-such-pod" in r.stderr, r
    finally:
        hyperd.hyperctl("rm", "-f", "files")


def test_cp_never_leaves_the_container_root_or_writes_through_a_symlink(hyperd: Daemon, tmp_path: Path) -> None:
    ok(hyperd.hyperctl("run", "-d", "--name", "escape", "busybox", "sh", "-c",
                       "mkdir /d && ln -s ../../../../../../../etc /d/esc && echo guest > /etc/marker && sleep 600"))
    try:
        ok(hyperd.hyperctl("exec", "escape", "test", "-e", "/etc/marker"))
        # Out of the pod: a symlink pointing out of the root resolves inside it; copied as a symlink, not followed
        ok(hyperd.hyperctl("cp", "escape:/d/esc/marker", str(tmp_path / "m")))
        assert (tmp_path / "m").read_text() == "guest\n"
        ok(hyperd.hyperctl("cp", "escape:/d", str(tmp_path / "d")))
        assert os.readlink(tmp_path / "d" / "esc") == "../../../../../../../etc"
        # ... and never written through here: where the destination holds a symlink in the archive's directory's
        # place, the symlink is replaced (tar's way), what it points to is not touched
        (tmp_path / "trap").mkdir()
        (tmp_path / "elsewhere").mkdir()
        os.symlink(str(tmp_path / "elsewhere"), tmp_path / "trap" / "d")
        ok(hyperd.hyperctl("cp", "escape:/d", str(tmp_path / "trap")))
        assert not (tmp_path / "trap" / "d").is_symlink() and os.path.islink(tmp_path / "trap" / "d" / "esc")
        assert os.listdir(tmp_path / "elsewhere") == []
        # Into the pod: an archive that would write through a symlink it made is refused in the guest
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            link = tarfile.TarInfo("l")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc"
            tf.addfile(link)
            evil = tarfile.TarInfo("l/evil")
            evil.size = 5
            tf.addfile(evil, io.BytesIO(b"evil\n"))
        r = hyperd.hyperctl("cp", "-", "escape:/tmp", input=buf.getvalue())
        assert r.returncode == 1 and b"symlink" in r.stderr, r
        assert in_pod(hyperd, "escape", "test -e /etc/evil && echo there || echo absent") == "absent\n"
    finally:
        hyperd.hyperctl("rm", "-f", "escape")


def test_top(hyperd: Daemon) -> None:
    ok(hyperd.hyperctl("run", "-d", "--name", "procs", "busybox", "sh", "-c", "sleep 600 & exec sleep 700"))
    try:
        lines = ok(hyperd.hyperctl("top", "procs")).splitlines()
        assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], lines
        rows = [ln.split(None, 7) for ln in lines[1:]]
        cmds = {r[7]: r for r in rows}
        assert {"sleep 600", "sleep 700"} <= set(cmds), lines
        assert cmds["sleep 600"][0] == "root" and cmds["sleep 700"][1] == "1", lines  # the shell execs sleep 700
        assert cmds["sleep 600"][2] == "1" and cmds["sleep 600"][6] == "00:00:00", lines
        # ps options: the container's own ps
        lines = ok(hyperd.hyperctl("top", "procs", "-o", "pid,comm")).splitlines()
        assert lines[0].split() == ["PID", "COMMAND"] and ["1", "sleep"] in [ln.split() for ln in lines], lines
        ok(hyperd.hyperctl("stop", "-t", "1", "procs"))
        r = hyperd.hyperctl("top", "procs")
        assert r.returncode == 1 and b"not running" in r.stderr, r
    finally:
        hyperd.hyperctl("rm", "-f", "procs")
