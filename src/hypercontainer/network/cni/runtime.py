"""The runtime side of CNI: calling a network's plugins for a container (ADD, DEL, CHECK), asking them (VERSION,
STATUS), and the result cache.

Each plugin is an executable named by its `type`, found in the plugin directories and run with CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and CNI_PATH in its environment and its configuration on stdin:
the plugin's object from the list with the network's `name` and `cniVersion`, a `runtimeConfig` holding the
capability arguments it declares in `capabilities` (portMappings, dns, bandwidth, ...), and `prevResult`: on ADD the
result of the plugin before it (none for the first), on DEL and CHECK the cached result of the whole ADD. Its
result (ADD) or error is JSON on stdout; an error is `{code, msg, details}` with a non-zero exit status, raised here
as CNIError naming the plugin, the command, the code (and its meaning for the well-known ones) and the message.

ADD runs the plugins in order and caches the final result; if one fails, the plugins already called (and the one
that failed: it may have done part of its work) get a DEL in reverse order, as the spec tells runtimes to do after a
failed ADD, so nothing is left: no veth, no IPAM allocation, no iptables rule. DEL runs them in reverse order with
the cached result as prevResult, and is idempotent: a container the plugins no longer know (error code 3) and one
with no cache entry are fine.

The cache (like libcni's /var/lib/cni/results, in the same format) holds, per (network, container, interface), the
configuration the ADD ran with, its CNI_ARGS and capability arguments, the namespace path and the result, so a DEL
after a restart of the runtime runs exactly what the ADD ran. An entry is written before the first plugin runs
(without a result) and completed after the last: a runtime killed in the middle still knows to DEL.

When the namespace is already gone at DEL (removed before the DEL, or a crash), plugins that find the container's
interface gone skip part of their cleanup: the bridge plugin, for one, only tears down its masquerade rules for the
addresses it reads off the interface. DEL then hands them a stand-in: a namespace of its own (held by an fd for the
length of the DEL, so it cannot outlive it) holding a veth named like the container's interface with the cached
result's addresses on it; the plugins delete it and clean up all that goes with it."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import nsenter
from ...errors import Conflict, HCError, InvalidArgument
from .config import SUPPORTED_VERSIONS, NetworkConfig, at_least, parse
from .netns import is_netns
from .result import Result, ResultError

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_DIRS = (Path("/opt/cni/bin"), Path("/usr/lib/cni"), Path("/usr/libexec/cni"))
DEFAULT_CACHE_DIR = Path("/var/lib/hypercontainer/cni")  # results/ below it, as libcni's /var/lib/cni
DEFAULT_TIMEOUT = 120.0  # seconds per plugin call (a DHCP IPAM may take a while)
CACHE_KIND = "cniCacheV1"
OUR_VERSION = SUPPORTED_VERSIONS[-1]

ERROR_CODES = {
    1: "incompatible CNI version",
    2: "unsupported field in network configuration",
    3: "container unknown or does not exist",
    4: "invalid necessary environment variables",
    5: "I/O failure",
    6: "failed to decode content",
    7: "invalid network config",
    11: "try again later",
    50: "plugin not available",
    51: "plugin not available; existing containers may have limited connectivity",
}
CONTAINER_UNKNOWN = 3
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ARG = re.compile(r"^[^;=]*$")


class CNIError(HCError):
    """A plugin failed (or could not be run). `cni_code` is the plugin's error code (None: it was not found, timed
    out, or wrote no valid error), `msg` and `details` its words (`code` stays HCError's API code)."""

    def __init__(self, command: str, network: str, plugin: str, msg: str, code: int | None = None,
                 details: str = "", note: str = "") -> None:
        meaning = f" (code {code}: {ERROR_CODES[code]})" if code in ERROR_CODES else \
            (f" (code {code})" if code is not None else "")
        text = f"CNI {command} on network {network!r}: plugin {plugin!r} failed{meaning}: {msg}"
        if details and details != msg:
            text += f": {details}"
        if note:
            text += f" [{note}]"
        super().__init__(text)
        self.command, self.network, self.plugin = command, network, plugin
        self.cni_code, self.msg, self.details = code, msg, details


# ---- what the runtime passes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodRef:
    """The Kubernetes pod a sandbox is for: CNI_ARGS K8S_POD_NAMESPACE/NAME/UID (and K8S_POD_INFRA_CONTAINER_ID,
    the container id), as containerd and CRI-O pass them."""

    namespace: str
    name: str
    uid: str = ""


@dataclass(frozen=True)
class PortMapping:
    """A hostPort: the portmap plugin's `portMappings` capability."""

    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp, udp or sctp
    host_ip: str = ""  # "": every host address

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hostPort": self.host_port, "containerPort": self.container_port,
                               "protocol": self.protocol.lower()}
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out


@dataclass(frozen=True)
class Bandwidth:
    """The bandwidth plugin's `bandwidth` capability: rates in bits per second, bursts in bits; 0: no limit."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_json(self) -> dict[str, int]:
        out = {}
        if self.ingress_rate:
            out["ingressRate"], out["ingressBurst"] = self.ingress_rate, self.ingress_burst or self.ingress_rate
        if self.egress_rate:
            out["egressRate"], out["egressBurst"] = self.egress_rate, self.egress_burst or self.egress_rate
        return out


def capability_args(ports: Iterable[PortMapping] = (), dns: Mapping[str, Sequence[str]] | None = None,
                    bandwidth: Bandwidth | None = None, **extra: Any) -> dict[str, Any]:
    """The capability arguments (CONVENTIONS.md's names): `portMappings` (mappings whose host port is 0 are left
    out, as containerd does), `dns` ({servers, searches, options}), `bandwidth`, and any other by its name."""
    out: dict[str, Any] = {}
    mappings = [p.to_json() for p in ports if p.host_port]
    if mappings:
        out["portMappings"] = mappings
    if dns:
        out["dns"] = {k: list(v) for k, v in dns.items() if v}
    if bandwidth and bandwidth.to_json():
        out["bandwidth"] = bandwidth.to_json()
    out.update(extra)
    return out


def cni_args(container_id: str, pod: PodRef | None = None, args: Mapping[str, str] | None = None
             ) -> list[tuple[str, str]]:
    """CNI_ARGS as pairs: IgnoreUnknown=1 first (plugins refuse keys they do not know without it), then the pod's
    K8S_POD_* keys, then `args`."""
    pairs = [("IgnoreUnknown", "1")]
    if pod:
        pairs += [("K8S_POD_NAMESPACE", pod.namespace), ("K8S_POD_NAME", pod.name),
                  ("K8S_POD_INFRA_CONTAINER_ID", container_id)]
        if pod.uid:
            pairs.append(("K8S_POD_UID", pod.uid))
    for k, v in (args or {}).items():
        pairs = [(a, b) for a, b in pairs if a != k] + [(k, v)]
    for k, v in pairs:
        if not k or not _ARG.match(k) or not _ARG.match(v):
            raise InvalidArgument(f"CNI_ARGS {k}={v}: ';' and '=' cannot be part of a key or value")
    return pairs


def _check_ids(container_id: str, ifname: str) -> None:
    if not _CONTAINER_ID.match(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r} for CNI (letters, digits, '_', '.', '-')")
    if (not ifname or len(ifname) > 15 or ifname in (".", "..")
            or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname)):
        raise InvalidArgument(f"invalid interface name {ifname!r}")


# ---- running a plugin ---------------------------------------------------------------------------------------------
def find_plugin(kind: str, plugin_dirs: Sequence[str | Path]) -> Path | None:
    for d in plugin_dirs:
        p = Path(d) / kind
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


@dataclass
class _Call:
    """What stays the same across one operation's plugin calls."""

    command: str
    network: NetworkConfig
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Sequence[tuple[str, str]] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS
    timeout: float = DEFAULT_TIMEOUT

    def stdin(self, plugin: Mapping[str, Any], prev: Mapping[str, Any] | None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The plugin's configuration as it is run: name and cniVersion of the network, runtimeConfig with the
        capability arguments it declares, prevResult."""
        conf = dict(plugin)
        conf["name"], conf["cniVersion"] = self.network.name, self.network.cni_version
        caps = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in self.capability_args.items() if caps.get(k) is True}
        if runtime:
            conf["runtimeConfig"] = {**(conf.get("runtimeConfig") or {}), **runtime}
        if prev is not None:
            conf["prevResult"] = dict(prev)
        conf.update(extra or {})
        return conf

    def run(self, plugin: Mapping[str, Any], prev: Mapping[str, Any] | None = None,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """One plugin call; its JSON output (None when it wrote none), CNIError when it fails."""
        kind = str(plugin["type"])
        path = find_plugin(kind, self.plugin_dirs)
        if path is None:
            raise CNIError(self.command, self.network.name, kind,
                           f"not found in {':'.join(map(str, self.plugin_dirs))}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=self.command, CNI_CONTAINERID=self.container_id, CNI_NETNS=self.netns,
                   CNI_IFNAME=self.ifname, CNI_ARGS=";".join(f"{k}={v}" for k, v in self.args),
                   CNI_PATH=":".join(str(d) for d in self.plugin_dirs if Path(d).is_dir()))
        if "PATH" not in env:
            env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # plugins run iptables, ip6tables, nft by name
        stdin = json.dumps(self.stdin(plugin, prev, extra)).encode()
        try:
            proc = subprocess.run([str(path)], input=stdin, env=env, capture_output=True, timeout=self.timeout,
                                  cwd="/", check=False)
        except subprocess.TimeoutExpired:
            raise CNIError(self.command, self.network.name, kind, f"no answer in {self.timeout:g} s") from None
        except OSError as e:
            raise CNIError(self.command, self.network.name, kind, f"cannot run {path}: {e.strerror}") from None
        out = proc.stdout.decode(errors="replace").strip()
        err = proc.stderr.decode(errors="replace").strip()
        if err:
            log.debug("CNI %s %s stderr: %s", self.command, kind, err[-2000:])
        doc: Any = None
        if out:
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
        if proc.returncode != 0:
            if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
                code = doc.get("code")
                raise CNIError(self.command, self.network.name, kind, str(doc.get("msg") or "failed"),
                               code if isinstance(code, int) else None, str(doc.get("details") or ""))
            text = (err or out or f"exit status {proc.returncode}")[-1000:]
            raise CNIError(self.command, self.network.name, kind, text)
        if out and not isinstance(doc, dict):
            raise CNIError(self.command, self.network.name, kind, f"output is not a JSON object: {out[:200]!r}")
        return doc if isinstance(doc, dict) else None


# ---- the cache --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cached:
    """One cache entry: what an ADD ran with, and its result (None: the ADD did not finish)."""

    network: NetworkConfig
    container_id: str
    ifname: str
    netns: str
    args: tuple[tuple[str, str], ...]
    capability_args: dict[str, Any]
    result: Result | None
    path: Path


def _cache_path(cache_dir: str | Path, network: str, container_id: str, ifname: str) -> Path:
    return Path(cache_dir) / "results" / f"{network}-{container_id}-{ifname}"


def _write_cache(path: Path, network: NetworkConfig, container_id: str, ifname: str, netns: str,
                 args: Sequence[tuple[str, str]], capability_args: Mapping[str, Any],
                 result: Mapping[str, Any] | None) -> None:
    doc: dict[str, Any] = {
        "kind": CACHE_KIND, "containerId": container_id, "ifName": ifname, "networkName": network.name,
        "netns": netns, "config": base64.b64encode(json.dumps(network.to_json()).encode()).decode(),
        "cniArgs": [list(a) for a in args], "capabilityArgs": dict(capability_args),
    }
    if result is not None:
        doc["result"] = dict(result)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path) -> Cached | None:
    """The entry at `path`; None (logged) for one that cannot be read: a DEL without it still runs."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("kind") != CACHE_KIND:
            raise ValueError(f"kind {doc.get('kind')!r}")
        network = parse(base64.b64decode(doc["config"]), f"cached {path.name}")
        result = Result.from_json(doc["result"], f"cache {path.name}") if doc.get("result") is not None else None
        return Cached(network, str(doc["containerId"]), str(doc["ifName"]), str(doc.get("netns") or ""),
                      tuple((str(k), str(v)) for k, v in doc.get("cniArgs") or ()),
                      dict(doc.get("capabilityArgs") or {}), result, path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ResultError) as e:
        log.warning("CNI cache entry %s unreadable: %s", path, e)
        return None


def cached(container_id: str, ifname: str = "eth0", network: str | None = None,
           cache_dir: str | Path = DEFAULT_CACHE_DIR) -> list[Cached]:
    """The cache entries of a container's interface (of one network, or all)."""
    if network is not None:
        entry = _read_cache(_cache_path(cache_dir, network, container_id, ifname))
        return [entry] if entry else []
    return [e for e in attachments(cache_dir) if e.container_id == container_id and e.ifname == ifname]


def attachments(cache_dir: str | Path = DEFAULT_CACHE_DIR) -> list[Cached]:
    """Every cache entry: the attachments this runtime made and has not deleted (what a restarted runtime
    reconciles against its sandboxes; gc() deletes those no sandbox holds)."""
    d = Path(cache_dir) / "results"
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if not n.startswith("."):
            entry = _read_cache(d / n)
            if entry:
                out.append(entry)
    return out


_locks: dict[tuple[str, str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


@contextlib.contextmanager
def _serialized(cache_dir: str | Path, network: str, container_id: str, ifname: str) -> Iterator[None]:
    """No two operations on one attachment at once (the spec forbids the runtime parallel calls for a container)."""
    key = (str(cache_dir), network, container_id, ifname)
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield


# ---- ADD, DEL, CHECK -------------------------------------------------------------------------------------------
def add(netns: str | Path, container_id: str, ifname: str, config: NetworkConfig,
        capability_args: Mapping[str, Any] | None = None, *, pod: PodRef | None = None,
        args: Mapping[str, str] | None = None, plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
        cache_dir: str | Path = DEFAULT_CACHE_DIR, timeout: float = DEFAULT_TIMEOUT) -> Result:
    """Attaches the container (its namespace `netns`) to the network: each plugin's ADD in order, the final
    result cached and returned. On failure every plugin already called gets a DEL (reverse order) and the cache
    entry goes: nothing is left; the CNIError names the plugin that failed and its message. Conflict if the
    attachment exists (DEL it first)."""
    _check_ids(container_id, ifname)
    if not is_netns(netns):
        raise InvalidArgument(f"CNI ADD of {container_id}: {netns} is not a network namespace")
    pairs = cni_args(container_id, pod, args)
    caps = dict(capability_args or {})
    path = _cache_path(cache_dir, config.name, container_id, ifname)
    with _serialized(cache_dir, config.name, container_id, ifname):
        earlier = _read_cache(path)
        if earlier is not None and earlier.result is not None:
            raise Conflict(f"container {container_id} ({ifname}) is already attached to CNI network {config.name}")
        if earlier is not None:  # an ADD that did not finish (the runtime died in it): undo it first
            log.warning("CNI: an unfinished ADD of %s/%s on %s: deleting it first", container_id, ifname,
                        config.name)
            _delete_entry(earlier, plugin_dirs, timeout)
        _write_cache(path, config, container_id, ifname, str(netns), pairs, caps, None)
        call = _Call("ADD", config, container_id, str(netns), ifname, pairs, caps, plugin_dirs, timeout)
        prev: dict[str, Any] | None = None
        for i, plugin in enumerate(config.plugins):
            try:
                out = call.run(plugin, prev)
                if out is None:
                    raise CNIError("ADD", config.name, str(plugin["type"]), "no result on stdout")
                result = Result.from_json(out, f"plugin {plugin['type']!r}")
            except (CNIError, ResultError) as e:
                ok, ran = _undo(call, config.plugins[:i + 1], prev)
                if ok:
                    path.unlink(missing_ok=True)
                    raise _with_note(e, "undone: DEL ran for " + (", ".join(ran) or "none")) from None
                raise _with_note(e, "the DEL after it failed too (see the log); the attachment stays cached for "
                                 "a later delete()") from None
            prev = result.to_json()
        assert prev is not None  # a network has at least one plugin
        _write_cache(path, config, container_id, ifname, str(netns), pairs, caps, prev)
        return Result.from_json(prev)


def _with_note(e: HCError, note: str) -> HCError:
    if isinstance(e, CNIError):
        return CNIError(e.command, e.network, e.plugin, e.msg, e.cni_code, e.details, note)
    return type(e)(f"{e.message} [{note}]")


def _undo(call: _Call, plugins: Sequence[Mapping[str, Any]], prev: Mapping[str, Any] | None
          ) -> tuple[bool, list[str]]:
    """DEL for the plugins an ADD called, last first, each tried (a plugin that was not found never ran): whether
    all succeeded, and the plugins it ran."""
    ok, ran = True, []
    undo = _Call("DEL", call.network, call.container_id, call.netns, call.ifname, call.args, call.capability_args,
                 call.plugin_dirs, call.timeout)
    with_prev = prev if at_least(call.network.cni_version, "0.4.0") else None
    for plugin in reversed(plugins):
        if find_plugin(str(plugin["type"]), call.plugin_dirs) is None:
            continue
        ran.append(str(plugin["type"]))
        try:
            undo.run(plugin, with_prev)
        except CNIError as e:
            if e.cni_code != CONTAINER_UNKNOWN:
                log.error("after the failed ADD: %s", e.message)
                ok = False
    return ok, ran


def delete(netns: str | Path | None, container_id: str, ifname: str = "eth0", config: NetworkConfig | None = None,
           capability_args: Mapping[str, Any] | None = None, *, pod: PodRef | None = None,
           args: Mapping[str, str] | None = None, plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
           cache_dir: str | Path = DEFAULT_CACHE_DIR, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Detaches the container: each plugin's DEL in reverse order, with what the ADD ran with when the cache has it
    (configuration, CNI_ARGS, capability arguments, prevResult: `config` then only names the network; without
    `config`, every cached attachment of this container and interface), else with what is given here. Idempotent:
    an attachment that is gone, or never was, is fine, also when the namespace is gone (see the module's doc).
    True if the cache had an attachment to delete (without one, DEL still runs when `config` is given). CNIError
    (the cache entry kept, so a retry can finish) if a plugin fails with anything but "container unknown"."""
    _check_ids(container_id, ifname)
    if config is None:
        entries = cached(container_id, ifname, None, cache_dir)
        for entry in entries:
            with _serialized(cache_dir, entry.network.name, container_id, ifname):
                _delete_entry(entry, plugin_dirs, timeout, str(netns) if netns else None)
        return bool(entries)
    with _serialized(cache_dir, config.name, container_id, ifname):
        path = _cache_path(cache_dir, config.name, container_id, ifname)
        found = _read_cache(path)
        entry = found if found is not None else Cached(
            config, container_id, ifname, str(netns or ""), tuple(cni_args(container_id, pod, args)),
            dict(capability_args or {}), None, path)
        _delete_entry(entry, plugin_dirs, timeout, str(netns) if netns else None)
        return found is not None


def _delete_entry(entry: Cached, plugin_dirs: Sequence[str | Path], timeout: float,
                  netns: str | None = None) -> None:
    ns = netns if netns is not None else entry.netns
    prev = entry.result.to_json() if entry.result and at_least(entry.network.cni_version, "0.4.0") else None
    with _stand_in(ns, entry) as path:
        call = _Call("DEL", entry.network, entry.container_id, path, entry.ifname, entry.args,
                     entry.capability_args, plugin_dirs, timeout)
        for plugin in reversed(entry.network.plugins):
            try:
                call.run(plugin, prev)
            except CNIError as e:
                if e.cni_code != CONTAINER_UNKNOWN:
                    raise
                log.info("CNI DEL: %s", e.message)
    entry.path.unlink(missing_ok=True)


@contextlib.contextmanager
def _stand_in(netns: str, entry: Cached) -> Iterator[str]:
    """`netns` while it is a network namespace; when it is gone and the cached result gave the container's interface
    addresses, the path of a stand-in namespace for the DEL (see the module's doc), held by an fd until the DEL is
    done."""
    addresses = entry.result.addresses(entry.ifname) if entry.result else []
    if not netns or is_netns(netns) or not addresses:
        yield netns
        return
    ifname = entry.ifname

    def body() -> int:
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            ip.link("add", ifname=ifname, kind="veth", peer="cnistandin0")
            index = ip.link_lookup(ifname=ifname)[0]
            for a in addresses:
                address, prefix = a.address.split("/")
                ip.addr("add", index=index, address=address, prefixlen=int(prefix))
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    try:
        fd = nsenter.in_new_ns(body)
    except Exception as e:  # the DEL still runs, with the path that is gone
        log.warning("CNI DEL of %s: no stand-in for the namespace %s that is gone: %s", entry.container_id, netns, e)
        yield netns
        return
    log.info("CNI DEL of %s: namespace %s is gone; a stand-in carries %s", entry.container_id, netns,
             ", ".join(a.address for a in addresses))
    try:
        yield f"/proc/{os.getpid()}/fd/{fd}"
    finally:
        os.close(fd)


def check(netns: str | Path, container_id: str, ifname: str = "eth0", config: NetworkConfig | None = None, *,
          plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS, cache_dir: str | Path = DEFAULT_CACHE_DIR,
          timeout: float = DEFAULT_TIMEOUT) -> None:
    """CHECK: each plugin verifies the attachment against the cached result, in order; CNIError from the first
    that finds it wrong. NotFound-like InvalidArgument when there is no finished ADD to check; nothing is run for
    networks older than 0.4.0 or with disableCheck."""
    _check_ids(container_id, ifname)
    entries = cached(container_id, ifname, config.name if config else None, cache_dir)
    entries = [e for e in entries if e.result is not None]
    if not entries:
        raise InvalidArgument(f"container {container_id} ({ifname}) has no CNI attachment to check")
    for entry in entries:
        if not at_least(entry.network.cni_version, "0.4.0") or entry.network.disable_check:
            continue
        assert entry.result is not None
        call = _Call("CHECK", entry.network, container_id, str(netns), ifname, entry.args, entry.capability_args,
                     plugin_dirs, timeout)
        for plugin in entry.network.plugins:
            call.run(plugin, entry.result.to_json())


# ---- asking the plugins -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginVersion:
    cni_version: str
    supported: tuple[str, ...]


def version(kind: str, plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
            timeout: float = 10.0) -> PluginVersion:
    """VERSION: the spec versions a plugin speaks (0.1.0 when it answers with nothing, as libcni assumes)."""
    network = NetworkConfig("version", OUR_VERSION, ({"type": kind},))
    out = _Call("VERSION", network, plugin_dirs=plugin_dirs, timeout=timeout).run({"type": kind})
    if not out:
        return PluginVersion("0.1.0", ("0.1.0",))
    supported = out.get("supportedVersions") or [out.get("cniVersion", "0.1.0")]
    return PluginVersion(str(out.get("cniVersion", "")), tuple(map(str, supported)))


def status(config: NetworkConfig, plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS,
           timeout: float = 10.0) -> None:
    """Whether the network can take ADDs now (the CRI's NetworkReady): every plugin is found and speaks the
    network's version (VERSION), and, for 1.1.0 networks, answers STATUS without error. CNIError for the first
    that is not ready."""
    for plugin in config.plugins:
        kind = str(plugin["type"])
        v = version(kind, plugin_dirs, timeout)
        if config.cni_version not in v.supported:
            raise CNIError("VERSION", config.name, kind, f"speaks {', '.join(v.supported)}, not the network's "
                           f"{config.cni_version}", 1)
    if at_least(config.cni_version, "1.1.0"):
        call = _Call("STATUS", config, plugin_dirs=plugin_dirs, timeout=timeout)
        for plugin in config.plugins:
            call.run(plugin)


def gc(config: NetworkConfig, keep: Iterable[tuple[str, str]], *,
       plugin_dirs: Sequence[str | Path] = DEFAULT_PLUGIN_DIRS, cache_dir: str | Path = DEFAULT_CACHE_DIR,
       timeout: float = DEFAULT_TIMEOUT) -> list[tuple[str, str]]:
    """Deletes the network's cached attachments whose (container id, ifname) is not in `keep` (sandboxes that no
    longer exist: a runtime restarted after a crash calls this), then, for 1.1.0 networks without disableGC, calls
    GC on each plugin with the valid attachments. The (container id, ifname) pairs deleted."""
    valid = set(keep)
    gone = []
    for entry in attachments(cache_dir):
        if entry.network.name != config.name or (entry.container_id, entry.ifname) in valid:
            continue
        with _serialized(cache_dir, entry.network.name, entry.container_id, entry.ifname):
            _delete_entry(entry, plugin_dirs, timeout)
        gone.append((entry.container_id, entry.ifname))
    if at_least(config.cni_version, "1.1.0") and not config.disable_gc:
        call = _Call("GC", config, plugin_dirs=plugin_dirs, timeout=timeout)
        attached = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
        for plugin in config.plugins:
            call.run(plugin, None, {"cni.dev/valid-attachments": attached})
    return gone
