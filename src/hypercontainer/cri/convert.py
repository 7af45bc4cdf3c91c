"""CRI configs as the pod core's specs. What a VM sandbox cannot honour is refused with the reason (the host's
namespaces, devices, image volumes, ...); what it can run without is applied as far as it goes and listed in the
sandbox's or container's `unapplied` notes (hyperd's log, `crictl inspect`'s info), never dropped silently.

Sandbox (PodSandboxConfig) -> a pod kept alive with no container:
    metadata, labels, annotations, log_directory     kept in the pod's record (the CRI's meta)
    hostname, dns_config                             hostname, dns, dns_search, dns_options
    linux.resources (+ overhead)                     the VM's size: memory limit + 64 MiB (at least 256 MiB), vCPUs
                                                     from the CPU quota; else hyperd's default size
    linux.sysctls                                    every container's sysctls (set in the guest, the pod's own kernel)
    namespace options network/pid/ipc NODE           refused: a VM cannot share the host's namespaces
    port_mappings, dns_config, bandwidth annotations  the network step's (network.py: CNI capability arguments)
Container (ContainerConfig) -> a container added to that pod, created:
    image, command/args, working_dir, envs, tty, stdin  the container spec (command = ENTRYPOINT, args = CMD)
    mounts: host directories                         pod volumes (virtio-fs), read-only honoured
    mounts: host files                               copied in at create (kubelet's hosts, termination-log)
    linux.resources.memory_limit_in_bytes            the container's own memory cgroup in the guest
    security_context: run_as_user/group/username,    the process's user; supplemental groups added to it
      supplemental_groups, readonly_rootfs, privileged,
      capabilities add/drop, no_new_privs            docker's default set with the adds and drops, as containerd
      namespace_options.pid POD/CONTAINER/TARGET     the pod's shared PID namespace / its own / another container's
      masked_paths, readonly_paths                   the agent's lists instead of its defaults (runc's)
      seccomp (SecurityProfile, else the deprecated  a BPF filter compiled on the host, loaded by the agent for the
        seccomp_profile_path)                        container and its execs. RuntimeDefault (an empty SecurityProfile
                                                     too; runtime/default, docker/default): the default profile for
                                                     its capabilities (spec/seccomp_default.py); Localhost
                                                     (localhost/<path>): the JSON file on the host, OCI or Docker
                                                     format; Unconfined or nothing given: no filter; privileged: no
                                                     filter whatever the profile (containerd)
    stop_signal                                      the container's stop signal
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from ..spec import seccomp, seccomp_default
from ..spec.pod import CAPABILITIES, MIN_MEMORY_MIB, Capabilities, cap_name
from .api import pb
from .errors import unimplemented

MIB = 1 << 20
VM_HEADROOM_MIB = 64  # the guest kernel and agent, on top of the pod's limits
DEFAULT_VM_MIB = 256
MAX_COPIED_FILE = 1 << 20  # a host file mounted into a container is copied in, up to this size
MAX_SECCOMP_PROFILE = 1 << 20  # a Localhost seccomp profile's JSON, at most
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]+")
_POD_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
NODE_REFUSED = ("hypercontainer runs each pod sandbox in its own VM, with its own kernel: a VM cannot share the "
                "host's {what} namespace (namespace option NODE)")


@dataclass
class SandboxPlan:
    spec: dict[str, Any]  # the pod spec (without `network`: the network step gives it)
    sysctls: dict[str, str]
    unapplied: list[str] = field(default_factory=list)


@dataclass
class ContainerPlan:
    spec: dict[str, Any]  # the container spec
    volumes: list[dict[str, Any]]  # the pod volumes it brings (host directories)
    overrides: dict[str, Any]  # protocol fields beyond the spec (memory_limit, masked/readonly paths, ...)
    unapplied: list[str] = field(default_factory=list)


def pod_name(md: Any, sandbox_id: str, taken: set[str]) -> str:
    """A readable pod name for hyperctl: NAME_NAMESPACE_ATTEMPT when that is a valid, free pod name."""
    name = _NAME_CHARS.sub("-", f"{md.name}_{md.namespace}_{md.attempt}").strip("-._")
    if _POD_NAME.match(name) and name not in taken:
        return name
    return f"cri-{sandbox_id[:12]}"


def container_name(md: Any, container_id: str, taken: set[str]) -> str:
    """The pod core's name of a CRI container: NAME (NAME.ATTEMPT after the first attempt) when valid and free."""
    name = _NAME_CHARS.sub("-", md.name + (f".{md.attempt}" if md.attempt else "")).strip("-._")
    if _POD_NAME.match(name) and name not in taken:
        return name
    return f"c-{container_id[:12]}"


def _refuse_node(opts: Any, what: str) -> None:
    for kind in ("network", "pid", "ipc"):
        if getattr(opts, kind) == pb.NODE:
            raise InvalidArgument(f"{what}: " + NODE_REFUSED.format(what=kind))
    if opts.HasField("userns_options") and opts.userns_options.mode not in (pb.NODE,):
        raise InvalidArgument(f"{what}: user namespaces are not supported (the VM is the isolation boundary)")


def _vm_size(linux: Any) -> dict[str, int]:
    """The VM's size from the sandbox's resources (the sum of its containers' limits) and overhead."""
    res, over = linux.resources, linux.overhead
    out: dict[str, int] = {}
    memory = max(res.memory_limit_in_bytes, 0) + max(over.memory_limit_in_bytes, 0)
    if res.memory_limit_in_bytes > 0:
        out["memory"] = min(65536, max(DEFAULT_VM_MIB, MIN_MEMORY_MIB, -(-memory // MIB) + VM_HEADROOM_MIB))
    if res.cpu_quota > 0 and res.cpu_period > 0:
        out["vcpu"] = min(64, max(1, -(-res.cpu_quota // res.cpu_period)))
    return out


def sandbox(config: Any, sandbox_id: str, taken: set[str]) -> SandboxPlan:
    md = config.metadata
    if not md.name or not md.namespace:
        raise InvalidArgument("pod sandbox metadata needs a name and a namespace")
    linux = config.linux
    _refuse_node(linux.security_context.namespace_options, "pod sandbox")
    spec: dict[str, Any] = {"name": pod_name(md, sandbox_id, taken), "keep_alive": True, "containers": [],
                            "restart_policy": "Never"}
    if config.hostname:
        spec["hostname"] = config.hostname
    dns = config.dns_config
    spec.update(dns=list(dns.servers), dns_search=list(dns.searches), dns_options=list(dns.options))
    size = _vm_size(linux)
    if size:
        spec["resources"] = {"memory": size.get("memory", DEFAULT_VM_MIB), "vcpu": size.get("vcpu", 1)}
    unapplied = []
    if linux.cgroup_parent:
        unapplied.append(f"cgroup_parent {linux.cgroup_parent}: the VM's QEMU has a cgroup of hyperd's own")
    if linux.security_context.selinux_options.type or linux.security_context.selinux_options.level:
        unapplied.append("SELinux options: not applied (no SELinux in the guest)")
    return SandboxPlan(spec, {str(k): str(v) for k, v in linux.sysctls.items()}, unapplied)


def _user(sc: Any) -> str | None:
    """run_as_username / run_as_user, with run_as_group: the spec's user ("uid[:gid]" or "name[:gid]")."""
    user = sc.run_as_username or (str(sc.run_as_user.value) if sc.HasField("run_as_user") else "")
    if sc.HasField("run_as_group"):
        if not user:
            raise InvalidArgument("run_as_group is given without run_as_user or run_as_username")
        return f"{user}:{sc.run_as_group.value}"
    return user or None


def _stop_signal(sig: int) -> str | None:
    if sig == pb.SIGNAL_RUNTIME_DEFAULT:
        return None
    name = pb.Signal.Name(sig).removeprefix("SIGNAL_")
    if m := re.fullmatch(r"SIGRTMINPLUS(\d+)", name):
        return str(signal.SIGRTMIN + int(m.group(1)))
    if m := re.fullmatch(r"SIGRTMAXMINUS(\d+)", name):
        return str(signal.SIGRTMAX - int(m.group(1)))
    aliases = {"SIGCLD": "SIGCHLD", "SIGIOT": "SIGABRT", "SIGPOLL": "SIGIO", "SIGRTMIN": str(signal.SIGRTMIN),
               "SIGRTMAX": str(signal.SIGRTMAX)}
    return aliases.get(name, name)


def _capabilities(spec: dict[str, Any]) -> set[str]:
    """The container's capabilities: docker's default set with the adds and drops (ALL as spec/pod.py has it)."""
    mask = Capabilities(**spec["capabilities"]).mask(spec["privileged"])
    return {name for i, name in enumerate(CAPABILITIES) if mask >> i & 1}


def _seccomp_choice(sc: Any) -> tuple[str, str]:
    """("default" | "unconfined" | "localhost", the profile's path) from the SecurityProfile (the zero value of its
    type is RuntimeDefault: an empty one is that) or else the deprecated seccomp_profile_path; neither: unconfined."""
    if sc.HasField("seccomp"):
        p = sc.seccomp
        if p.profile_type == pb.SecurityProfile.RuntimeDefault:
            return "default", ""
        if p.profile_type == pb.SecurityProfile.Unconfined:
            return "unconfined", ""
        if p.profile_type == pb.SecurityProfile.Localhost:
            return "localhost", p.localhost_ref
        raise InvalidArgument(f"seccomp: unknown profile type {p.profile_type}")
    path = sc.seccomp_profile_path
    if path in ("runtime/default", "docker/default"):
        return "default", ""
    if path in ("", "unconfined"):
        return "unconfined", ""
    if path.startswith("localhost/"):
        return "localhost", path.removeprefix("localhost/")  # the kubelet's "localhost/" + an absolute path
    raise InvalidArgument(f"seccomp_profile_path {path!r}: want runtime/default, docker/default, unconfined or "
                          "localhost/<absolute path>")


def _localhost_profile(path: str) -> dict[str, Any]:
    where = f"seccomp Localhost profile {path!r}"
    if not path.startswith("/"):
        raise InvalidArgument(f"{where}: localhost_ref must be an absolute path on the host")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECCOMP_PROFILE + 1)
    except OSError as e:
        raise InvalidArgument(f"{where} cannot be read: {e.strerror}") from None
    if len(raw) > MAX_SECCOMP_PROFILE:
        raise InvalidArgument(f"{where} is larger than {MAX_SECCOMP_PROFILE} bytes")
    try:
        profile = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError too
        raise InvalidArgument(f"{where} is not JSON: {e}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument(f"{where} is not a JSON object")
    return profile


def _seccomp(sc: Any, spec: dict[str, Any], overrides: dict[str, Any], unapplied: list[str]) -> None:
    """The container's seccomp filter, compiled, in `overrides` (`seccomp`, `seccomp_flags`), as runv's
    container_security gives it. A privileged container runs without one, whatever the profile (containerd)."""
    kind, path = _seccomp_choice(sc)
    if kind == "unconfined":
        return
    if spec["privileged"]:
        unapplied.append(f"seccomp {'RuntimeDefault' if kind == 'default' else 'Localhost ' + path}: a privileged "
                         "container runs without a seccomp filter")
        return
    caps = _capabilities(spec)
    if kind == "default":
        profile = seccomp_default.default_profile(caps)
    else:
        profile = seccomp_default.resolve_docker_format(_localhost_profile(path), caps)
    try:
        program, flags = seccomp.compile_filter(profile)
    except InvalidArgument as e:
        if kind == "default":
            raise
        raise InvalidArgument(f"seccomp Localhost profile {path!r}: {e.message}") from None
    overrides["seccomp"] = program
    if flags:
        overrides["seccomp_flags"] = flags


def _mounts(config: Any, container_id: str, unapplied: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                     list[dict[str, Any]]]:
    """(pod volumes, volume mounts, files copied in) for the container's mounts."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for i, m in enumerate(config.mounts):
        where = f"mount {m.container_path or '?'}"
        if m.HasField("image") and m.image.image:  # Unimplemented: what a runtime without them answers
            raise unimplemented(f"{where}: image volumes are not supported")
        if len(m.uidMappings) or len(m.gidMappings):
            raise InvalidArgument(f"{where}: ID-mapped mounts are not supported")
        if m.recursive_read_only and not m.readonly:
            raise InvalidArgument(f"{where}: recursive_read_only needs readonly")
        if not m.container_path.startswith("/") or not m.host_path.startswith("/"):
            raise InvalidArgument(f"{where}: container_path and host_path must be absolute paths")
        if m.propagation != pb.PROPAGATION_PRIVATE:
            unapplied.append(f"{where}: propagation {pb.MountPropagation.Name(m.propagation)} is not honoured "
                             "(the directory is shared into the VM as it is at start, private)")
        if len(m.mount_options):
            unapplied.append(f"{where}: mount options {list(m.mount_options)} are not applied")
        host = os.path.realpath(m.host_path)  # the kubelet's paths; the pod core refuses symlinks in them
        if not os.path.lexists(host):
            os.makedirs(host, mode=0o755, exist_ok=True)  # as containerd does for a missing host path
        if os.path.isdir(host):
            vol = f"v{container_id[:12]}-{i}"  # unique in the pod: a container's name may be used again
            volumes.append({"name": vol, "host_path": host})
            # readonly alone is the top mount's only, as with containerd and runc (the mounts below keep theirs)
            mounts.append({"name": vol, "path": m.container_path, "readonly": m.readonly,
                           "recursive_readonly": m.recursive_read_only})
        elif os.path.isfile(host):
            st = os.stat(host)
            if st.st_size > MAX_COPIED_FILE:
                raise InvalidArgument(f"{where}: host file {m.host_path} is larger than {MAX_COPIED_FILE} bytes: only "
                                      "directories are shared into the VM, files are copied in")
            files.append({"path": m.container_path, "base64": base64.b64encode(Path(host).read_bytes()).decode(),
                          "mode": st.st_mode & 0o7777})
            unapplied.append(f"{where}: host file {m.host_path} is copied in at create (later changes on either side "
                             "are not seen by the other)")
        else:
            raise InvalidArgument(f"{where}: host path {m.host_path} is neither a directory nor a regular file")
    return volumes, mounts, files


def _text(value: bytes | str, key: str) -> str:
    """An environment value (bytes in the CRI since v0.36)."""
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"environment variable {key}: its value is not UTF-8") from None


def container(config: Any, name: str, container_id: str, sandbox_sysctls: dict[str, str],
              target: str | None = None) -> ContainerPlan:
    """`target`: the pod core's name of the container whose PID namespace a TARGET pid option names."""
    if len(config.devices) or len(config.CDI_devices):
        raise InvalidArgument("devices cannot be given to a container: host devices do not reach into its VM")
    linux = config.linux
    sc = linux.security_context
    _refuse_node(sc.namespace_options, f"container {config.metadata.name}")
    unapplied: list[str] = []
    volumes, mounts, files = _mounts(config, container_id, unapplied)
    spec: dict[str, Any] = {
        "name": name, "image": config.image.image,
        "entrypoint": list(config.command) or None, "command": list(config.args) or None,
        "env": [f"{kv.key}={_text(kv.value, kv.key)}" for kv in config.envs], "workdir": config.working_dir or None,
        "tty": config.tty, "stdin": config.stdin, "readonly": sc.readonly_rootfs, "volumes": mounts, "files": files,
        "sysctls": dict(sandbox_sysctls), "user": _user(sc), "privileged": sc.privileged,
        "no_new_privileges": sc.no_new_privs,
        "capabilities": {"add": [cap_name(c) for c in sc.capabilities.add_capabilities],
                         "drop": [cap_name(c) for c in sc.capabilities.drop_capabilities]},
        "stop_signal": _stop_signal(config.stop_signal),
    }
    overrides: dict[str, Any] = {}
    pid = sc.namespace_options.pid
    spec["pid_namespace"] = "pod" if pid == pb.POD else "container"
    if pid == pb.TARGET:
        if not target:
            raise InvalidArgument("pid namespace TARGET needs target_id: a running container of the sandbox")
        overrides["pid_ns_of"] = target
    if sc.namespace_options.ipc == pb.CONTAINER:
        unapplied.append("ipc namespace CONTAINER: the pod's containers share the VM's IPC namespace")
    if len(sc.capabilities.add_ambient_capabilities):
        unapplied.append(f"ambient capabilities {list(sc.capabilities.add_ambient_capabilities)} are not raised")
    if len(sc.supplemental_groups):
        overrides["group"] = [int(g) for g in sc.supplemental_groups]
    if sc.supplemental_groups_policy == pb.Strict:
        unapplied.append("supplemental_groups_policy Strict: the image's group memberships are kept (Merge)")
    if len(sc.masked_paths):
        overrides["masked_paths"] = list(sc.masked_paths)
    if len(sc.readonly_paths):
        overrides["readonly_paths"] = list(sc.readonly_paths)
    _seccomp(sc, spec, overrides, unapplied)
    if (sc.HasField("apparmor") and sc.apparmor.profile_type != pb.SecurityProfile.Unconfined) \
            or sc.apparmor_profile not in ("", "unconfined"):
        unapplied.append("AppArmor profile: not applied (no AppArmor in the guest)")
    if sc.selinux_options.type or sc.selinux_options.level:
        unapplied.append("SELinux options: not applied (no SELinux in the guest)")
    res = linux.resources
    if res.memory_limit_in_bytes > 0:
        overrides["memory_limit"] = int(res.memory_limit_in_bytes)
    unapplied += resources_unapplied(res)
    return ContainerPlan(spec, volumes, overrides, unapplied)


def resources_unapplied(res: Any) -> list[str]:
    """What of a container's resources a VM sandbox does not apply per container."""
    out = []
    if res.cpu_quota > 0 or res.cpu_shares > 0 or res.cpuset_cpus or res.cpuset_mems:
        out.append("CPU quota, shares and cpusets: the container uses the VM's vCPUs (sized at RunPodSandbox)")
    if res.oom_score_adj:
        out.append(f"oom_score_adj {res.oom_score_adj}: not applied")
    if len(res.hugepage_limits) or len(res.unified) or res.memory_swap_limit_in_bytes > 0:
        out.append("hugepage, unified (cgroup v2) and swap limits: not applied")
    return out
