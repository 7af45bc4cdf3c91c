#!/usr/bin/env python3
"""Density benchmark: N idle pods (template clones, `sleep`) running at once on one hyperd. Reports the time until
all run and the pods per second, host memory (PSS of each pod's QEMU; hyperd's RSS) per pod and in total,
`hyperctl ps` and `hyperctl exec` latency with all of them running, and the time to remove them all."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from boot import pss_kib
from tests.conftest import Daemon

MIB = 1 << 20
TARGET_PSS_MIB = 40  # the issue's: 100 idle pods, all running in <= 60 s, <= 40 MiB each, `hyperctl ps` < 0.5 s
PER_POD = 80 * MIB  # what each idle clone is allowed for, before starting (its PSS is well under)


def available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def own_pss(pid: int) -> int:
    """A process's own PSS (bytes), its children left out."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) * 1024


def breakdown(pid: int) -> dict[str, float]:
    """Where one QEMU's PSS goes (MiB), from its smaps: the TCG translation buffer (its one rwx anonymous
    mapping), guest RAM (the template's memory file, or the memfd of a cold boot), QEMU's heap, other anonymous
    memory (thread and coroutine stacks, glib), and mapped files (QEMU and its libraries, shared by every VM)."""
    out = dict.fromkeys(("tcg", "guest_ram", "heap", "anon", "files"), 0.0)
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        f = line.split()
        if not f[0].endswith(":"):  # a mapping's first line: range perms offset dev inode [path]
            path = f[5] if len(f) > 5 else ""
            kind = ("tcg" if not path and f[1] == "rwxp" else "guest_ram" if path.endswith("/mem") or "memfd:mem"
                    in line else "heap" if path == "[heap]" else "anon" if not path or path.startswith("[")
                    else "files")
        elif f[0] == "Pss:":
            out[kind] += int(f[1]) / 1024
    return out


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wait_template(d: Daemon) -> None:
    for _ in range(1200):
        boot = json.loads(d.hyperctl("info", "--json", check=True).stdout)["boot"]
        if any(not t.get("building") for t in boot["templates"]):
            return
        time.sleep(0.1)
    raise SystemExit("the template never became ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pods", type=int, default=int(os.environ.get("BENCH_DENSITY_PODS", "100")))
    ap.add_argument("--parallel", type=int, default=4, help="hyperctl run -d at once")
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-density.json")
    args = ap.parse_args()
    if available() < args.pods * PER_POD:
        raise SystemExit(f"{args.pods} pods need about {args.pods * PER_POD // MIB} MiB; "
                         f"{available() // MIB} MiB are available")
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-density-"))
    d = Daemon(tmp)
    d.start()
    names = [f"dense-{i}" for i in range(args.pods)]
    try:
        d.hyperctl("load", "-i", str(REPO / "build" / "busybox.tar"), check=True)
        wait_template(d)

        def run(name: str) -> None:
            r = d.hyperctl("run", "-d", "--name", name, "busybox", "sleep", "3600", timeout=600)
            if r.returncode != 0:
                raise SystemExit(f"{name}: {r.stderr.decode().strip()}")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(run, names))
        start_all = time.perf_counter() - t0
        time.sleep(3)  # idle
        infos = [json.loads(d.hyperctl("inspect", n, check=True).stdout) for n in names]
        booted = Counter("cold" if i["vm"]["booted_from"] == "cold" else "template" for i in infos)
        pss = [pss_kib(i["runtime"]["vm_pid"]) * 1024 for i in infos]
        clones = [i["runtime"]["vm_pid"] for i in infos if i["vm"]["booted_from"] != "cold"]
        parts = [breakdown(pid) for pid in clones]
        where = {k: statistics.mean(p[k] for p in parts) for k in parts[0]} if parts else {}
        assert d.proc
        hyperd_rss = own_pss(d.proc.pid)
        ps = [timed(lambda: d.hyperctl("ps", check=True)) for _ in range(5)]
        some = names[:: max(1, len(names) // 5)]
        execs = [timed(lambda n=n: d.hyperctl("exec", n, "true", check=True)) for n in some]
        events = d.hyperctl("events", "--since", "1h", "--until", "0s", check=True).stdout.decode().splitlines()
        fallbacks = [e.split("reason=", 1)[1].rstrip(")") for e in events if " template-fallback " in e]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda n: d.hyperctl("rm", "-f", n, check=True), names))
        remove_all = time.perf_counter() - t0
    finally:
        d.hyperctl("rm", "-f", *names, timeout=600)
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "pods": args.pods, "parallel": args.parallel, "booted_from": dict(booted),
        "start_all_s": start_all, "pods_per_s": args.pods / start_all,
        "pss_per_pod_mib": statistics.mean(pss) / MIB, "pss_total_mib": sum(pss) / MIB,
        "hyperd_pss_mib": hyperd_rss / MIB, "ps_median_s": statistics.median(ps),
        "exec_median_s": statistics.median(execs), "remove_all_s": remove_all, "template_fallbacks": fallbacks,
        "clone_pss_mib": where,
    }
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(booted.items()))
    print(f"density: {args.pods} idle pods ({kinds}), {args.parallel} runs at a time")
    print(f"  all running in {start_all:.1f} s ({result['pods_per_s']:.2f} pods/s); removed in {remove_all:.1f} s")
    print(f"  host PSS per pod {result['pss_per_pod_mib']:.1f} MiB (target <= {TARGET_PSS_MIB}), "
          f"total {result['pss_total_mib']:.0f} MiB (hyperd {result['hyperd_pss_mib']:.0f} MiB)")
    if where:
        print("  a clone's QEMU PSS, mean (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in where.items()))
    print(f"  with all running: hyperctl ps {result['ps_median_s']:.3f} s, exec {result['exec_median_s']:.3f} s "
          "(medians)")
    for why in sorted(set(fallbacks)):
        print(f"  {fallbacks.count(why)} clone(s) fell back to a cold boot: {why}")
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
