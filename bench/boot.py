#!/usr/bin/env python3
"""Boot benchmark: the raw floor, a cold pod, a pod started from a VM template, one taken from the warm pool and
one started as a user would (`default`: no --boot flag, hyperd started with no pool or boot flags, so its own warm
pool serves it), side by side; then host memory (PSS) per idle pod, cold against template clones.

The floor is the same kernel and initramfs booted by bare QEMU (same machine type, memory and accelerator)
with an init that powers off at once (`hc.probe`). A pod is `hyperctl run --rm busybox true`, end to end
(hyperctl's own start included). Runs alternate between the three so that drift in a noisy machine hits all
alike. Prints medians, ratios, the hyperd-side breakdown of each kind of start, and PSS figures.
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

from hypercontainer.vm.qemu import Sockets, VMConfig, command

KINDS = ("cold", "template", "pool", "default")
STEPS = [("network", "network attached"), ("rootfs", "overlay rootfs mounted"), ("share", "share ready"),
         ("qemu", "qemu started"), ("restored", "template state restored"), ("resumed", "pool VM resumed"),
         ("agent", "agent ready"),
         ("started", "container process started"), ("exited", "process exited")]


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


def run_once(d: Daemon, boot: str) -> tuple[float, dict]:
    name = f"b{time.monotonic_ns()}"
    flags = [] if boot == "default" else ["--boot", boot]
    t0 = time.perf_counter()
    r = d.hyperctl("run", "--name", name, *flags, "busybox", "true")
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"hyperctl run failed: {r.stderr.decode()}")
    info = json.loads(d.hyperctl("inspect", name, check=True).stdout)
    d.hyperctl("rm", "-f", name, check=True)
    if boot == "template" and info["vm"]["booted_from"] == "cold":
        raise SystemExit("a template run booted cold: the template is not ready")
    if boot in ("pool", "default") and not info["vm"]["booted_from"].startswith("pool:"):
        raise SystemExit(f"a {boot} run found no pool VM ready")
    return took, info["timings"]


def pss_kib(pid: int) -> int:
    """PSS of a process and its children (virtiofsd's helpers), from smaps_rollup."""
    total = 0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def idle_pss(d: Daemon, boot: str, n: int) -> float:
    """Average PSS (MiB) of n idle pods' QEMU (+ virtiofsd), all running at once."""
    names = [f"idle-{boot}-{i}" for i in range(n)]
    try:
        for name in names:
            d.hyperctl("run", "-d", "--name", name, "--boot", boot, "busybox", "sleep", "600", check=True)
        time.sleep(2)
        total = 0
        for name in names:
            rt = json.loads(d.hyperctl("inspect", name, check=True).stdout)["runtime"]
            total += pss_kib(rt["vm_pid"]) + (pss_kib(rt["share_pid"]) if rt.get("share_pid") else 0)
        return total / n / 1024
    finally:
        d.hyperctl("rm", "-f", *names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "11")))
    ap.add_argument("--pods", type=int, default=int(os.environ.get("BENCH_PODS", "10")), help="for the PSS figures")
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-boot.json")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    # --network none: the start path of the VM itself (bench/network.py measures the network); no pool or boot flag:
    # hyperd's defaults (a warm pool it sizes itself)
    d = Daemon(root, HYPERCONTAINER_POOL="")
    d.start()
    try:
        d.hyperctl("load", "-i", str(_build_busybox_archive()), check=True)
        info = json.loads(d.hyperctl("info", "--json", check=True).stdout)
        guest, accel = info["guest"], info["accelerator"]["name"]
        kernel, initrd = Path(guest["kernel"]), Path(guest["initrd"])
        for _ in range(100):  # hyperd builds the default template in the background at start
            if d.hyperctl("run", "--rm", "--boot", "template", "busybox", "true").returncode == 0 and \
                    run_once(d, "template")[1].get("restored"):
                break
            time.sleep(0.5)
        run_once(d, "cold"), floor_once(kernel, initrd, accel)  # warm caches
        times: dict[str, list[float]] = {"floor": [], "cold": [], "template": [], "pool": [], "default": []}
        marks: dict[str, list[dict]] = {"cold": [], "template": [], "pool": [], "default": []}
        for _ in range(args.runs):  # each run starts with the pool full (a refill would compete for the CPUs)
            d.wait_pool_ready()
            times["floor"].append(floor_once(kernel, initrd, accel))
            for boot in KINDS:
                d.wait_pool_ready()
                took, m = run_once(d, boot)
                times[boot].append(took)
                marks[boot].append(m)
        pss = {boot: idle_pss(d, boot, args.pods) for boot in ("cold", "template")}
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"accelerator: {accel}; guest kernel {guest['kernel_release']}; {args.runs} runs each, alternating\n")
    labels = {"floor": "raw floor (bare qemu, init powers off)", "cold": "cold pod: hyperctl run --rm ... true",
              "template": "template pod: the same", "pool": "pool pod: the same",
              "default": "default: hyperctl run --rm busybox true"}
    for k, label in labels.items():
        v = times[k]
        print(f"{label:40s} median {med[k]:6.3f} s  (min {min(v):.3f}, max {max(v):.3f})")
    served = {b: statistics.median(m["exited"] for m in marks[b]) for b in KINDS}
    cli = {b: statistics.median(t - m["exited"] for t, m in zip(times[b], marks[b], strict=True)) for b in KINDS}
    print(f"\n{'cold / floor':40s} {med['cold'] / med['floor']:6.2f}   (target <= 1.10)")
    print(f"{'  without hyperctl (hyperd: request to exit)':40s} {served['cold'] / med['floor']:6.2f}   "
          f"(hyperctl's own start, connect and exit: {cli['cold']:.3f} s cold, {cli['template']:.3f} s template)")
    print(f"{'template / floor':40s} {med['template'] / med['floor']:6.2f}")
    print(f"{'template / cold':40s} {med['template'] / med['cold']:6.2f}   (template target <= 0.35 s here)")
    print(f"{'pool / template':40s} {med['pool'] / med['template']:6.2f}")
    print(f"{'default / floor':40s} {med['default'] / med['floor']:6.2f}   (target <= 0.45; "
          f"hyperd side {served['default'] / med['floor']:.2f})\n")
    breakdown = {}
    for boot in KINDS:
        keys = {k for m in marks[boot] for k in m}
        breakdown[boot] = {k: statistics.median(m[k] for m in marks[boot] if k in m) for k in keys}
        print(f"{boot} start breakdown (hyperd side, medians, seconds from the request):")
        prev = 0.0
        for key, label in STEPS:
            if key in breakdown[boot]:
                at = breakdown[boot][key]
                print(f"  {label:32s} at {at:6.3f}  (+{at - prev:.3f})")
                prev = at
        if "guest_uptime_at_agent" in breakdown[boot]:
            print(f"  {'guest uptime when agent answered':32s}    {breakdown[boot]['guest_uptime_at_agent']:6.3f}")
    print(f"\nhost memory (PSS) per idle pod, {args.pods} pods at once: cold {pss['cold']:.1f} MiB, "
          f"template clones {pss['template']:.1f} MiB ({pss['template'] / pss['cold']:.2f} x)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"accel": accel, "times": times, "medians": med, "breakdown": breakdown,
                                     "pss_mib": pss}, indent=2))


if __name__ == "__main__":
    main()
