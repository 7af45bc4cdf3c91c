"""Mapping a Kubernetes `v1` Pod manifest onto our pod spec (the fields people use; others are reported)."""

from __future__ import annotations

import re

from ..errors import InvalidArgument

_MEM = re.compile(r"^([0-9]+)(Ki|Mi|Gi|K|M|G)?$")
_MEM_UNITS = {None: 1 / (1 << 20), "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1000 / (1 << 20), "M": 1e6 / (1 << 20),
              "G": 1e9 / (1 << 20)}
POD_FIELDS = {"containers", "volumes", "hostname", "restartPolicy", "dnsPolicy", "terminationGracePeriodSeconds",
              "shareProcessNamespace"}
SECURITY_FIELDS = {"runAsUser", "runAsGroup", "readOnlyRootFilesystem", "capabilities", "allowPrivilegeEscalation",
                   "privileged"}
CONTAINER_FIELDS = {"name", "image", "command", "args", "env", "workingDir", "tty", "stdin", "volumeMounts",
                    "securityContext", "resources", "imagePullPolicy", "ports"}


def is_kube_pod(doc: dict) -> bool:
    return doc.get("apiVersion") == "v1" and doc.get("kind") == "Pod"


def _obj(v: object, where: str) -> dict:
    """A manifest's object (absent, null or empty: {}); anything else is the manifest's error."""
    if not v:
        return {}
    if not isinstance(v, dict):
        raise InvalidArgument(f"{where} is not an object")
    return v


def _list(v: object, where: str) -> list:
    if not v:
        return []
    if not isinstance(v, list):
        raise InvalidArgument(f"{where} is not a list")
    return v


def _memory_mib(text: str) -> int:
    m = _MEM.match(str(text))
    if not m:
        raise InvalidArgument(f"resources.limits.memory: cannot read {text!r}")
    try:
        return max(1, round(int(m.group(1)) * _MEM_UNITS[m.group(2)]))
    except OverflowError:  # more digits than a float holds
        raise InvalidArgument(f"resources.limits.memory: {text!r} is too large") from None


def _cpus(text: str | int | float) -> int:
    t = str(text)
    try:
        milli = int(t[:-1]) if t.endswith("m") else float(t) * 1000
        return max(1, -(-int(milli) // 1000))
    except (ValueError, OverflowError):  # not a number, nan, inf
        raise InvalidArgument(f"resources.limits.cpu: cannot read {text!r}") from None


def from_kube(doc: dict) -> tuple[dict, list[str]]:
    """(our spec, fields that were ignored)."""
    meta, spec = _obj(doc.get("metadata") or {}, "metadata"), doc.get("spec") or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise InvalidArgument("Pod manifest has no spec.containers")
    ignored = [f"spec.{k}" for k in spec if k not in POD_FIELDS]
    memory, cpus = 0, 0
    containers, ports = [], []
    for i, c in enumerate(spec["containers"]):
        if not isinstance(c, dict):
            raise InvalidArgument(f"spec.containers[{i}] is not an object")
        ignored += [f"spec.containers[{i}].{k}" for k in c if k not in CONTAINER_FIELDS]
        out: dict = {"name": c.get("name"), "image": c.get("image")}
        if c.get("command") is not None:
            out["entrypoint"] = c["command"]
        if c.get("args") is not None:
            out["command"] = c["args"]
        env = []
        for j, e in enumerate(_list(c.get("env"), f"spec.containers[{i}].env")):
            e = _obj(e, f"spec.containers[{i}].env[{j}]")
            if "valueFrom" in e:
                ignored.append(f"spec.containers[{i}].env[{e.get('name')}].valueFrom")
                continue
            env.append(f"{e.get('name')}={e.get('value', '')}")
        out["env"] = env
        for k_in, k_out in (("workingDir", "workdir"), ("tty", "tty"), ("stdin", "stdin")):
            if k_in in c:
                out[k_out] = c[k_in]
        mounts = [_obj(m, f"spec.containers[{i}].volumeMounts[{j}]")
                  for j, m in enumerate(_list(c.get("volumeMounts"), f"spec.containers[{i}].volumeMounts"))]
        out["volumes"] = [{"name": m.get("name"), "path": m.get("mountPath"), "readonly": m.get("readOnly", False)}
                          for m in mounts]
        sc = _obj(c.get("securityContext"), f"spec.containers[{i}].securityContext")
        ignored += [f"spec.containers[{i}].securityContext.{k}" for k in sc if k not in SECURITY_FIELDS]
        caps = _obj(sc.get("capabilities"), f"spec.containers[{i}].securityContext.capabilities")
        if caps:
            out["capabilities"] = {"add": caps.get("add") or [], "drop": caps.get("drop") or []}
        if sc.get("allowPrivilegeEscalation") is False:
            out["no_new_privileges"] = True
        if sc.get("privileged"):
            out["privileged"] = True
        if "runAsUser" in sc:
            out["user"] = f"{sc['runAsUser']}:{sc['runAsGroup']}" if "runAsGroup" in sc else str(sc["runAsUser"])
        if sc.get("readOnlyRootFilesystem"):
            out["readonly"] = True
        resources = _obj(c.get("resources"), f"spec.containers[{i}].resources")
        limits = _obj(resources.get("limits"), f"spec.containers[{i}].resources.limits")
        if "memory" in limits:
            memory += _memory_mib(limits["memory"])
        if "cpu" in limits:
            cpus += _cpus(limits["cpu"])
        # only hostPort publishes: a pod's containerPorts are informational
        for p in _list(c.get("ports"), f"spec.containers[{i}].ports"):
            if isinstance(p, dict) and p.get("hostPort"):
                ports.append({"container_port": p.get("containerPort"), "host_port": p["hostPort"],
                              "host_ip": p.get("hostIP") or "0.0.0.0", "protocol": p.get("protocol", "TCP")})
        containers.append(out)
    volumes = []
    for j, v in enumerate(_list(spec.get("volumes"), "spec.volumes")):
        v = _obj(v, f"spec.volumes[{j}]")
        if "hostPath" in v:
            volumes.append({"name": v.get("name"), "host_path": _obj(v["hostPath"], f"spec.volumes[{j}].hostPath")
                            .get("path")})
        elif "emptyDir" in v:
            volumes.append({"name": v.get("name"), "empty_dir": True})
        else:
            raise InvalidArgument(f"volume {v.get('name')}: only hostPath and emptyDir volumes are supported")
    ours: dict = {"name": meta.get("name"), "containers": containers, "volumes": volumes,
                  "restart_policy": spec.get("restartPolicy", "Always"), "ports": ports}
    if spec.get("shareProcessNamespace"):
        ours["share_process_namespace"] = True
    hostname = spec.get("hostname") or meta.get("name")
    if hostname and re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", str(hostname)):
        ours["hostname"] = hostname  # Kubernetes names the pod's host after the pod
    resources = {}
    if memory:
        resources["memory"] = max(memory + 64, 128)  # the guest kernel and agent need their share
    if cpus:
        resources["vcpu"] = cpus
    if resources:
        ours["resources"] = resources
    return ours, ignored
