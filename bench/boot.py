#!/usr/bin/env python3
"""Boot benchmark: `hyperctl run --rm busybox true` against the raw floor, measured side by side.

The floor is the same kernel and initramfs booted by bare QEMU (same machine type, memory and accelerator)
with an init that powers off at once (`hc.probe`). Runs alternate between the two so that drift in a noisy
machine hits both alike. Prints medians, the ratio and the host-side breakdown of the pod start.
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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from tests.conftest import Daemon, _build_busybox_archive

from hypercontainer.vm.qemu import Sockets, VMConfig, command


def floor_once(kernel: Path, initrd: Path, accel: str) -> float:
    rundir = Path(tempfile.mkdtemp(prefix="hc-floor-"))
    try:
        cfg = VMConfig(kernel, initrd, Sockets(rundir), accel=accel, cmdline=("hc.probe",),  # type: ignore[arg-type]
                       with_ports=False)
        t0 = time.perf_counter()
        subprocess.run(command(cfg), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def run_once(d: Daemon) -> float:
    t0 = time.perf_counter()
    r = d.hyperctl("run", "--rm", "busybox", "true")
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"hyperctl run failed: {r.stderr.decode()}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "7")))
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-boot.json")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    d = Daemon(root)
    d.start()
    try:
        d.hyperctl("load", "-i", str(_build_busybox_archive()), check=True)
        info = json.loads(d.hyperctl("info", "--json", check=True).stdout)
        guest, accel = info["guest"], info["accelerator"]["name"]
        kernel, initrd = Path(guest["kernel"]), Path(guest["initrd"])
        run_once(d), floor_once(kernel, initrd, accel)  # warm caches
        runs, floors = [], []
        for _ in range(args.runs):
            floors.append(floor_once(kernel, initrd, accel))
            runs.append(run_once(d))
        boots = json.loads(d.hyperctl("info", "--json", check=True).stdout)["recent_boots"][: args.runs]
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(b[k] for b in boots if k in b) for k in boots[0]}
    run_med, floor_med = statistics.median(runs), statistics.median(floors)
    print(f"accelerator: {accel}; guest kernel {info['guest']['kernel_release']}; {args.runs} runs each\n")
    print(f"{'hyperctl run --rm busybox true':40s} median {run_med:6.3f} s  (min {min(runs):.3f}, max {max(runs):.3f})")
    print(f"{'raw floor (bare qemu, init powers off)':40s} median {floor_med:6.3f} s  "
          f"(min {min(floors):.3f}, max {max(floors):.3f})")
    print(f"{'ratio run / floor':40s} {run_med / floor_med:6.2f}   (target <= 1.10)\n")
    print("pod start breakdown (hyperd side, medians, seconds from the request):")
    steps = [("rootfs", "overlay rootfs mounted"), ("share", "virtiofsd ready"), ("qemu", "qemu started"),
             ("agent", "agent ready (kernel + init)"), ("started", "container process started"),
             ("exited", "process exited")]
    prev = 0.0
    for key, label in steps:
        if key in med:
            print(f"  {label:32s} at {med[key]:6.3f}  (+{med[key] - prev:.3f})")
            prev = med[key]
    if "guest_uptime_at_agent" in med:
        print(f"  {'guest uptime when agent answered':32s}    {med['guest_uptime_at_agent']:6.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"accel": accel, "runs": runs, "floors": floors, "ratio": run_med / floor_med,
                                     "breakdown": med}, indent=2))


if __name__ == "__main__":
    main()
