#!/usr/bin/env python3
"""Network benchmark: TCP throughput host -> pod (direct and through a published port) and pod -> pod, beside
the same transfer over the host's loopback, in one run.

hyperd runs in a network namespace this script makes (bridge mode); every byte stays inside it. The receiver
is busybox `nc -l -e sh -c 'wc -c'` in the pod: it counts what arrived and answers, so a transfer ends when the
receiver has all of it. Prints MB/s medians and ratios against loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Daemon, _build_busybox_archive
from tests.netns import host_and_world

MIB = 1 << 20
SENDER = """
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(100):
    try:
        s = socket.create_connection((host, port), timeout=60)
        break
    except OSError:
        time.sleep(0.05)
chunk = bytes(1 << 20)
t0 = time.perf_counter()
for _ in range(size >> 20):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
got = s.makefile().read().strip()
took = time.perf_counter() - t0
assert got == str(size), got
print(took)
"""


def listen(d: Daemon, pod: str, port: int) -> subprocess.Popen:
    return d.popen("exec", pod, "nc", "-l", "-p", str(port), "-e", "sh", "-c", "wc -c",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def host_send(ns, host: str, port: int, size: int, receiver: subprocess.Popen | None = None) -> float:
    r = ns.run(sys.executable, "-c", SENDER, host, str(port), str(size), timeout=300)
    if receiver:
        receiver.wait(60)
    if r.returncode:
        raise SystemExit(f"sender failed: {r.stderr.decode()}")
    return float(r.stdout)


def pod_send(d: Daemon, pod: str, host: str, port: int, size: int, receiver: subprocess.Popen) -> float:
    time.sleep(0.3)  # the listener is up (exec returns once the process runs; nc binds at once)
    script = (f"a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=1048576 count={size >> 20} 2>/dev/null "
              f"| nc {host} {port}; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b")
    r = d.hyperctl("exec", pod, "sh", "-c", script, timeout=300)
    receiver.wait(60)
    lines = r.stdout.decode().split()
    if r.returncode or len(lines) < 3 or lines[0] != str(size):
        raise SystemExit(f"pod sender failed: {r.stdout!r} {r.stderr!r}")
    return float(lines[2]) - float(lines[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-network.json")
    args = ap.parse_args()
    size = args.mib * MIB

    root = Path(tempfile.mkdtemp(prefix="hc-bench-net-"))
    host, world = host_and_world()
    d = Daemon(root, netns=host.path)
    d.start()
    try:
        d.hyperctl("load", "-i", str(_build_busybox_archive()), check=True)
        d.hyperctl("run", "-d", "--name", "sink", "-p", "15001:5001", "busybox", "sleep", "3600", check=True)
        d.hyperctl("run", "-d", "--name", "source", "busybox", "sleep", "3600", check=True)
        sink_ip = json.loads(d.hyperctl("inspect", "sink", check=True).stdout)["network"]["ip"]
        results: dict[str, list[float]] = {"loopback": [], "host_to_pod": [], "published_port": [], "pod_to_pod": []}
        for _ in range(args.runs):  # alternating, so drift hits every path alike
            lo = host.popen("busybox", "nc", "-l", "-p", "5001", "-e", "sh", "-c", "wc -c", stdout=subprocess.PIPE)
            results["loopback"].append(host_send(host, "127.0.0.1", 5001, size, lo))
            results["host_to_pod"].append(host_send(host, sink_ip, 5001, size, listen(d, "sink", 5001)))
            results["published_port"].append(host_send(host, "127.0.0.1", 15001, size, listen(d, "sink", 5001)))
            results["pod_to_pod"].append(pod_send(d, "source", sink_ip, 5001, size, listen(d, "sink", 5001)))
        mbps = {k: size / MIB / statistics.median(v) for k, v in results.items()}
        print(f"TCP throughput, {args.mib} MiB per transfer, median of {args.runs} (MiB/s):")
        for k, v in mbps.items():
            ratio = "" if k == "loopback" else f"   ({v / mbps['loopback']:.3f} x host loopback)"
            print(f"  {k:15s} {v:8.1f}{ratio}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mib": args.mib, "runs": results, "mib_per_s": mbps}, indent=2))
    finally:
        d.stop()
        host.delete()
        world.delete()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
