#!/usr/bin/env python3
"""runv benchmark: `podman run --rm busybox true` with runv against the same with runc, and against our own
`hyperctl run --rm busybox true`, alternating in one run. podman and hyperd get their own temp state."""

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

from tests.conftest import BIN, Daemon, _build_busybox_archive


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    took = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.decode()[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "11")))
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-runv.json")
    args = ap.parse_args()
    tar = _build_busybox_archive()
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-runv-"))
    (tmp / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                                         '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(tmp / "containers.conf"))
    (tmp / "net").mkdir()  # its own network configs: `system reset` removes every one it sees (/etc/cni/net.d's)
    podman = ["podman", "--root", str(tmp / "root"), "--runroot", str(tmp / "runroot"), "--storage-driver", "vfs",
              "--network-config-dir", str(tmp / "net")]
    subprocess.run([*podman, "load", "-i", str(tar)], env=env, check=True, capture_output=True)
    (tmp / "hyperd").mkdir()
    d = Daemon(tmp / "hyperd")
    d.start()
    try:
        d.hyperctl("load", "-i", str(tar), check=True)
        runc = [*podman, "--runtime", shutil.which("runc") or "runc", "run", "--rm", "--network", "none", "busybox",
                "true"]
        runv = [*podman, "--runtime", str(BIN / "runv"), "run", "--rm", "--network", "none", "busybox", "true"]
        hyperctl = [str(BIN / "hyperctl"), "run", "--rm", "busybox", "true"]
        for argv, e in ((runc, env), (runv, env), (hyperctl, d.env)):  # warm up (and let hyperd's template build)
            timed(argv, e)
        time.sleep(2)
        times: dict[str, list[float]] = {"podman+runc": [], "podman+runv": [], "hyperctl run": []}
        for _ in range(args.runs):
            times["podman+runc"].append(timed(runc, env))
            times["podman+runv"].append(timed(runv, env))
            times["hyperctl run"].append(timed(hyperctl, d.env))
    finally:
        d.stop()
        subprocess.run([*podman, "system", "reset", "-f"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"busybox true, median of {args.runs} alternating runs:")
    for k, v in med.items():
        print(f"  {k:14s} {v:6.3f} s")
    print(f"  podman+runv / podman+runc   {med['podman+runv'] / med['podman+runc']:.2f}")
    print(f"  podman+runv / hyperctl run  {med['podman+runv'] / med['hyperctl run']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"times": times, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
