#!/usr/bin/env python3
"""runv benchmark: `podman run --rm busybox true` with runv against the same with runc, and against our own
`hyperctl run --rm busybox true` (hyperd with its defaults: a warm pool), alternating in one run. podman and hyperd
get their own temp state. `podman+runv+factory` is runv with a factory running for its root (`runv factory
--size 2`: `runv create` takes a warm shim and the container a ready VM, as hyperctl's pods take pool VMs);
`podman+runv` has none."""

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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import BIN, Daemon, _build_busybox_archive

from hypercontainer.cli.runv import factory as vm_factory


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    took = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.decode()[-500:]}")
    return took


WRAPPER = """#!/bin/sh
# times each runv call: start and end (seconds since the epoch), then the verb
s=$(date +%s.%N)
"{runv}" "$@"
rc=$?
echo "$s $(date +%s.%N) $1" >> "{log}"
exit $rc
"""


def breakdown(podman: list[str], env: dict, tmp: Path, runs: int, runv: Path,
              settle: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Where podman+runv's time goes: each runv verb's own time and podman's share (medians of `runs` runs through
    a wrapper that logs every call; the wrapper's own few ms are in the verbs)."""
    log, wrapper = tmp / "calls.log", tmp / "runv-timed"
    wrapper.write_text(WRAPPER.format(runv=runv, log=log))
    wrapper.chmod(0o755)
    argv = [*podman, "--runtime", str(wrapper), "run", "--rm", "--network", "none", "busybox", "true"]
    rows: dict[str, list[float]] = {}
    for _ in range(runs):
        settle()
        log.unlink(missing_ok=True)
        t0 = time.time()
        took = timed(argv, env)
        calls = [line.split() for line in log.read_text().splitlines()]
        verbs = {c[2]: (float(c[0]) - t0, float(c[1]) - float(c[0])) for c in calls}
        if not {"create", "start", "delete"} <= verbs.keys():
            continue
        parts = {"create": verbs["create"][1], "start": verbs["start"][1], "delete": verbs["delete"][1],
                 "start→delete (exit, conmon, podman)": verbs["delete"][0] - verbs["start"][0] - verbs["start"][1],
                 "total": took}
        parts["podman (the rest)"] = took - sum(v for k, v in parts.items() if k != "total")
        for k, v in parts.items():
            rows.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "11")))
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-runv.json")
    ap.add_argument("--breakdown", type=int, default=int(os.environ.get("BENCH_BREAKDOWN", "5")), metavar="RUNS",
                    help="runs through a timing wrapper: each runv verb's time (0: none)")
    ap.add_argument("--runv", action="append", default=[], metavar="NAME=PATH",
                    help="another runv build (a script that runs it) timed side by side, e.g. the one before a change")
    args = ap.parse_args()
    others = {f"podman+runv({n})": Path(p) for n, _, p in (a.partition("=") for a in args.runv)}
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
    d = Daemon(tmp / "hyperd", HYPERCONTAINER_POOL="")  # hyperd's defaults: its own warm pool serves hyperctl run
    d.start()
    froot = tmp / "runv-factory"
    wrapper = tmp / "runv-factory.sh"
    wrapper.write_text(f'#!/bin/sh\nexec "{BIN / "runv"}" --root "{froot}" "$@"\n')
    wrapper.chmod(0o755)
    others["podman+runv+factory"] = wrapper
    factory = subprocess.Popen([str(wrapper), "factory", "--size", "2"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def factory_ready() -> None:  # its refill (VMs, warm shims) would compete with the runs for the CPUs
        for _ in range(1200):
            st = vm_factory.status(froot) or {}
            if st.get("ready") == 2 and st.get("shims") == 2:
                return
            time.sleep(0.1)
        raise SystemExit("runv's factory never had its VMs ready")

    try:
        d.hyperctl("load", "-i", str(tar), check=True)
        runc = [*podman, "--runtime", shutil.which("runc") or "runc", "run", "--rm", "--network", "none", "busybox",
                "true"]
        runv = [*podman, "--runtime", str(BIN / "runv"), "run", "--rm", "--network", "none", "busybox", "true"]
        hyperctl = [str(BIN / "hyperctl"), "run", "--rm", "busybox", "true"]
        runs = {"podman+runc": (runc, env), "podman+runv": (runv, env), "hyperctl run": (hyperctl, d.env)}
        runs.update({k: ([*podman, "--runtime", str(p), *runv[len(podman) + 2:]], env) for k, p in others.items()})
        for argv, e in runs.values():  # warm up (and let hyperd's template build)
            timed(argv, e)
        time.sleep(2)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.runs):
            for k, (argv, e) in runs.items():
                d.wait_pool_ready()  # the pool's refill after hyperctl's run would compete with podman's for the CPUs
                factory_ready()
                times[k].append(timed(argv, e))
        parts = {k: breakdown(podman, env, tmp, args.breakdown, p, factory_ready)
                 for k, p in {"podman+runv": BIN / "runv", **others}.items()} if args.breakdown else {}
    finally:
        factory.terminate()
        factory.wait(60)
        d.stop()
        subprocess.run([*podman, "system", "reset", "-f"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"busybox true, median of {args.runs} alternating runs:")
    for k, v in med.items():
        print(f"  {k:24s} {v:6.3f} s")
    # podman's own share is in every podman row: podman+runc against `hyperctl run` is the least any runtime
    # behind podman can get (the bound of 1.5 times `hyperctl run` is to be read against it)
    print(f"  podman+runc / hyperctl run  {med['podman+runc'] / med['hyperctl run']:.2f}")
    for k in ("podman+runv", *others):
        print(f"  {k} / podman+runc   {med[k] / med['podman+runc']:.2f}")
        print(f"  {k} / hyperctl run  {med[k] / med['hyperctl run']:.2f}")
    for k, rows in parts.items():
        print(f"{k}, where the time goes (median of {args.breakdown} runs through a timing wrapper):")
        for row, v in rows.items():
            print(f"  {row:38s} {v:6.3f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"times": times, "medians": med, "breakdown": parts}, indent=2))


if __name__ == "__main__":
    main()
