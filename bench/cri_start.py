#!/usr/bin/env python3
"""CRI start benchmark: a pod sandbox and a busybox container (`sleep 3600`) in it, through the Kubernetes CRI,
against hyperd's own CRI and against a private containerd (1.6, CRI plugin, runc shim) running runc and running
runv (its `BinaryName`), alternating in one run. Two figures per runtime, medians of --runs rounds:

  - crictl: the wall time of `crictl runp pod.json` + `crictl create POD ctr.json pod.json` + `crictl start CTR`
    (three crictl processes, as a person or a script would run them);
  - RunPodSandbox -> RUNNING: from a RunPodSandbox request being sent (a gRPC client of ours, no crictl) through
    CreateContainer and StartContainer until ContainerStatus reports the container CONTAINER_RUNNING.

Each round runs every runtime once (the order rotates from round to round), a sandbox per figure; each sandbox is
stopped and removed (StopPodSandbox + RemovePodSandbox) outside the timed part. A warm-up round goes first (hyperd
builds its VM template, containerd loads its shims). All three pull the same busybox and pause images from one
local registry beforehand (tools/critest's images, registry and daemons: a registry of our own, under
build/bench-cri/run/, with just those two images). Everything but the logs (build/bench-cri/*.log) is removed at
the end, also on failure, Ctrl-C or SIGTERM, and at the start of the next run after a run that was killed."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools" / "critest"))  # its modules import each other by their bare names

import build as critest_build  # tools/critest/build.py
import env as critest_env  # tools/critest/env.py
import grpc
from google.protobuf import json_format
from tests.conftest import BIN

from hypercontainer.cri.api import pb, rpc

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"  # tools/critest's busybox image: a static busybox
IMAGES = ("e2e-test-images/busybox:1.29-2", critest_env.SANDBOX_IMAGE.split("/", 1)[1])  # as the registry holds them
TARGETS = ("hyperd", "containerd+runc", "containerd+runv")
# name -> (CNI network name, bridge, subnet): neither tools/critest's (10.98/10.99), the tests' (10.67), hyperd's
# own (10.77/16) nor podman's (10.88/16)
NETWORKS = {"hyperd": ("bench-cri-hyperd", "hcbench0", "10.94.1.0/24"),
            "containerd+runc": ("bench-cri-runc", "hcbench1", "10.94.2.0/24"),
            "containerd+runv": ("bench-cri-runv", "hcbench2", "10.94.3.0/24")}


class Interrupted(Exception):
    pass


def on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclass
class Target:
    name: str
    endpoint: str  # unix://<CRI socket>
    crictl_bin: Path
    channel: Any = None

    def crictl(self, *args: str, timeout: float = 300) -> str:
        r = critest_env.crictl_run(self.crictl_bin, self.endpoint, *args, timeout=timeout)
        if r.returncode != 0:
            raise SystemExit(f"{self.name}: crictl {' '.join(args)} failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[-800:]}")
        return r.stdout.strip()

    @property
    def runtime(self) -> Any:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.endpoint)
        return rpc.RuntimeServiceStub(self.channel)


def pod_config(name: str, logs: Path) -> dict[str, Any]:
    (logs / name).mkdir(parents=True, exist_ok=True)
    return {"metadata": {"name": name, "namespace": "bench", "uid": uuid.uuid4().hex, "attempt": 0},
            "hostname": name, "log_directory": str(logs / name), "linux": {}}


CONTAINER = {"metadata": {"name": "sleeper"}, "image": {"image": BUSYBOX}, "command": ["sleep", "3600"],
             "log_path": "sleeper.log", "linux": {}}


def remove_sandbox(t: Target, sid: str) -> None:
    t.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=300)
    t.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=300)


def state_of(t: Target, cid: str) -> int:
    return t.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=60).status.state


def booted_from(t: Target, sid: str) -> str:
    """A hyperd sandbox: how its VM started (cold, template, pool), from PodSandboxStatus' verbose info."""
    r = t.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=60)
    how = json.loads(r.info.get("info", "{}")).get("vm", {}).get("booted_from") or "?"
    if how in ("cold", "?"):
        return how
    return "pool" if how.startswith("pool:") else "template"  # else a template's key


BOOTS: list[str] = []  # how each measured hyperd sandbox started


def with_crictl(t: Target, work: Path, name: str) -> dict[str, float]:
    """crictl runp + create + start, each timed; the sandbox is then checked (its container RUNNING) and removed."""
    pod = work / f"{name}.pod.json"
    pod.write_text(json.dumps(pod_config(name, work / "logs")))
    ctr = work / "ctr.json"
    ctr.write_text(json.dumps(CONTAINER))
    sid = ""
    try:
        t0 = time.perf_counter()
        sid = t.crictl("runp", str(pod))
        t1 = time.perf_counter()
        cid = t.crictl("create", sid, str(ctr), str(pod))
        t2 = time.perf_counter()
        t.crictl("start", cid)
        t3 = time.perf_counter()
        if state_of(t, cid) != pb.CONTAINER_RUNNING:
            raise SystemExit(f"{t.name}: the container is not running after `crictl start`")
        if t.name == "hyperd":
            BOOTS.append(booted_from(t, sid))
    finally:
        if sid:
            remove_sandbox(t, sid)
    return {"runp": t1 - t0, "create": t2 - t1, "start": t3 - t2, "total": t3 - t0}


def with_grpc(t: Target, work: Path, name: str) -> float:
    """Seconds from RunPodSandbox being sent to ContainerStatus reporting the container RUNNING."""
    cfg = json_format.ParseDict(pod_config(name, work / "logs"), pb.PodSandboxConfig())
    ccfg = json_format.ParseDict(CONTAINER, pb.ContainerConfig())
    rt = t.runtime
    sid = ""
    try:
        t0 = time.perf_counter()
        sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=600).pod_sandbox_id
        cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg),
                                 timeout=300).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=300)
        deadline = time.monotonic() + 120
        while (state := state_of(t, cid)) != pb.CONTAINER_RUNNING:
            if state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                raise SystemExit(f"{t.name}: the container is {pb.ContainerState.Name(state)}, not running")
            time.sleep(0.005)
        took = time.perf_counter() - t0
        if t.name == "hyperd":
            BOOTS.append(booted_from(t, sid))
    finally:
        if sid:
            remove_sandbox(t, sid)
    return took


@dataclass
class Setup:
    """Where everything lives, and how to remove all of it (what a killed run left too)."""
    out: Path
    crictl: Path
    assets: Path

    @property
    def run(self) -> Path:
        return self.out / "run"

    def net(self, name: str) -> critest_env.Network:
        n, bridge, subnet = NETWORKS[name]
        return critest_env.Network(n, bridge, subnet, loopback=name == "hyperd")  # containerd brings up lo itself

    def runtime(self, name: str) -> tuple[str, Path, dict[str, str]]:
        """containerd+runc/runv: the shim's binary, containerd's directory and environment (runv's with it)."""
        rt = name.split("+")[1]
        d = self.run / rt
        binary = (shutil.which("runc") or "/usr/sbin/runc") if rt == "runc" else str(BIN / "runv")
        return binary, d, dict(os.environ, HYPERCONTAINER_ASSETS=str(self.assets), HYPERCONTAINER_RUN=str(d / "hc"))

    def cleanup(self, shm_before: set[int] | None = None) -> list[str]:
        """Removes sandboxes, daemons, VMs, shims, mounts, netns, bridges, NAT rules and run/; returns what hyperd
        left behind after its own cleanup."""
        left = critest_env.hyperd_cleanup(self.run / "hyperd", self.net("hyperd"), self.crictl, BIN / "hyperd",
                                          self.assets, shm_before)
        for name in TARGETS[1:]:
            binary, d, environ = self.runtime(name)
            critest_env.cleanup(d, binary, self.net(name), self.crictl, environ, shm_before)
        for pid in critest_env.procs_mentioning(self.run / "registry" / "config.yml"):
            critest_env.stop_pid(pid)
        if self.run.exists():
            critest_env.unmount_all(self.run)
            if critest_env.mounts_under(self.run):
                critest_build.log(f"warning: still mounted, so {self.run} is kept: "
                                f"{critest_env.mounts_under(self.run)[:3]}")
            else:
                shutil.rmtree(self.run, ignore_errors=True)
        return left


def start_all(s: Setup, registry: critest_env.Registry) -> tuple[dict[str, Target], str]:
    """hyperd and the two containerds, each with both images pulled; returns the targets and hyperd's line."""
    targets = {}
    hd = critest_env.Hyperd(s.run / "hyperd", BIN / "hyperd", s.assets, s.net("hyperd"), s.crictl)
    hd.write_config(registry.port)
    critest_build.log(f"starting hyperd (log: {s.out / 'hyperd.log'})")
    hd.start(s.out / "hyperd.log")
    targets["hyperd"] = Target("hyperd", hd.endpoint, s.crictl)
    for name in TARGETS[1:]:
        binary, d, environ = s.runtime(name)
        d.mkdir(parents=True)
        ctd = critest_env.Containerd(d, binary, s.net(name), environ, s.crictl)
        ctd.write_config(registry.port)
        log = s.out / f"containerd-{name.split('+')[1]}.log"
        critest_build.log(f"starting containerd with {binary} (log: {log})")
        ctd.start(log)
        targets[name] = Target(name, ctd.endpoint, s.crictl)
    for t in targets.values():
        t.crictl("pull", BUSYBOX)
        if t.name != "hyperd":  # containerd's pause container; hyperd has none
            t.crictl("pull", critest_env.SANDBOX_IMAGE)
    return targets, hd.describe()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-cri-start.json")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "bench-cri",
                    help="its logs, and (while it runs) the daemons' directories and the registry")
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("HYPERCONTAINER_ASSETS")
                                                        or "/var/lib/hypercontainer/assets"))
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait after each sandbox's removal")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root (hyperd, containerd, CNI, mounts)")
    for tool in ("containerd", "docker-registry", "skopeo"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    critest_out = REPO / "build" / "critest"  # crictl, busybox and the images, built once, shared with `make critest`
    _, crictl = critest_build.cri_tools(critest_out)
    layout, refs = critest_build.image_layout(critest_out, critest_build.busybox(critest_out),
                                              critest_build.programs(critest_out))
    refs = {r: refs[r] for r in IMAGES}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = Setup(out, crictl, args.assets.resolve())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    crictl_times: dict[str, list[dict[str, float]]] = {t: [] for t in TARGETS}
    to_running: dict[str, list[float]] = {t: [] for t in TARGETS}
    with open(out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another bench/cri_start.py holds {out / '.lock'}") from None
        s.cleanup()  # what a killed run left
        shm_before = set(critest_env.shm_segments())
        registry = critest_env.Registry(s.run / "registry")
        targets: dict[str, Target] = {}
        hyperd_line = ""
        try:
            registry.start(refs)
            registry.push(layout, refs)
            targets, hyperd_line = start_all(s, registry)
            work = s.run / "work"
            work.mkdir()
            for r in range(-1, args.runs):  # round -1: the warm-up, not counted
                order = TARGETS[r % 3:] + TARGETS[:r % 3]
                critest_build.log(f"{'warm-up' if r < 0 else f'round {r + 1}/{args.runs}'}: {', '.join(order)}")
                for name in order:
                    t = targets[name]
                    g = with_grpc(t, work, f"g{r + 1}-{name.replace('+', '-')}")
                    time.sleep(args.settle)
                    c = with_crictl(t, work, f"c{r + 1}-{name.replace('+', '-')}")
                    time.sleep(args.settle)
                    if r >= 0:
                        to_running[name].append(g)
                        crictl_times[name].append(c)
                    else:
                        BOOTS.clear()  # the warm-up's
        except (KeyboardInterrupt, Interrupted) as e:
            print(f"\ninterrupted ({str(e) or 'SIGINT'}); cleaning up", file=sys.stderr)
            return 130
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # let the cleanup finish
                signal.signal(sig, signal.SIG_IGN)
            for t in targets.values():
                if t.channel is not None:
                    t.channel.close()
            registry.stop()
            critest_build.log("cleaning up: sandboxes, daemons, VMs, shims, network")
            for what in s.cleanup(shm_before):
                critest_build.log(f"warning: hyperd left {what} (removed now)")
            with contextlib.suppress(OSError):
                (out / ".lock").unlink()
    report(args, crictl_times, to_running, hyperd_line)
    return 0


def report(args: argparse.Namespace, crictl_times: dict[str, list[dict[str, float]]],
           to_running: dict[str, list[float]], hyperd_line: str) -> None:
    def med(xs: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in xs)

    crictl_med = {k: {step: med(v, step) for step in ("runp", "create", "start", "total")}
                  for k, v in crictl_times.items()}
    running_med = {k: statistics.median(v) for k, v in to_running.items()}
    boots = ", ".join(f"{n} {b}" for b, n in sorted(Counter(BOOTS).items()))
    print(f"\nCRI: pod sandbox + busybox `sleep 3600`, median of {args.runs} alternating rounds ({hyperd_line}; "
          f"hyperd's VMs started: {boots}):")
    print(f"  {'':16s} {'crictl runp+create+start':>25s} {'(runp / create / start)':>26s} "
          f"{'RunPodSandbox->RUNNING':>23s}")
    for k in TARGETS:
        m = crictl_med[k]
        steps = f"{m['runp']:.3f} / {m['create']:.3f} / {m['start']:.3f}"
        print(f"  {k:16s} {m['total']:23.3f} s {steps:>26s} {running_med[k]:21.3f} s")
    for ref in TARGETS[1:]:
        print(f"  hyperd / {ref:16s} {crictl_med['hyperd']['total'] / crictl_med[ref]['total']:14.2f}"
              f" {'':26s} {running_med['hyperd'] / running_med[ref]:23.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": args.runs, "hyperd": hyperd_line, "crictl": crictl_times,
                                     "to_running": to_running, "hyperd_boots": BOOTS, "medians": {"crictl": crictl_med,
                                                                           "to_running": running_med}}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
