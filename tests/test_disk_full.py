"""A full disk under hyperd's state (issue 17): `hyperctl load` of an archive larger than the space left is refused
with a clear error (HTTP 507, the path named), keeps nothing, and hyperd goes on serving."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypercontainer.client.rest import UnixConnection

from .conftest import Daemon
from .registry import Registry


@pytest.fixture
def small_hyperd(tmp_path: Path) -> Iterator[Daemon]:
    """A hyperd whose state directory is a 48 MiB tmpfs."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)], check=True)
    d = Daemon(tmp_path)
    d.env["HYPERCONTAINER_ROOT"] = str(small / "state")
    try:
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)


def leftovers(state: Path) -> list[str]:
    return [str(p.relative_to(state)) for p in state.rglob("*.tar")]


def test_load_on_a_full_disk(small_hyperd: Daemon, tmp_path: Path) -> None:
    big = tmp_path / "big.tar"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    state = Path(small_hyperd.env["HYPERCONTAINER_ROOT"])
    r = small_hyperd.hyperctl("load", "-i", str(big))
    assert r.returncode == 125 and b"no space left on device on " in r.stderr, r
    assert r.stderr.count(b"\n") == 1, r.stderr  # one line, no traceback
    assert leftovers(state) == []
    # Announced with its size: refused before a byte is kept (and the other way: chunked, the size unknown).
    for headers, body in (({"content-length": str(big.stat().st_size)}, big.read_bytes()),
                          ({}, iter([big.read_bytes()]))):
        conn = UnixConnection(Path(small_hyperd.env["HYPERCONTAINER_SOCKET"]), 60)
        with contextlib.suppress(OSError):  # refused before it read the body: the answer is there all the same
            conn.request("POST", "/v1/images/load", body=body, headers=headers)  # type: ignore[arg-type]
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        assert resp.status == 507 and answer["code"] == "no_space", (headers, answer)
        assert answer["message"].startswith("no space left on device on "), answer
        assert leftovers(state) == []
    # hyperd still serves, and a load that fits still works
    assert small_hyperd.hyperctl("images").returncode == 0
    busybox = Path(__file__).resolve().parents[1] / "build" / "busybox.tar"
    r = small_hyperd.hyperctl("load", "-i", str(busybox))
    assert r.returncode == 0, r.stderr


def test_a_full_disk_drops_log_output_and_notes_the_gap(small_hyperd: Daemon, tmp_path: Path) -> None:
    """The container keeps running (its output is not blocked), its log says how much was lost; hyperd serves.
    The signals go through a volume on another disk (the container's root is on the full one)."""
    d = small_hyperd
    marks = tmp_path / "marks"
    marks.mkdir()
    busybox = Path(__file__).resolve().parents[1] / "build" / "busybox.tar"
    assert d.hyperctl("load", "-i", str(busybox)).returncode == 0
    script = ("echo before; while [ ! -e /m/go ]; do sleep 0.1; done; yes 0123456789abcdef | head -c 4000000; "
              "touch /m/spewed; while [ ! -e /m/go2 ]; do sleep 0.1; done; echo after")
    r = d.hyperctl("run", "-d", "--boot", "cold", "--name", "chatty", "-v", f"{marks}:/m", "busybox", "sh", "-c",
                   script)
    assert r.returncode == 0, r.stderr
    state = Path(d.env["HYPERCONTAINER_ROOT"])
    filler = state / "filler"
    try:
        free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
        with open(filler, "wb") as f:  # all but 256 KiB
            f.write(b"\0" * max(0, free - (256 << 10)))
        (marks / "go").touch()
        deadline = time.monotonic() + 120
        while not (marks / "spewed").exists():
            assert time.monotonic() < deadline, "the output was blocked"
            time.sleep(0.2)
    finally:
        filler.unlink()
    (marks / "go2").touch()
    assert d.hyperctl("wait", "chatty").stdout == b"0\n"
    out = d.hyperctl("logs", "chatty")
    assert out.stdout.startswith(b"before\n") and out.stdout.endswith(b"after\n"), (out.stdout[:40], out.stdout[-40:])
    notes = re.findall(rb"hyperd: (\d+) bytes of output lost here \(no space left on device on [^)]+\)\n", out.stderr)
    assert notes and len(b"".join(re.findall(rb"hyperd: .*\n", out.stderr))) == len(out.stderr), out.stderr[-300:]
    # every byte the container wrote is either in the log or counted as lost
    assert len(out.stdout) - len(b"before\nafter\n") + sum(int(n) for n in notes) == 4_000_000
    assert d.hyperctl("ps", "-a").returncode == 0


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_pull_on_a_full_disk_keeps_nothing(small_hyperd: Daemon, busybox_tar: Path) -> None:
    d = small_hyperd
    reg = Registry()
    try:
        reg.push(f"docker-archive:{busybox_tar}", "library/busybox:latest")
        state = Path(d.env["HYPERCONTAINER_ROOT"])
        images = state / "images"
        before = files_under(images)
        filler = state / "filler"
        free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
        with open(filler, "wb") as f:  # all but 128 KiB: the layer (~1 MiB compressed) cannot fit
            f.write(b"\0" * max(0, free - (128 << 10)))
        try:
            r = d.hyperctl("pull", f"{reg.host}/library/busybox")
        finally:
            filler.unlink()
        assert r.returncode == 125 and r.stderr.endswith(f"hyperctl: no space left on device on {images}\n".encode()), r
        # nothing half-written: what is new is whole blobs (kept for the retry, as docker keeps layers), each
        # matching its digest
        for name in files_under(images) - before:
            assert name.startswith("blobs/sha256/"), name
            assert hashlib.sha256((images / name).read_bytes()).hexdigest() == name.rsplit("/", 1)[1], name
        r = d.hyperctl("pull", f"{reg.host}/library/busybox")  # room again: it works
        assert r.returncode == 0, r.stderr
    finally:
        reg.stop()


def test_run_on_a_full_disk_fails_cleanly(small_hyperd: Daemon) -> None:
    d = small_hyperd
    busybox = Path(__file__).resolve().parents[1] / "build" / "busybox.tar"
    assert d.hyperctl("load", "-i", str(busybox)).returncode == 0
    state = Path(d.env["HYPERCONTAINER_ROOT"])
    filler = state / "filler"
    free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - (16 << 10)))
    try:
        for boot in ("cold", "template"):
            r = d.hyperctl("run", "--rm", "--boot", boot, "--name", f"full-{boot}", "busybox", "echo", "hi")
            assert r.returncode == 125 and b"no space left on device" in r.stderr.lower(), (boot, r)
            assert r.stderr.count(b"\n") == 1, r.stderr
        assert d.hyperctl("ps", "-a").returncode == 0
        assert d.mounts_under(state / "pods") == []
    finally:
        filler.unlink()
    r = d.hyperctl("run", "--rm", "--boot", "cold", "busybox", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
