"""hyperctl stats and GET /v1/pods/{ref}/stats, /v1/stats: the counters' parsing and the rates (no VM); then one
busy pod's CPU, memory and rows, and the errors for a stopped or unknown pod (one VM)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from hypercontainer.cli.hyperctl import stats
from hypercontainer.daemon import api_stats
from hypercontainer.pod.pod import Pod
from hypercontainer.pod.states import PodState

from . import test_tenants
from .conftest import Daemon
from .netns import Netns
from .test_tenants import World

make_world = test_tenants.make_world  # the fixture

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes  packets errs drop fifo frame compressed multicast|bytes  packets errs drop fifo colls carrier compressed
  lo:  100  1  0  0  0  0  0  0  100  1  0  0  0  0  0  0
hctap0:  5000  50  0  0  0  0  0  0  7000  70  0  0  0  0  0  0
hctap1:  1  2  0  0  0  0  0  0  3  4  0  0  0  0  0  0
"""


def test_net_dev_is_read_from_the_guests_side() -> None:
    assert api_stats.parse_net_dev(NET_DEV, {"hctap0", "hctap1"}) == {
        "rx_bytes": 7003, "tx_bytes": 5001, "rx_packets": 74, "tx_packets": 52}
    assert api_stats.parse_net_dev(NET_DEV, {"nope"}) is None
    assert api_stats.net_counters({"mode": "user", "tap": None, "interfaces": [{"tap": None}]}) is None


def test_net_counters_are_read_in_the_taps_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    ns = Netns(f"hct-stats-{os.getpid()}")
    try:
        send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
               "[s.sendto(b'x' * 100, ('127.0.0.1', 9)) for _ in range(3)]"
        ns.run(sys.executable, "-c", send, check=True)
        got = api_stats.net_counters({"tap": "lo", "netns": str(ns.path), "interfaces": []})
        assert got is not None and got["rx_packets"] == got["tx_packets"] >= 3, got  # the namespace's, not ours
        assert got["rx_bytes"] == got["tx_bytes"] >= 300, got
        assert api_stats.net_counters({"tap": "no-such-tap", "netns": str(ns.path), "interfaces": []}) is None
    finally:
        ns.delete()


def test_io_counters_of_this_process() -> None:
    got = api_stats.io_counters([os.getpid()])
    if got is None:
        pytest.skip("/proc/PID/io is not readable here")
    assert set(got) == {"read_bytes", "write_bytes"}
    assert api_stats.io_counters([]) is None


def test_rows_rates_and_sizes() -> None:
    pod = {"id": "ab" * 32, "name": "web", "network": {"rx_bytes": 1500, "tx_bytes": 2_000_000, "rx_packets": 1,
                                                        "tx_packets": 2},
           "block_io": None, "containers": []}
    before = {"name": "c", "timestamp": 1_000_000_000, "cpu_ns": 0, "mem_working_set": 0, "memory_limit": 1,
              "pids": 1}
    now = dict(before, timestamp=1_500_000_000, cpu_ns=750_000_000, mem_working_set=64 << 20,
               memory_limit=256 << 20, pids=3)
    row = stats.fields_of(pod, now, before)
    assert row == {"ID": "abababababab", "Pod": "web", "Container": "c", "Name": "web/c", "CPUPerc": "150.00%",
                   "MemUsage": "64MiB / 256MiB", "MemPerc": "25.00%", "NetIO": "1.5kB / 2MB", "BlockIO": "--",
                   "PIDs": "3"}
    assert stats.fields_of(pod, now, None)["CPUPerc"] == "0.00%"  # no earlier reading: no rate
    assert stats.render("{{.Pod}}\t{{ .CPUPerc }}", row) == "web\t150.00%"


def size(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(B|KiB|MiB|GiB|TiB)", text)
    assert m, text
    return float(m.group(1)) * 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(m.group(2))


@pytest.mark.vm
def test_stats_of_a_busy_pod(hyperd: Daemon) -> None:
    r = hyperd.hyperctl("run", "-d", "--name", "stats-busy", "--memory", "256", "busybox",
                        "sh", "-c", "while :; do :; done")
    assert r.returncode == 0, r.stderr
    try:
        r = hyperd.hyperctl("stats", "--no-stream", "--format", "json", "stats-busy")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(ln) for ln in r.stdout.decode().splitlines()]
        assert len(rows) == 1 and set(rows[0]) == set(stats.FIELDS), rows
        row = rows[0]
        assert row["Pod"] == "stats-busy"
        assert float(row["CPUPerc"].rstrip("%")) > 20, row  # a busy loop: about one vCPU
        used, limit = (size(s) for s in row["MemUsage"].split(" / "))
        assert 0 < used <= limit <= 256 << 20, row
        assert row["PIDs"] != "0"

        # raw counters from the API; every running pod's without a POD, the table lists it
        everyone = hyperd.hyperctl("stats", "--no-stream")
        assert everyone.returncode == 0, everyone.stderr
        assert "stats-busy" in everyone.stdout.decode() and "CPU %" in everyone.stdout.decode()
        only = hyperd.hyperctl("stats", "--no-stream", "--format", "{{.Pod}} {{.PIDs}}", "stats-busy")
        assert only.stdout.decode().startswith("stats-busy "), only

        # streaming (a line a reading with a plain template) until Ctrl-C, which ends it cleanly
        live = hyperd.popen("stats", "--format", "{{.Pod}} {{.CPUPerc}}", "stats-busy", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        try:
            assert live.stdout is not None
            got = [live.stdout.readline(), live.stdout.readline()]
            live.send_signal(signal.SIGINT)
            assert live.wait(30) == 0, live.stderr.read() if live.stderr else None
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
        assert all(g.startswith(b"stats-busy ") for g in got), got

        bad = hyperd.hyperctl("stats", "--no-stream", "--format", "{{.Nope}}")
        assert bad.returncode == 125 and b"no field .Nope" in bad.stderr

        unknown = hyperd.hyperctl("stats", "--no-stream", "no-such-pod")
        assert unknown.returncode == 1 and b"no such pod: no-such-pod" in unknown.stderr, unknown

        assert hyperd.hyperctl("stop", "-t", "1", "stats-busy").returncode == 0
        stopped = hyperd.hyperctl("stats", "--no-stream", "stats-busy")
        assert stopped.returncode == 1 and b"not running" in stopped.stderr, stopped
        assert b"stats-busy" not in hyperd.hyperctl("stats", "--no-stream").stdout
    finally:
        hyperd.hyperctl("rm", "-f", "stats-busy")


@pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")
def test_stats_routes_are_per_tenant(make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/pods/{ref}/stats finds only the caller's pods (a pod route); GET /v1/stats lists only the caller's
    running pods (the administrator: every one). No VM: the pods are marked running, their counters faked."""
    w = make_world()
    w.load("b")
    mine, theirs = (w.pod(t, {"name": "web", "containers": [{"name": "main", "image": "busybox"}]})
                    for t in ("a", "b"))
    r = w.as_("a", "GET", "/v1/pods/web/stats")
    assert r.status_code == 409 and "not running" in r.json()["message"], r.text  # made, not started

    async def fake(p: Pod) -> dict:
        return {"id": p.id, "name": p.name}

    monkeypatch.setattr(api_stats, "pod_stats", fake)
    try:
        mine.state = theirs.state = PodState.RUNNING
        assert w.as_("a", "GET", "/v1/pods/web/stats").json()["id"] == mine.id
        assert w.as_("b", "GET", "/v1/pods/web/stats").json()["id"] == theirs.id
        r = w.as_("a", "GET", f"/v1/pods/{theirs.id}/stats")
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
        assert [s["id"] for s in w.as_("a", "GET", "/v1/stats").json()] == [mine.id]
        assert {s["id"] for s in w.admin.get("/v1/stats").json()} == {mine.id, theirs.id}
    finally:
        mine.state = theirs.state = PodState.CREATED
