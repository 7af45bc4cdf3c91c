"""A full disk under hyperd's state (issue 17): `hyperctl load` of an archive larger than the space left is refused
with a clear error (HTTP 507, the path named), keeps nothing, and hyperd goes on serving."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypercontainer.client.rest import UnixConnection

from .conftest import Daemon


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
    assert r.returncode == 1 and b"no space left on device on " in r.stderr, r
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
