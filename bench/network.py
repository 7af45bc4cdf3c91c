#!/usr/bin/env python3
"""Network benchmark: TCP throughput host -> pod (direct and through a published port) and pod -> pod, beside
the same transfer over the host's loopback and over a guest's own loopback, in one run.

hyperd runs in a network namespace this script makes (bridge mode); every byte stays inside it. The receiver
is busybox `nc -l -e sh -c 'wc -c'` in the pod: it counts what arrived and answers, so a transfer ends when the
receiver has all of it. Prints MB/s medians and ratios against loopback.

The guest's loopback (sender and receiver both in one pod, timed inside the guest) is the limit a NIC could reach:
the guest's own TCP stack and busybox's copying on its one vCPU, under TCG, with no device in the way. busybox nc
moves 1 KiB per read and write. pod -> pod's sender writes as host -> pod's does, 1 MiB at a time (`dd` on the
socket, through `nc -e`), so the guest sends 64 KiB TSO segments; it is timed in the receiving guest, from accept to
the sender's close. The row `pod -> pod, 1 KiB writes` pipes `dd` through busybox nc instead, one segment per
KiB: what a chatty sender gets (each segment crosses two virtio-net devices under TCG). The targets: host -> pod
at least half of the guest loopback, pod -> pod at least half of host -> pod. Each pod's negotiated virtio-net
offloads are printed.
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
TARGETS = (("host_to_pod", "guest_loopback", 0.5), ("pod_to_pod", "host_to_pod", 0.5))
# Negotiated virtio-net features (/sys/bus/virtio/devices/*/features: one 0/1 character per bit).
OFFLOADS = {"csum": 0, "guest_csum": 1, "guest_tso4": 7, "host_tso4": 11, "mrg_rxbuf": 15}
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


def pod_send(d: Daemon, pod: str, sink: str, host: str, port: int, size: int) -> float:
    """`size` bytes from `pod` to `sink` (at `host`), written 1 MiB at a time; timed in `sink` from accept to EOF."""
    out = f"/tmp/rx-{port}"
    receiver = d.popen("exec", sink, "nc", "-l", "-p", str(port), "-e", "sh", "-c",
                       f"a=$(cut -d' ' -f1 /proc/uptime); n=$(wc -c); b=$(cut -d' ' -f1 /proc/uptime); "
                       f"echo $n $a $b > {out}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # the listener is up (exec returns once the process runs; nc binds at once)
    r = d.hyperctl("exec", pod, "nc", host, str(port), "-e", "dd", "if=/dev/zero", "bs=1048576",
                   f"count={size >> 20}", timeout=300)
    receiver.wait(60)
    got = d.hyperctl("exec", sink, "cat", out).stdout.decode().split()
    if r.returncode or len(got) < 3 or got[0] != str(size):
        raise SystemExit(f"pod sender failed: {r.stderr!r} {got!r}")
    return float(got[2]) - float(got[1])


def pod_send_small(d: Daemon, pod: str, host: str, port: int, size: int, receiver: subprocess.Popen) -> float:
    """`dd | nc`: busybox nc sends what it reads, 1 KiB at a time."""
    time.sleep(0.3)  # the listener is up (exec returns once the process runs; nc binds at once)
    script = (f"a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=1048576 count={size >> 20} 2>/dev/null "
              f"| nc {host} {port}; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b")
    r = d.hyperctl("exec", pod, "sh", "-c", script, timeout=300)
    receiver.wait(60)
    lines = r.stdout.decode().split()
    if r.returncode or len(lines) < 3 or lines[0] != str(size):
        raise SystemExit(f"pod sender failed: {r.stdout!r} {r.stderr!r}")
    return float(lines[2]) - float(lines[1])


def guest_loopback(d: Daemon, pod: str, port: int, size: int) -> float:
    """Sender and receiver in one pod, over its loopback: the guest's own TCP path, timed inside the guest."""
    script = (f"nc -l -p {port} -e sh -c 'wc -c' & sleep 0.3; a=$(cut -d' ' -f1 /proc/uptime); "
              f"dd if=/dev/zero bs=1048576 count={size >> 20} 2>/dev/null | nc 127.0.0.1 {port}; "
              "b=$(cut -d' ' -f1 /proc/uptime); echo $a $b; wait")
    r = d.hyperctl("exec", pod, "sh", "-c", script, timeout=300)
    lines = r.stdout.decode().split()
    if r.returncode or len(lines) < 3 or lines[0] != str(size):
        raise SystemExit(f"guest loopback failed: {r.stdout!r} {r.stderr!r}")
    return float(lines[2]) - float(lines[1])


def offloads(d: Daemon, pod: str) -> str:
    """The offloads the pod's NIC negotiated (virtio-net feature bits), e.g. "csum+ guest_tso4- ..."."""
    r = d.hyperctl("exec", pod, "sh", "-c", "for f in /sys/bus/virtio/devices/*; do "
                   "[ \"$(cat $f/device)\" = 0x0001 ] && cat $f/features; done; true", check=True)
    bits = r.stdout.decode().split()[0]
    return " ".join(f"{k}{'+' if bits[b] == '1' else '-'}" for k, b in OFFLOADS.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-network.json")
    ap.add_argument("--boot", choices=("cold", "template", "pool"), default=None,
                    help="hyperd's --boot (default: hyperd's own default)")
    args = ap.parse_args()
    size = args.mib * MIB

    root = Path(tempfile.mkdtemp(prefix="hc-bench-net-"))
    host, world = host_and_world()
    d = Daemon(root, netns=host.path, **({"HYPERCONTAINER_BOOT": args.boot} if args.boot else {}))
    try:
        d.start()  # inside: a hyperd that does not come up still leaves no namespaces behind
        d.hyperctl("load", "-i", str(_build_busybox_archive()), check=True)
        d.hyperctl("run", "-d", "--name", "sink", "-p", "15001:5001", "busybox", "sleep", "3600", check=True)
        d.hyperctl("run", "-d", "--name", "source", "busybox", "sleep", "3600", check=True)
        sink_ip = json.loads(d.hyperctl("inspect", "sink", check=True).stdout)["network"]["ip"]
        booted = {n: json.loads(d.hyperctl("inspect", n, check=True).stdout)["vm"]["booted_from"]
                  for n in ("sink", "source")}
        nic = {n: offloads(d, n) for n in ("sink", "source")}
        results: dict[str, list[float]] = {"loopback": [], "guest_loopback": [], "host_to_pod": [],
                                           "published_port": [], "pod_to_pod": [], "pod_to_pod_1k": []}
        for _ in range(args.runs):  # alternating, so drift hits every path alike
            lo = host.popen("busybox", "nc", "-l", "-p", "5001", "-e", "sh", "-c", "wc -c", stdout=subprocess.PIPE)
            results["loopback"].append(host_send(host, "127.0.0.1", 5001, size, lo))
            results["guest_loopback"].append(guest_loopback(d, "sink", 5002, size))
            results["host_to_pod"].append(host_send(host, sink_ip, 5001, size, listen(d, "sink", 5001)))
            results["published_port"].append(host_send(host, "127.0.0.1", 15001, size, listen(d, "sink", 5001)))
            results["pod_to_pod"].append(pod_send(d, "source", "sink", sink_ip, 5003, size))
            results["pod_to_pod_1k"].append(pod_send_small(d, "source", sink_ip, 5001, size, listen(d, "sink", 5001)))
        mbps = {k: size / MIB / statistics.median(v) for k, v in results.items()}
        print(f"TCP throughput, {args.mib} MiB per transfer, median of {args.runs} (MiB/s):")
        for k, v in mbps.items():
            ratio = "" if k == "loopback" else f"   ({v / mbps['loopback']:.3f} x host loopback)"
            label = {"guest_loopback": "guest loopback (limit)", "pod_to_pod_1k": "pod_to_pod, 1 KiB writes"}.get(k, k)
            print(f"  {label:25s} {v:8.1f}{ratio}")
        ratios = {f"{a}/{b}": mbps[a] / mbps[b] for a, b, _ in TARGETS}
        for a, b, want in TARGETS:
            got = ratios[f"{a}/{b}"]
            print(f"  {a + ' / ' + b:30s} {got:6.3f}   (target >= {want}: {'met' if got >= want else 'NOT met'})")
        for n in ("sink", "source"):
            print(f"  {n} ({'cold boot' if booted[n] == 'cold' else 'template clone'}): {nic[n]}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mib": args.mib, "runs": results, "mib_per_s": mbps, "ratios": ratios,
                                         "booted_from": booted, "offloads": nic}, indent=2))
    finally:
        d.stop()
        host.delete()
        world.delete()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
