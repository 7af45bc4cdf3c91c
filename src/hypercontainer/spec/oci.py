"""The OCI runtime spec's config.json (the part runv runs), and what it cannot honour, named.

A VM runtime runs the process in its own kernel: /proc, /sys, /dev and /dev/pts are the guest's, with the agent's
own PID namespace and device allow-list. The process's capability sets and noNewPrivileges are honoured
(`process_security`), and so are linux.maskedPaths / linux.readonlyPaths (runc's lists where the config has none),
linux.seccomp (compiled to BPF on the host, spec/seccomp.py) and linux.resources.memory.limit (the container's
memory cgroup in the guest) (`container_security`). Settings that would change behaviour and are not supported are
reported (`unsupported`), never dropped silently.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidArgument

MAX_COPIED_FILE = 1 << 20

GUEST_MOUNTS = {"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup"}
RLIMIT_NAMES = {"RLIMIT_AS": "as", "RLIMIT_CORE": "core", "RLIMIT_CPU": "cpu", "RLIMIT_DATA": "data",
                "RLIMIT_FSIZE": "fsize", "RLIMIT_LOCKS": "locks", "RLIMIT_MEMLOCK": "memlock",
                "RLIMIT_MSGQUEUE": "msgqueue", "RLIMIT_NICE": "nice", "RLIMIT_NOFILE": "nofile",
                "RLIMIT_NPROC": "nproc", "RLIMIT_RSS": "rss", "RLIMIT_RTPRIO": "rtprio", "RLIMIT_RTTIME": "rttime",
                "RLIMIT_SIGPENDING": "sigpending", "RLIMIT_STACK": "stack"}


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class User(Loose):
    uid: Annotated[int, Field(ge=0, lt=2**32)] = 0
    gid: Annotated[int, Field(ge=0, lt=2**32)] = 0
    additional_gids: list[int] = Field(default_factory=list, alias="additionalGids")


class Rlimit(Loose):
    type: str
    soft: int
    hard: int


class Capabilities(Loose):
    bounding: list[str] = Field(default_factory=list)
    effective: list[str] = Field(default_factory=list)
    inheritable: list[str] = Field(default_factory=list)
    permitted: list[str] = Field(default_factory=list)
    ambient: list[str] = Field(default_factory=list)


class ConsoleSize(Loose):
    height: int = 0
    width: int = 0


class Process(Loose):
    terminal: bool = False
    console_size: ConsoleSize | None = Field(None, alias="consoleSize")
    user: User = User()
    args: Annotated[list[str], Field(min_length=1)]
    env: list[str] = Field(default_factory=list)
    cwd: str = "/"
    rlimits: list[Rlimit] = Field(default_factory=list)
    capabilities: Capabilities | None = None
    no_new_privileges: bool | None = Field(None, alias="noNewPrivileges")


class Root(Loose):
    path: str
    readonly: bool = False


class Mount(Loose):
    destination: str
    type: str | None = None
    source: str | None = None
    options: list[str] = Field(default_factory=list)


class Config(Loose):
    oci_version: str = Field(alias="ociVersion")
    process: Process | None = None
    root: Root
    hostname: str | None = None
    mounts: list[Mount] = Field(default_factory=list)
    annotations: dict[str, str] = Field(default_factory=dict)
    linux: dict = Field(default_factory=dict)


def load(bundle: Path) -> Config:
    path = bundle / "config.json"
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise InvalidArgument(f"{path} is not JSON: {e}") from None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InvalidArgument(f"{path}: {where}: {first['msg']}") from None
    if cfg.process is None:
        raise InvalidArgument(f"{path}: no process to run")
    for r in cfg.process.rlimits:
        if r.type not in RLIMIT_NAMES:
            raise InvalidArgument(f"{path}: unknown rlimit {r.type}")
    try:
        container_security(cfg)  # a filter that cannot be compiled, a path that is not one: refused at once
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e.message}") from None
    return cfg


def root_path(bundle: Path, cfg: Config) -> Path:
    root = Path(cfg.root.path)
    return root if root.is_absolute() else bundle / root


def copied_in(path: Path) -> bool:
    """A bind-mounted file runv copies into the container at create (hosts, resolv.conf, hostname, ...)."""
    try:
        return path.is_file() and path.stat().st_size <= MAX_COPIED_FILE
    except OSError:
        return False


def bind_mounts(cfg: Config) -> list[Mount]:
    """The mounts runv makes in the VM: host directories bound in (proc, sys, dev and friends are the guest's)."""
    return [m for m in cfg.mounts if m.destination not in GUEST_MOUNTS and
            (m.type == "bind" or "bind" in m.options or "rbind" in m.options)]


def tmpfs_mounts(cfg: Config) -> list[Mount]:
    return [m for m in cfg.mounts if m.destination not in GUEST_MOUNTS and m.type == "tmpfs"]


def _known(names: list[str]) -> list[str]:
    from .pod import CAPABILITIES

    return [n for n in names if n.upper().removeprefix("CAP_") in CAPABILITIES]


def process_security(p: Process, inherit: dict | None = None) -> dict:
    """The capability and no_new_privs fields for an OCI process. Sets it does not give: `inherit`'s (an exec
    takes the container's, as runc does), else docker's default set (runc would leave the process all of root's;
    no engine sends a config without them). Capabilities this kernel table does not know are left out, as runc
    does, and reported by unsupported()."""
    from .pod import DEFAULT_CAPABILITIES, cap_mask

    if p.capabilities is not None:
        c = p.capabilities
        caps = {"cap_bounding": cap_mask(_known(c.bounding)), "cap_effective": cap_mask(_known(c.effective)),
                "cap_permitted": cap_mask(_known(c.permitted)), "cap_inheritable": cap_mask(_known(c.inheritable)),
                "cap_ambient": cap_mask(_known(c.ambient))}
    elif inherit is not None:
        caps = {k: v for k, v in inherit.items() if k.startswith("cap_")}
    else:
        default = cap_mask(DEFAULT_CAPABILITIES)
        caps = {"cap_bounding": default, "cap_effective": default, "cap_permitted": default, "cap_inheritable": 0,
                "cap_ambient": 0}
    nnp = p.no_new_privileges if p.no_new_privileges is not None else bool((inherit or {}).get("no_new_privs"))
    return {**caps, "no_new_privs": int(nnp)}


def _paths(cfg: Config, key: str) -> list[str] | None:
    """linux.maskedPaths / linux.readonlyPaths, each made clean and absolute (None: the key is absent)."""
    paths = cfg.linux.get(key)
    if paths is None:
        return None
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise InvalidArgument(f"linux.{key}: want a list of absolute paths")
    out = ["/" + posixpath.normpath(p).lstrip("/") for p in paths]
    if "/" in out:
        raise InvalidArgument(f"linux.{key}: cannot apply to / itself")
    return out


def memory_limit(cfg: Config) -> int | None:
    """linux.resources.memory.limit in bytes, if there is one (-1 or 0: none)."""
    limit = ((cfg.linux.get("resources") or {}).get("memory") or {}).get("limit")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def container_security(cfg: Config) -> dict:
    """NEW_CONTAINER fields from linux: the container's memory limit (its cgroup in the guest; the VM is sized
    for it too), its masked and read-only paths when the config gives them (else the agent's, runc's), its seccomp
    filter compiled to BPF (EXECs get it too: the agent keeps it with the container)."""
    out: dict = {}
    limit = memory_limit(cfg)
    if limit:
        out["memory_limit"] = limit
    for key, field in (("maskedPaths", "masked_paths"), ("readonlyPaths", "readonly_paths")):
        paths = _paths(cfg, key)
        if paths is not None:
            out[field] = paths
    profile = cfg.linux.get("seccomp")
    if profile:
        if not isinstance(profile, dict):
            raise InvalidArgument("linux.seccomp is not an object")
        from . import seccomp

        program, flags = seccomp.compile_filter(profile)
        out["seccomp"] = program
        if flags:
            out["seccomp_flags"] = flags
    return out


def cri_sandbox(cfg: Config) -> str | None:
    """The sandbox a container joins, from containerd's CRI or CRI-O's annotations (None: a VM of its own)."""
    a = cfg.annotations
    for kind, sandbox in (("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id"),
                          ("io.kubernetes.cri-o.ContainerType", "io.kubernetes.cri-o.SandboxID")):
        if a.get(kind) == "container" and a.get(sandbox):
            return a[sandbox]
    return None


def pid_namespace_path(cfg: Config) -> str | None:
    """linux.namespaces' pid entry's path: CRI gives the sandbox's when the pod shares its PID namespace."""
    for ns in cfg.linux.get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "pid" and ns.get("path"):
            return str(ns["path"])
    return None


def network_namespace(cfg: Config) -> tuple[str, str | None]:
    """linux.namespaces' network entry: ("path", PATH) to join one the engine made (podman, CRI), ("new", None) for
    one the runtime makes (docker's hooks and `ctr run --cni` fill it), ("host", None) without an entry."""
    for ns in cfg.linux.get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            return ("path", str(ns["path"])) if ns.get("path") else ("new", None)
    return "host", None


HOOKS_RUN = ("prestart", "createRuntime", "poststart", "poststop")  # on the host, as runc runs them
HOOKS_IN_CONTAINER = ("createContainer", "startContainer")  # in the container's namespaces: the guest's


def hooks(cfg: Config, kind: str) -> list[dict]:
    """The config's hooks of one kind (each: path, args, env, timeout)."""
    found = ((cfg.model_extra or {}).get("hooks") or {}).get(kind) or []
    return [h for h in found if isinstance(h, dict) and h.get("path")]


def unsupported(cfg: Config) -> list[str]:
    """Settings present in config.json that runv does not honour, for the log and stderr."""
    out = []
    for m in cfg.mounts:
        if m.destination in GUEST_MOUNTS:
            continue
        is_bind = m.type == "bind" or "bind" in m.options or "rbind" in m.options
        if not is_bind and m.type != "tmpfs":
            out.append(f"mount {m.destination} of type {m.type} (only bind and tmpfs mounts are supported)")
        elif is_bind and m.source and not copied_in(Path(m.source)) and not Path(m.source).is_dir():
            out.append(f"bind mount of {m.source} on {m.destination} (directories are shared and regular files of "
                       f"up to {MAX_COPIED_FILE >> 10} KiB copied in; this is neither)")
    linux = cfg.linux
    if network_namespace(cfg)[0] == "host" and not cri_sandbox(cfg):
        out.append("the host's network namespace (no network namespace in linux.namespaces): a VM cannot share "
                   "the host's network, it has loopback only")
    if pid_namespace_path(cfg) and not cri_sandbox(cfg):
        out.append(f"pid namespace {pid_namespace_path(cfg)}: only a CRI sandbox's container may join one (the "
                   "sandbox's); this container gets its own")
    res = linux.get("resources") or {}
    for key in ("cpu", "pids", "blockIO", "hugepageLimits", "network"):
        if res.get(key):
            out.append(f"linux.resources.{key} (the VM's size is fixed at create)")
    memory = res.get("memory")
    memory = memory if isinstance(memory, dict) else {}
    for key in sorted(set(memory) - {"limit", "swap"}):  # no swap device in the guest: memory+swap is memory
        if memory[key]:
            out.append(f"linux.resources.memory.{key} (only the limit is applied, in the container's cgroup)")
    for key in ("devices", "intelRdt", "personality"):
        if linux.get(key):
            out.append(f"linux.{key}")
    for kind in HOOKS_IN_CONTAINER:
        if hooks(cfg, kind):
            out.append(f"hooks.{kind} (they run in the container's namespaces, which are the guest's)")
    caps = cfg.process.capabilities if cfg.process else None
    if caps:
        names = {n for s in (caps.bounding, caps.effective, caps.inheritable, caps.permitted, caps.ambient) for n in s}
        out += [f"process.capabilities: unknown capability {n}" for n in sorted(names) if n not in _known([n])]
    proc_extra = cfg.process.model_extra if cfg.process else {}
    for key in ("apparmorProfile", "selinuxLabel", "oomScoreAdj", "ioPriority", "scheduler"):
        if (proc_extra or {}).get(key):
            out.append(f"process.{key}")
    return out
