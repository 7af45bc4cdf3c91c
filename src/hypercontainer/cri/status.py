"""CRI messages from the index's views: sandboxes, containers, their statuses and stats."""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf import json_format

from ..protocol.agent import ContainerStats as GuestStats
from .api import pb
from .index import ContainerView, SandboxView

STATES: dict[str, Any] = {"created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING,
                          "exited": pb.CONTAINER_EXITED}


def ns(t: float | None) -> int:
    return int(t * 1e9) if t else 0


def _msg(cls: Any, data: dict[str, Any] | None) -> Any:
    return json_format.ParseDict(data or {}, cls(), ignore_unknown_fields=True)


# ---- sandboxes --------------------------------------------------------------------------------------------------
def sandbox_state(v: SandboxView) -> Any:
    return pb.SANDBOX_READY if v.ready else pb.SANDBOX_NOTREADY


def sandbox_ips(v: SandboxView) -> list[str]:
    """The pod's addresses (its CNI result's, the primary first) while it is ready: a stopped sandbox's network is
    released, its addresses may be another's."""
    if not v.ready:
        return []
    ips = list((v.meta.get("network") or {}).get("ips") or [])
    if not ips and (ip := (v.info.get("network") or {}).get("ip")):
        ips = [ip]
    return ips


def pod_sandbox(v: SandboxView) -> Any:
    cfg = v.meta.get("config") or {}
    return pb.PodSandbox(id=v.id, metadata=_msg(pb.PodSandboxMetadata, cfg.get("metadata")), state=sandbox_state(v),
                         created_at=int(v.meta.get("created_ns", 0)), labels=cfg.get("labels") or {},
                         annotations=cfg.get("annotations") or {}, runtime_handler=v.meta.get("runtime_handler", ""))


def sandbox_status(v: SandboxView, verbose: bool) -> tuple[Any, dict[str, str]]:
    cfg = v.config
    ips = sandbox_ips(v)
    status = pb.PodSandboxStatus(
        id=v.id, metadata=cfg.metadata, state=sandbox_state(v), created_at=int(v.meta.get("created_ns", 0)),
        network=pb.PodSandboxNetworkStatus(ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=i) for i in ips[1:]]),
        linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=cfg.linux.security_context.namespace_options)),
        labels=dict(cfg.labels), annotations=dict(cfg.annotations), runtime_handler=v.meta.get("runtime_handler", ""))
    info: dict[str, str] = {}
    if verbose:
        vm = v.info.get("vm") or {}
        info["info"] = json.dumps({
            "pod": v.info["name"], "state": v.info["state"], "hostname": v.info.get("hostname"),
            "vm": {"pid": vm.get("pid"), "vcpu": vm.get("vcpu"), "memory_mib": vm.get("memory_mib"),
                   "accel": vm.get("accel"), "booted_from": vm.get("booted_from")},
            "network": v.info.get("network"), "cni": (v.meta.get("network") or {}).get("state") or None,
            "error": v.info.get("error"),
            "unapplied": v.meta.get("unapplied") or [], "config": v.meta.get("config") or {}})
    return status, info


# ---- containers -------------------------------------------------------------------------------------------------
def _image(c: ContainerView) -> Any:
    img = (c.meta.get("config") or {}).get("image") or {}
    return _msg(pb.ImageSpec, img)


def container(c: ContainerView) -> Any:
    cfg = c.meta.get("config") or {}
    return pb.Container(id=c.id, pod_sandbox_id=c.sandbox.id, metadata=_msg(pb.ContainerMetadata, cfg.get("metadata")),
                        image=_image(c), image_ref=c.meta.get("image_ref", ""), image_id=c.meta.get("image_id", ""),
                        state=STATES.get(c.state, pb.CONTAINER_UNKNOWN), created_at=int(c.meta.get("created_ns", 0)),
                        labels=cfg.get("labels") or {}, annotations=cfg.get("annotations") or {})


def _reason(c: ContainerView, core: dict[str, Any]) -> tuple[int, str, str]:
    """(exit code, reason, message) of an exited container."""
    code = core.get("exit_code")
    if code is None:  # the sandbox stopped under it, or hyperd lost it
        return 255, "Unknown", core.get("error") or c.sandbox.info.get("error") or "its sandbox is not running"
    if core.get("OOMKilled"):
        return int(code), "OOMKilled", core.get("error") or ""
    return int(code), "Completed" if code == 0 else "Error", core.get("error") or ""


def _user(c: ContainerView) -> Any:
    fields = (((c.sandbox.info.get("runtime") or {}).get("containers") or {}).get(c.name) or {}).get("fields") or {}
    if "uid" not in fields:
        return None
    return pb.ContainerUser(linux=pb.LinuxContainerUser(uid=int(fields["uid"]), gid=int(fields.get("gid", 0)),
                                                        supplemental_groups=[int(g) for g in fields.get("group", [])]))


def container_status(c: ContainerView, verbose: bool) -> tuple[Any, dict[str, str]]:
    cfg = c.meta.get("config") or {}
    core = c.core
    state = c.state
    code, reason, message = _reason(c, core) if state == "exited" else (0, "", "")
    status = pb.ContainerStatus(
        id=c.id, metadata=_msg(pb.ContainerMetadata, cfg.get("metadata")),
        state=STATES.get(state, pb.CONTAINER_UNKNOWN),
        created_at=int(c.meta.get("created_ns", 0)), started_at=ns(core.get("started_at")),
        finished_at=ns(core.get("finished_at")) if state == "exited" else 0, exit_code=code, image=_image(c),
        image_ref=c.meta.get("image_ref", ""), image_id=c.meta.get("image_id", ""), reason=reason, message=message,
        labels=cfg.get("labels") or {}, annotations=cfg.get("annotations") or {},
        mounts=[_msg(pb.Mount, m) for m in cfg.get("mounts") or []], log_path=c.meta.get("log_path", ""),
        resources=pb.ContainerResources(linux=_msg(pb.LinuxContainerResources, c.meta.get("resources"))),
        stop_signal=cfg.get("stop_signal", "SIGNAL_RUNTIME_DEFAULT"))
    if state == "exited" and not status.finished_at:
        status.finished_at = ns(c.sandbox.info.get("finished")) or status.started_at
    user = _user(c)
    if user is not None:
        status.user.CopyFrom(user)
    info: dict[str, str] = {}
    if verbose:
        info["info"] = json.dumps({
            "sandboxID": c.sandbox.id, "pod": c.sandbox.info["name"], "name": c.name, "pid": core.get("pid"),
            "restarts": core.get("restarts", 0), "unapplied": c.meta.get("unapplied") or [], "config": cfg})
    return status, info


# ---- stats ------------------------------------------------------------------------------------------------------
def container_attributes(c: ContainerView) -> Any:
    cfg = c.meta.get("config") or {}
    return pb.ContainerAttributes(id=c.id, metadata=_msg(pb.ContainerMetadata, cfg.get("metadata")),
                                  labels=cfg.get("labels") or {}, annotations=cfg.get("annotations") or {})


def container_stats(c: ContainerView, guest: GuestStats | None = None) -> Any:
    """A container's writable layer on the host and, from `guest` (its cgroups in the guest, while it runs), its
    CPU time and memory (working set as cAdvisor counts it)."""
    stats = pb.ContainerStats(attributes=container_attributes(c))
    pod = c.sandbox.pod
    if pod is not None and (usage := pod.layer_usage(c.name)) is not None:
        stats.writable_layer.CopyFrom(pb.FilesystemUsage(
            timestamp=time.time_ns(), fs_id=pb.FilesystemIdentifier(mountpoint=str(pod.statedir / "containers")),
            used_bytes=pb.UInt64Value(value=usage[0]), inodes_used=pb.UInt64Value(value=usage[1])))
    if guest is not None:
        stats.cpu.CopyFrom(pb.CpuUsage(timestamp=guest.timestamp,
                                       usage_core_nano_seconds=pb.UInt64Value(value=guest.cpu_ns)))
        memory = pb.MemoryUsage(timestamp=guest.timestamp,
                                working_set_bytes=pb.UInt64Value(value=guest.mem_working_set),
                                usage_bytes=pb.UInt64Value(value=guest.mem_usage),
                                rss_bytes=pb.UInt64Value(value=guest.mem_rss))
        if guest.memory_limit is not None:
            memory.available_bytes.CopyFrom(pb.UInt64Value(value=max(0, guest.memory_limit - guest.mem_working_set)))
        stats.memory.CopyFrom(memory)
    return stats


def sandbox_attributes(v: SandboxView) -> Any:
    cfg = v.meta.get("config") or {}
    return pb.PodSandboxAttributes(id=v.id, metadata=_msg(pb.PodSandboxMetadata, cfg.get("metadata")),
                                   labels=cfg.get("labels") or {}, annotations=cfg.get("annotations") or {})
