"""Pod spec models. Unknown fields are rejected and every error names its field."""

from __future__ import annotations

import binascii
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    IPvAnyAddress,
    field_validator,
    model_validator,
)

from .base import Strict
from .ports import PortMapping

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_ENV_KEY = re.compile(r"^[^=\0]+$")
_USER = re.compile(r"^([a-z_][a-z0-9_.-]{0,31}|[0-9]{1,10})(:([a-z_][a-z0-9_.-]{0,31}|[0-9]{1,10}))?$")
MIN_MEMORY_MIB = 64
MAX_CONTAINERS = 64
MAX_FILE_BYTES = 1 << 20


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return v


Name = Annotated[str, AfterValidator(_check_name)]
DnsName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")]
DnsOption = Annotated[str, Field(pattern=r"^[a-z0-9_-]+(:[0-9]+)?$")]


def _check_abs_path(v: str) -> str:
    parts = v.split("/")
    if not v.startswith("/") or "\0" in v or ".." in parts or len(v) > 4096:
        raise ValueError(f"{v!r} must be an absolute path without '..'")
    return "/" + "/".join(p for p in parts if p not in ("", "."))


AbsPath = Annotated[str, AfterValidator(_check_abs_path)]


def _check_mode(v: int | str) -> int:
    mode = int(v, 8) if isinstance(v, str) else v
    if not isinstance(mode, int | float) or not 0 <= mode <= 0o7777:  # JSON may hold anything here
        raise ValueError(f"{v!r} is not a file mode (0-07777)")
    return mode


class Volume(Strict):
    """A pod volume: a host directory shared into the VM, an empty directory on tmpfs in the guest, or a raw
    block image file attached to the VM as a virtio disk and mounted in the guest."""

    name: Name
    host_path: AbsPath | None = None
    empty_dir: bool = False
    block: AbsPath | None = None
    fstype: Literal["ext4", "ext3", "ext2"] = "ext4"
    # A named volume of the pod's owner (storage/named_volumes.py); hyperd fills `block` with its image.
    named: Name | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Volume:
        kinds = (self.host_path is not None, self.empty_dir, self.block is not None and self.named is None,
                 self.named is not None)
        if sum(kinds) != 1:
            raise ValueError(f"volume {self.name}: give exactly one of hostPath, emptyDir, block or named")
        return self


class VolumeMount(Strict):
    name: Name
    path: AbsPath = Field(validation_alias=AliasChoices("path", "mountPath", "mount_path"))
    readonly: bool = Field(False, validation_alias=AliasChoices("readonly", "readOnly", "read_only"))
    # With readonly: mounts under the host directory are read-only too (false: they keep their own mode, as runc's
    # plain `ro` and the CRI's non-recursive read-only mounts do; writes to the volume itself still fail).
    recursive_readonly: bool = True

    @field_validator("path")
    @classmethod
    def _not_root(cls, v: str) -> str:
        if v == "/":
            raise ValueError("a volume cannot be mounted on /")
        return v


class FileSpec(Strict):
    """A file written into the container's root before it starts."""

    path: AbsPath
    content: str | None = None
    base64: str | None = None
    mode: Annotated[int, BeforeValidator(_check_mode)] = 0o644
    uid: Annotated[int, Field(ge=0, lt=2**32)] = 0
    gid: Annotated[int, Field(ge=0, lt=2**32)] = 0

    @model_validator(mode="after")
    def _data(self) -> FileSpec:
        if (self.content is None) == (self.base64 is None):
            raise ValueError(f"file {self.path}: give exactly one of content or base64")
        if len(self.data()) > MAX_FILE_BYTES:
            raise ValueError(f"file {self.path}: larger than {MAX_FILE_BYTES} bytes")
        return self

    def data(self) -> bytes:
        if self.content is not None:
            return self.content.encode()
        try:
            return binascii.a2b_base64(self.base64 or "", strict_mode=True)
        except binascii.Error as e:
            raise ValueError(f"file {self.path}: invalid base64 ({e})") from None


class Resources(Strict):
    vcpu: Annotated[int, Field(ge=1, le=64)] = 1
    memory: Annotated[int, Field(ge=MIN_MEMORY_MIB, le=65536, description="MiB")] = 256


RLIMITS = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
           "rtprio", "rttime", "sigpending", "stack")
_SYSCTL = re.compile(r"^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$")


class Ulimit(Strict):
    name: Literal[RLIMITS]  # type: ignore[valid-type]
    soft: Annotated[int, Field(ge=-1)]
    hard: Annotated[int, Field(ge=-1)]  # -1: unlimited

    @model_validator(mode="after")
    def _order(self) -> Ulimit:
        unl = 2**64 - 1
        if (self.soft if self.soft >= 0 else unl) > (self.hard if self.hard >= 0 else unl):
            raise ValueError(f"ulimit {self.name}: soft limit above the hard one")
        return self


# Linux capabilities by number (include/uapi/linux/capability.h), and runc's / docker's default set.
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK",
                "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN",
                "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
                "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND",
                "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
                        "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


def cap_name(name: str) -> str:
    """'net_admin', 'NET_ADMIN', 'CAP_NET_ADMIN' -> 'NET_ADMIN'; 'all' -> 'ALL'; ValueError for others."""
    n = name.strip().upper().removeprefix("CAP_")
    if n != "ALL" and n not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}")
    return n


def cap_mask(names: list[str] | tuple[str, ...]) -> int:
    """The bit mask of capability names (bit N = capability N); 'ALL' is every one."""
    mask = 0
    for name in names:
        n = cap_name(name)
        mask |= (1 << len(CAPABILITIES)) - 1 if n == "ALL" else 1 << CAPABILITIES.index(n)
    return mask


class Capabilities(Strict):
    """Added to / dropped from the default set, as docker's --cap-add/--cap-drop and Kubernetes'
    securityContext.capabilities (names with or without CAP_, 'ALL' allowed)."""

    add: list[str] = []
    drop: list[str] = []

    @field_validator("add", "drop")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [cap_name(n) for n in v]

    def mask(self, privileged: bool = False) -> int:
        """docker's rule: privileged is everything; ALL in add is everything but what is dropped; ALL in drop
        leaves only what is added; else the default set less the drops plus the adds."""
        everything = cap_mask(["ALL"])
        if privileged:
            return everything
        if "ALL" in self.add:
            return everything & ~cap_mask([n for n in self.drop if n != "ALL"])
        if "ALL" in self.drop:
            return cap_mask(self.add)
        return (cap_mask(DEFAULT_CAPABILITIES) & ~cap_mask(self.drop)) | cap_mask(self.add)


class ContainerSpec(Strict):
    name: Name
    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = []
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    stdin: bool = False
    readonly: bool = False
    volumes: list[VolumeMount] = []
    files: Annotated[list[FileSpec], Field(max_length=256)] = []
    ulimits: Annotated[list[Ulimit], Field(max_length=16)] = []
    sysctls: dict[str, str] = {}
    stop_signal: str | None = None
    capabilities: Capabilities = Capabilities()
    no_new_privileges: bool = False
    privileged: bool = False  # every capability and device, /sys writable, no masked /proc paths
    # "pod": the pod's one shared PID namespace (set for every container by the pod's share_process_namespace)
    pid_namespace: Literal["container", "pod"] = "container"

    @field_validator("sysctls")
    @classmethod
    def _sysctls(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _SYSCTL.match(key) or "\n" in value or len(value) > 4096:
                raise ValueError(f"{key!r}: not a sysctl name (like net.core.somaxconn) or a bad value")
        return v

    @field_validator("stop_signal")
    @classmethod
    def _stop_signal(cls, v: str | None) -> str | None:
        if v is not None:
            from ..errors import InvalidArgument
            from ..signals import parse_signal

            try:
                parse_signal(v)
            except InvalidArgument as e:
                raise ValueError(e.message) from None
        return v

    @model_validator(mode="after")
    def _unique_paths(self) -> ContainerSpec:
        paths = [v.path for v in self.volumes] + [f.path for f in self.files]
        dup = {p for p in paths if paths.count(p) > 1}
        if dup:
            raise ValueError(f"container {self.name}: more than one volume or file at {', '.join(sorted(dup))}")
        return self


    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for item in v:
            key, eq, _ = item.partition("=")
            if not eq or not _ENV_KEY.match(key) or "\0" in item:
                raise ValueError(f"{item!r} is not KEY=VALUE")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v or ".." in v.split("/")):
            raise ValueError(f"{v!r} must be an absolute path without '..'")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not _USER.match(v):
            raise ValueError(f"{v!r} is not a user name or UID, optionally with :GROUP or :GID")
        return v

    @field_validator("command", "entrypoint")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any("\0" in a for a in v):
            raise ValueError("arguments must not contain NUL bytes")
        return v


class NamespaceNetwork(Strict):
    """An existing network namespace the pod's VM joins (its interfaces' addresses become the guest's)."""

    namespace: AbsPath  # /proc/PID/ns/net, /run/netns/NAME, ...


class NamedNetwork(Strict):
    """A named network of the pod's owner (network/networks.py: a bridge and subnet of its own)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


class HostEntry(Strict):
    """One more line of the containers' /etc/hosts (docker's --add-host NAME:IP)."""

    hostname: DnsName
    ip: IPvAnyAddress


_LABEL_KEY = re.compile(r"^[^=\s\0]{1,255}$")


def _check_labels(v: dict[str, str]) -> dict[str, str]:
    for k, val in v.items():
        if not _LABEL_KEY.match(k):
            raise ValueError(f"label key {k!r}: 1-255 characters, no '=', blank or NUL")
        if len(val) > 4096 or "\0" in val:
            raise ValueError(f"label {k}: the value is over 4096 characters or has a NUL")
    return v


class PodSpec(Strict):
    name: Name | None = None
    hostname: str | None = None
    resources: Resources = Resources()
    containers: Annotated[list[ContainerSpec], Field(max_length=MAX_CONTAINERS)]
    volumes: Annotated[list[Volume], Field(max_length=64)] = []
    dns: Annotated[list[IPvAnyAddress], Field(max_length=3)] = []
    dns_search: Annotated[list[DnsName], Field(max_length=6)] = []
    dns_options: Annotated[list[DnsOption], Field(max_length=16)] = []
    restart_policy: Literal["Never", "OnFailure", "Always"] = "Never"
    auto_remove: bool = False
    network: Literal["default", "bridge", "user", "none"] | NamespaceNetwork | NamedNetwork = "default"
    boot: Literal["default", "cold", "template", "pool"] = "default"
    ports: Annotated[list[PortMapping], Field(max_length=256)] = []
    share_process_namespace: bool = False  # the containers share one PID namespace (never the agent's)
    keep_alive: bool = False  # the VM stays up with no container running, until the pod is stopped (a sandbox)
    labels: Annotated[dict[str, str], Field(max_length=256), AfterValidator(_check_labels)] = {}  # docker's --label
    hosts: Annotated[list[HostEntry], Field(max_length=256)] = []  # more /etc/hosts lines (docker's --add-host)

    @property
    def network_mode(self) -> str:
        """`network` as a mode name: default, bridge, user, none or namespace (a named network is bridge)."""
        if isinstance(self.network, NamedNetwork):
            return "bridge"
        return "namespace" if isinstance(self.network, NamespaceNetwork) else self.network

    @property
    def network_name(self) -> str | None:
        """The named network the pod joins, if its spec names one."""
        return self.network.name if isinstance(self.network, NamedNetwork) else None

    @property
    def network_namespace(self) -> str | None:
        return self.network.namespace if isinstance(self.network, NamespaceNetwork) else None

    @model_validator(mode="after")
    def _some_container(self) -> PodSpec:
        if not self.containers and not self.keep_alive:
            raise ValueError("a pod needs at least one container (or keep_alive: a sandbox to add them to)")
        return self

    @model_validator(mode="after")
    def _shared_pids(self) -> PodSpec:
        """share_process_namespace puts every container into the pod's PID namespace."""
        if self.share_process_namespace and any(c.pid_namespace != "pod" for c in self.containers):
            shared = [c.model_copy(update={"pid_namespace": "pod"}) for c in self.containers]
            object.__setattr__(self, "containers", shared)  # frozen model, still being validated
        return self


    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a DNS label (lowercase letters, digits, '-', at most 63)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> PodSpec:
        names = [c.name for c in self.containers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate container names: {', '.join(sorted(dup))}")
        vols = [v.name for v in self.volumes]
        dup = {n for n in vols if vols.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate volume names: {', '.join(sorted(dup))}")
        for c in self.containers:
            for m in c.volumes:
                if m.name not in vols:
                    raise ValueError(f"container {c.name} mounts volume {m.name}, which the pod does not define")
        published = [p.key() for p in self.ports if p.host_port]
        twice = sorted({f"{k[0]}:{k[1]}/{k[2]}" for k in published if published.count(k) > 1})
        if twice:
            raise ValueError(f"host port published twice: {', '.join(twice)}")
        wild = {(p.host_port, p.protocol) for p in self.ports if p.host_port and p.host_ip == "0.0.0.0"}
        clash = sorted({f"{p.host_ip}:{p.host_port}/{p.protocol}" for p in self.ports
                        if p.host_ip != "0.0.0.0" and (p.host_port, p.protocol) in wild})
        if clash:
            raise ValueError(f"host port published twice (also on 0.0.0.0): {', '.join(clash)}")
        if self.ports and self.network == "none":
            raise ValueError("ports cannot be published with network none")
        if self.ports and self.network_namespace:
            raise ValueError(f"ports cannot be published with network namespace {self.network_namespace}: the "
                             "engine that made the namespace maps its ports")
        if self.auto_remove and self.restart_policy != "Never":
            raise ValueError("auto_remove (--rm) and a restart policy other than Never exclude each other")
        return self
