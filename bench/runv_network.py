#!/usr/bin/env python3
"""runv network benchmark: TCP throughput host -> container through a published port, side by side in one run:
podman (CNI, its portmap) with runv, the same with runc, and hyperd's own bridge mode (`hyperctl run -p`).

Each receiver is busybox `nc -l -e sh -c 'wc -c'` in a loop as the container's process: it counts what arrived
and answers, so a transfer ends when the receiver has all of it. podman gets its own temp state and network
config directory; hyperd runs in a network namespace of the benchmark's (bench/network.py's set-up)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.network import MIB, SENDER
from tests.conftest import BIN, Daemon, _build_busybox_archive
from tests.netns import host_and_world

RECEIVER = ["sh", "-c", "while true; do nc -l -p 5001 -e sh -c 'wc -c'; done"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(argv_prefix: list[str], port: int, size: int) -> float:
    """Seconds for `size` bytes to 127.0.0.1:port (retrying the connection while the receiver comes up)."""
    for _ in range(120):
        r = subprocess.run([*argv_prefix, sys.executable, "-c", SENDER, "127.0.0.1", str(port), str(size)],
                           capture_output=True, timeout=300)
        if r.returncode == 0:
            return float(r.stdout)
        time.sleep(0.5)
    raise SystemExit(f"sender failed: {r.stderr.decode()[-500:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-runv-network.json")
    args = ap.parse_args()
    size = args.mib * MIB
    tar = _build_busybox_archive()
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-runvnet-"))
    (tmp / "net").mkdir()
    (tmp / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                                         '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(tmp / "containers.conf"))
    podman = ["podman", "--root", str(tmp / "root"), "--runroot", str(tmp / "runroot"), "--storage-driver", "vfs",
              "--network-config-dir", str(tmp / "net")]
    subprocess.run([*podman, "load", "-i", str(tar)], env=env, check=True, capture_output=True)
    host, world = host_and_world()
    (tmp / "hyperd").mkdir()
    d = Daemon(tmp / "hyperd", netns=host.path)
    d.start()
    ports = {"podman+runv": free_port(), "podman+runc": free_port(), "hyperd bridge": free_port()}
    try:
        for name, runtime in (("podman+runv", str(BIN / "runv")), ("podman+runc", shutil.which("runc") or "runc")):
            subprocess.run([*podman, "--runtime", runtime, "run", "-d", "--name", name.replace("+", "-"), "-p",
                            f"127.0.0.1:{ports[name]}:5001", "busybox", *RECEIVER], env=env, check=True,
                           capture_output=True, timeout=300)
        d.hyperctl("load", "-i", str(tar), check=True)
        d.hyperctl("run", "-d", "--name", "sink", "-p", f"127.0.0.1:{ports['hyperd bridge']}:5001", "busybox",
                   *RECEIVER, check=True)
        senders = {"podman+runv": [], "podman+runc": [], "hyperd bridge": host.argv()}
        for name in ports:  # warm up: every receiver answers
            send(senders[name], ports[name], MIB)
        results: dict[str, list[float]] = {k: [] for k in ports}
        for _ in range(args.runs):  # alternating, so drift hits every path alike
            for name in ports:
                results[name].append(send(senders[name], ports[name], size))
    finally:
        d.stop()
        subprocess.run([*podman, "rm", "-af", "-t", "0"], env=env, capture_output=True)
        subprocess.run([*podman, "system", "reset", "-f"], env=env, capture_output=True)
        host.delete()
        world.delete()
        shutil.rmtree(tmp, ignore_errors=True)
    mbps = {k: size / MIB / statistics.median(v) for k, v in results.items()}
    print(f"TCP host -> container through a published port, {args.mib} MiB per transfer, median of {args.runs} "
          "(MiB/s):")
    for k, v in mbps.items():
        print(f"  {k:14s} {v:8.1f}")
    print(f"  podman+runv / podman+runc    {mbps['podman+runv'] / mbps['podman+runc']:.3f}")
    print(f"  podman+runv / hyperd bridge  {mbps['podman+runv'] / mbps['hyperd bridge']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"mib": args.mib, "runs": results, "mib_per_s": mbps}, indent=2))


if __name__ == "__main__":
    main()
