"""The API's stats routes (added to the app by create_app), hyperctl stats' raw counters (the client computes rates
from two readings):

    GET /v1/pods/{ref}/stats    a running pod's counters: each running container's CPU time, memory and process
                                count (its cgroups in the guest), the VM's network and block I/O as the host counts
                                them; 404 for a pod the caller does not have, 409 for one that does not run
    GET /v1/stats               the same for each of the caller's running pods (a tenant: its own)

A pod's counters:
    id, name, timestamp (ns since the epoch, when they were read), vcpu, memory_limit (the VM's bytes)
    containers  [{name, timestamp, cpu_ns, mem_usage, mem_working_set, mem_rss, pids, memory_limit}]: memory_limit is
                the container's own limit, else the VM's size
    network     {rx_bytes, tx_bytes, rx_packets, tx_packets} seen from the guest (a tap's rx is the guest's tx), over
                the VM's taps; null when it has none (QEMU's user-mode network)
    block_io    {read_bytes, write_bytes}: what QEMU and its file server (the guest's disks and shared directories)
                made the host's storage read and write (/proc/PID/io); null when the host does not say
    vm          {cpu_ns, memory}: QEMU's and the file server's CPU time and resident memory on the host; null when gone
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import HTTPConnection

from ..errors import Conflict, HCError
from ..nsenter import run_in
from ..pod.manager import PodManager, owner
from ..pod.pod import Pod
from ..pod.states import PodState
from .auth import tenant_of

MIB = 1 << 20


def parse_net_dev(text: str, names: set[str]) -> dict[str, int] | None:
    """The summed counters of interfaces `names` in a /proc/net/dev text, seen from the other end (a tap's receive is
    what the guest sent); None when none of them is there."""
    out = {"rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0}
    found = False
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() not in names:
            continue
        f = rest.split()
        if len(f) < 10:
            continue
        found = True
        out["tx_bytes"] += int(f[0])  # the tap received: the guest sent
        out["tx_packets"] += int(f[1])
        out["rx_bytes"] += int(f[8])
        out["rx_packets"] += int(f[9])
    return out if found else None


def _net_dev() -> str:
    return Path("/proc/thread-self/net/dev").read_text()  # this thread's namespace (run_in: the pod's)


def net_counters(net: dict[str, Any]) -> dict[str, int] | None:
    """The guest's network counters from its taps (in hyperd's namespace, or the attachment's); None without one."""
    taps = {i["tap"] for i in net.get("interfaces") or [] if i.get("tap")}
    if net.get("tap"):
        taps.add(net["tap"])
    if not taps:
        return None
    try:
        text = run_in(net["netns"], _net_dev) if net.get("netns") else _net_dev()
    except (OSError, HCError):
        return None
    return parse_net_dev(text, taps)


def io_counters(pids: list[int]) -> dict[str, int] | None:
    """read_bytes and write_bytes of processes from /proc/PID/io: what they made the storage layer fetch and write
    (page-cache hits are not counted, as a cgroup's block I/O); None if none could be read."""
    out = {"read_bytes": 0, "write_bytes": 0}
    found = False
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/io").read_text()
        except OSError:
            continue
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        with contextlib.suppress(KeyError, ValueError):
            out["read_bytes"] += int(fields["read_bytes"])
            out["write_bytes"] += int(fields["write_bytes"])
            found = True
    return out if found else None


def host_counters(pod: Pod) -> dict[str, Any]:
    """What the host counts for the pod's VM: network, block I/O, CPU and memory (blocking: run on a thread)."""
    rt = pod.runtime()
    usage = pod.host_usage()
    return {"network": net_counters(pod.net_info()),
            "block_io": io_counters([p for p in (rt.get("vm_pid"), rt.get("share_pid")) if p]),
            "vm": {"cpu_ns": usage.cpu_ns, "memory": usage.memory} if usage else None}


async def pod_stats(pod: Pod) -> dict[str, Any]:
    """A running pod's counters (the module's doc); Conflict if it does not run."""
    if pod.state != PodState.RUNNING:
        raise Conflict(f"pod {pod.name} is {pod.state.value}, not running: no stats")
    info = pod.info()
    vm_bytes = int(info["vm"]["memory_mib"]) * MIB

    async def one(name: str) -> dict[str, Any] | None:
        try:
            s = await pod.container_stats(name)
        except HCError:  # not running (yet, or any more)
            return None
        return {"name": name, "timestamp": s.timestamp or time.time_ns(), "cpu_ns": s.cpu_ns,
                "mem_usage": s.mem_usage, "mem_working_set": s.mem_working_set, "mem_rss": s.mem_rss,
                "pids": s.pids, "memory_limit": min(s.memory_limit, vm_bytes) if s.memory_limit else vm_bytes}

    running = [c["name"] for c in info["containers"] if c["state"] == "running"]
    containers = [c for c in await asyncio.gather(*(one(n) for n in running)) if c is not None]
    host = await asyncio.to_thread(host_counters, pod)
    return {"id": pod.id, "name": pod.name, "timestamp": time.time_ns(), "vcpu": info["vm"]["vcpu"],
            "memory_limit": vm_bytes, "containers": containers, **host}


def add_stats_routes(app: FastAPI, manager: PodManager, pod_of: Callable[[HTTPConnection, str], Pod]) -> None:
    """`pod_of`: create_app's, the running pod a ref names among the caller's."""

    @app.get("/v1/pods/{ref}/stats")
    async def stats_of_pod(request: Request, ref: str) -> dict:
        return await pod_stats(pod_of(request, ref))

    @app.get("/v1/stats")
    async def stats_of_pods(request: Request) -> list[dict]:
        who = tenant_of(request)
        pods = [p for p in list(manager.pods.values()) if p.state == PodState.RUNNING
                and (who is None or owner(p) == who)]

        async def one(p: Pod) -> dict | None:
            try:
                return await pod_stats(p)
            except HCError:  # it stopped while we asked
                return None

        return [s for s in await asyncio.gather(*(one(p) for p in pods)) if s is not None]
