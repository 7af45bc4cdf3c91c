"""The CRI's view of the pod manager's pods: a sandbox is a pod whose record carries CRI metadata (`meta["cri"]`,
kept and persisted by the pod core), its containers those the metadata lists by CRI id. Everything is read from
the pod manager on each request (live pods and those an earlier hyperd left), so there is nothing to keep in sync.

    meta["cri"] = {"config": PodSandboxConfig as JSON, "runtime_handler": "", "created_ns": N,
                   "network": {"ips": [...], "state": {...}}, "unapplied": [...],
                   "containers": {CRI id: {"name": the pod core's container name, "config": ContainerConfig as
                                           JSON, "created_ns": N, "image_id": "sha256:...", "image_ref": "...",
                                           "log_path": "/abs/path" or "", "resources": {...}, "unapplied": [...]}}}

Ids are 64 hex digits; a unique prefix names one too (as containerd allows, and crictl users type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from ..errors import InvalidArgument, NotFound
from ..pod.manager import PodManager
from ..pod.pod import Pod
from .api import pb

KEY = "cri"


def to_json(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


@dataclass
class SandboxView:
    id: str
    info: dict[str, Any]  # the pod's info (live, or as an earlier hyperd left it)
    meta: dict[str, Any]  # its meta["cri"]
    pod: Pod | None  # the live pod, if this hyperd runs it

    @property
    def ready(self) -> bool:
        return self.pod is not None and self.info["state"] == "running"

    @property
    def config(self) -> Any:
        return json_format.ParseDict(self.meta.get("config") or {}, pb.PodSandboxConfig(), ignore_unknown_fields=True)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.meta.get("config", {}).get("labels") or {})

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.meta.get("config", {}).get("metadata") or {})

    def core(self, name: str) -> dict[str, Any] | None:
        """The pod core's info of one of its containers."""
        return next((c for c in self.info.get("containers") or [] if c["name"] == name), None)


@dataclass
class ContainerView:
    id: str
    sandbox: SandboxView
    meta: dict[str, Any]  # its entry in the sandbox's meta["cri"]["containers"]

    @property
    def name(self) -> str:
        """The pod core's name of the container."""
        return str(self.meta["name"])

    @property
    def core(self) -> dict[str, Any]:
        """Its state in the pod core: state created|running|exited, exit_code, error, OOMKilled, started_at,
        finished_at, pid (empty if the pod core lost it)."""
        return self.sandbox.core(self.name) or {}

    @property
    def config(self) -> Any:
        return json_format.ParseDict(self.meta.get("config") or {}, pb.ContainerConfig(), ignore_unknown_fields=True)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.meta.get("config", {}).get("labels") or {})

    @property
    def state(self) -> str:
        """created | running | exited: a container of a sandbox that is not running any more has exited."""
        s = self.core.get("state", "exited")
        if s == "running" and self.sandbox.pod is None:
            return "exited"
        return str(s)


class Index:
    def __init__(self, manager: PodManager) -> None:
        self.manager = manager

    def sandboxes(self) -> list[SandboxView]:
        out = []
        for info in self.manager.list():
            meta = (info.get("meta") or {}).get(KEY)
            if meta:
                out.append(SandboxView(info["id"], info, meta, self.manager.pods.get(info["id"])))
        return out

    def sandbox(self, ref: str) -> SandboxView:
        if not ref:
            raise InvalidArgument("no pod sandbox id given")
        return _one(self.sandboxes(), ref, "pod sandbox")

    def containers(self, sandboxes: list[SandboxView] | None = None) -> list[ContainerView]:
        return [ContainerView(cid, s, m) for s in (self.sandboxes() if sandboxes is None else sandboxes)
                for cid, m in (s.meta.get("containers") or {}).items()]

    def container(self, ref: str) -> ContainerView:
        if not ref:
            raise InvalidArgument("no container id given")
        return _one(self.containers(), ref, "container")


def _one(items: list[Any], ref: str, what: str) -> Any:
    exact = [i for i in items if i.id == ref]
    if exact:
        return exact[0]
    matches = [i for i in items if i.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InvalidArgument(f"{what} id prefix {ref} is ambiguous ({len(matches)} match)")
    raise NotFound(f"{what} {ref} not found")


def matches_labels(labels: dict[str, str], selector: Any) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
