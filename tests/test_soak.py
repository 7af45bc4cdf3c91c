"""Soak and leak checks (issue 17) on a hyperd of their own: cycles of run/exec/logs/rm mixed with concurrent
creations, then hyperd's fds, threads, tasks and child processes are back to where they were, its RSS grew less
than 20 MiB, and nothing of the pods is left (mounts, run directory entries); a burst of API requests from many
clients is all answered while long streams stay open. `make soak` runs the long form (HC_SOAK_CYCLES=300,
HC_SOAK_CONCURRENT=20); `make test` a short one."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hypercontainer.client.rest import UnixConnection

from .conftest import Daemon

pytestmark = pytest.mark.vm

CYCLES = int(os.environ.get("HC_SOAK_CYCLES", "12"))
CONCURRENT = int(os.environ.get("HC_SOAK_CONCURRENT", "4"))
REQUESTS, CLIENTS = 1000, 50


@pytest.fixture(scope="module")
def soak_hyperd(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("soak"))
    d.start()
    try:
        assert d.hyperctl("load", "-i", str(busybox_tar)).returncode == 0
        yield d
    finally:
        d.stop()


def get(d: Daemon, path: str) -> tuple[int, bytes]:
    conn = UnixConnection(Path(d.env["HYPERCONTAINER_SOCKET"]), 120)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def counts(d: Daemon) -> dict[str, int]:
    status, body = get(d, "/v1/debug/counts")
    assert status == 200, body
    return json.loads(body)


def cycle(d: Daemon, name: str) -> None:
    r = d.hyperctl("run", "-d", "--name", name, "busybox", "sh", "-c", "echo hello; sleep 60")
    assert r.returncode == 0, r.stderr
    r = d.hyperctl("exec", name, "echo", "from-exec")
    assert (r.returncode, r.stdout) == (0, b"from-exec\n"), r
    deadline = time.monotonic() + 30
    while b"hello" not in d.hyperctl("logs", name).stdout:
        assert time.monotonic() < deadline, "no log"
        time.sleep(0.1)
    r = d.hyperctl("rm", "-f", name)
    assert r.returncode == 0, r.stderr


def round_(d: Daemon, tag: str, cycles: int, concurrent: int) -> None:
    """`cycles` run/exec/logs/rm in a row while `concurrent` more run at once beside them."""
    with ThreadPoolExecutor(concurrent + 1) as pool:
        jobs = [pool.submit(lambda: [cycle(d, f"{tag}-s{i}") for i in range(cycles)])]
        jobs += [pool.submit(cycle, d, f"{tag}-c{i}") for i in range(concurrent)]
        for j in jobs:
            j.result()


def settled(d: Daemon, base: dict[str, int], timeout: float = 60) -> dict[str, int]:
    """hyperd's counts once they are back to `base` (what ends asynchronously may take a moment), else the last."""
    deadline = time.monotonic() + timeout
    while True:
        now = counts(d)
        if all(now[k] <= base[k] for k in ("fds", "threads", "tasks", "children")) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def test_cycles_leave_hyperd_as_it_was(soak_hyperd: Daemon) -> None:
    d = soak_hyperd
    round_(d, "warm", 2, CONCURRENT)  # templates, executor threads and caches reach their steady size
    base = settled(d, counts(d), timeout=5)
    run_before = sorted(os.listdir(d.rundir))
    round_(d, "soak", CYCLES, CONCURRENT)
    after = settled(d, base)
    print(f"\nsoak: {CYCLES} cycles beside {CONCURRENT} concurrent creations; hyperd before {base}, after {after}")
    for key in ("fds", "threads", "tasks", "children"):
        assert after[key] <= base[key], (key, base, after)
    assert after["rss_kib"] - base["rss_kib"] < 20 << 10, (base, after)
    assert d.hyperctl("ps", "-aq").stdout == b""
    assert d.mounts_under(d.statedir / "pods") == []
    assert sorted(os.listdir(d.rundir)) == run_before
    assert [p.name for p in (d.statedir / "pods").iterdir()] == [".disks"]  # only the cache of blank pod disks


def test_a_burst_of_requests_is_all_answered_while_streams_stay_open(soak_hyperd: Daemon) -> None:
    d = soak_hyperd
    assert d.hyperctl("run", "-d", "--name", "burst", "busybox", "sleep", "600").returncode == 0
    streams = [d.popen("logs", "-f", "burst") for _ in range(10)]  # long requests held open all along
    try:
        paths = ["/v1/pods", "/v1/version", "/v1/images", "/v1/pods/burst", "/v1/info"]
        failures: list[tuple[str, int]] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            status, _ = get(d, paths[i % len(paths)])
            if status != 200:
                with lock:
                    failures.append((paths[i % len(paths)], status))

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, range(REQUESTS)))
        assert failures == []
        assert all(s.poll() is None for s in streams)  # still following
    finally:
        for s in streams:
            s.kill()
            s.wait()
        d.hyperctl("rm", "-f", "burst")
