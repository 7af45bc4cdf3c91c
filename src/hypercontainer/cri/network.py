"""The sandbox network step: what RunPodSandbox asks of a network before the VM boots, and Stop/RemovePodSandbox
hand back. hyperd's CRI uses CNI (network/cni, the standard plugins): `CniNetwork` makes a named network namespace
per sandbox (`hc-cri-<first 32 characters of the id>` in --cni-netns-dir), runs the network's ADD into it and hands
the pod core `network: {namespace: PATH}`, so the sandbox's VM joins it (network/netns_mode.py: the guest takes the
interface's MAC, addresses and routes). DEL and the namespace's removal at Stop and Remove, from what the sandbox's
record keeps (its `state`) and the CNI result cache, so they work after a hyperd restart too; at hyperd's start
`reconcile()` releases what no live sandbox holds. `NoNetwork` (loopback only) serves where no CNI step is given.

Everything CNI does blocks (plugins are processes): it runs in worker threads, in hyperd's network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import grpc

from ..errors import HCError, InvalidArgument
from ..network import cni
from .errors import CriError, failed_precondition

log = logging.getLogger(__name__)

NETNS_PREFIX = "hc-cri-"  # a sandbox's namespace: NETNS_PREFIX + the first 32 characters of its id
JOURNAL = "hypercontainer-netns"  # below the CNI cache dir: one file per namespace made, removed with it
INGRESS_BANDWIDTH = "kubernetes.io/ingress-bandwidth"  # the annotations the kubelet's bandwidth shaping uses
EGRESS_BANDWIDTH = "kubernetes.io/egress-bandwidth"


@dataclass(frozen=True)
class Readiness:
    """The runtime's NetworkReady condition."""

    ready: bool
    reason: str = ""
    message: str = ""


@dataclass
class SandboxNetwork:
    """What a set-up gave a sandbox."""

    spec: str | dict[str, str]  # the pod spec's `network`: "none", or {"namespace": PATH} for a VM to join
    ips: list[str] = field(default_factory=list)  # the pod's addresses, the primary first (PodSandboxStatus)
    state: dict[str, Any] = field(default_factory=dict)  # kept in the sandbox's record; given back to teardown()


class NetworkStep(Protocol):
    async def readiness(self) -> Readiness: ...

    async def setup(self, sandbox_id: str, config: Any) -> SandboxNetwork:
        """Before the VM: the sandbox's network from its PodSandboxConfig (port mappings, DNS are its to use).
        Raises HCError, having left nothing behind, when it cannot (also when cancelled)."""
        ...

    async def teardown(self, sandbox_id: str, state: dict[str, Any]) -> None:
        """Releases what setup() made; idempotent (Stop then Remove both call it), also after a restart."""
        ...

    async def reconcile(self, live: set[str], stopped: dict[str, dict[str, Any]]) -> None:
        """hyperd started: `live` sandboxes keep their network; `stopped` ones (id -> state) and whatever no
        sandbox holds any more are released."""
        ...


class NoNetwork:
    """Loopback only. NetworkReady follows hyperd's own networking (`ready_when`)."""

    def __init__(self, ready_when: Callable[[], Readiness]) -> None:
        self._ready = ready_when

    async def readiness(self) -> Readiness:
        return self._ready()

    async def setup(self, sandbox_id: str, config: Any) -> SandboxNetwork:
        hostports = [f"{p.host_port}->{p.container_port}" for p in config.port_mappings if p.host_port]
        if hostports:
            raise InvalidArgument(f"hostPort mappings ({', '.join(hostports)}) need a CNI network (portmap); this "
                                  "hyperd gives sandboxes none")
        return SandboxNetwork("none")

    async def teardown(self, sandbox_id: str, state: dict[str, Any]) -> None:
        return None

    async def reconcile(self, live: set[str], stopped: dict[str, dict[str, Any]]) -> None:
        return None


# ---- what a PodSandboxConfig asks of CNI ------------------------------------------------------------------------
_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}


def quantity(text: str, what: str) -> int:
    """A Kubernetes quantity ("10M", "1Gi", "500k") as a whole number."""
    m = _QUANTITY.match(text.strip())
    try:
        if not m:
            raise InvalidOperation
        value = int(Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""])
    except InvalidOperation:
        raise InvalidArgument(f"{what}: {text!r} is not a quantity (such as 10M or 1Gi)") from None
    if value <= 0:
        raise InvalidArgument(f"{what}: {text!r} must be more than 0")
    return value


def capability_args(config: Any) -> dict[str, Any]:
    """The CNI capability arguments of a sandbox, as containerd passes them: portMappings (hostPorts, for portmap),
    dns (the sandbox's DNS config), bandwidth (the kubelet's bandwidth annotations, bits per second)."""
    from .api import pb

    ports = [cni.PortMapping(p.host_port, p.container_port, pb.Protocol.Name(p.protocol).lower(), p.host_ip)
             for p in config.port_mappings]
    for p in ports:
        if not 0 <= p.host_port <= 65535 or not 1 <= p.container_port <= 65535:
            raise InvalidArgument(f"port mapping {p.host_port}->{p.container_port}: ports must be within 1..65535")
    dns = config.dns_config
    annotations = dict(config.annotations)
    ingress = annotations.get(INGRESS_BANDWIDTH)
    egress = annotations.get(EGRESS_BANDWIDTH)
    bandwidth = cni.Bandwidth(ingress_rate=quantity(ingress, INGRESS_BANDWIDTH) if ingress else 0,
                              egress_rate=quantity(egress, EGRESS_BANDWIDTH) if egress else 0)
    given = {"servers": list(dns.servers), "searches": list(dns.searches), "options": list(dns.options)}
    return cni.capability_args(ports, given if any(given.values()) else None, bandwidth)


def netns_name(sandbox_id: str) -> str:
    return NETNS_PREFIX + sandbox_id[:32]


# ---- CNI -----------------------------------------------------------------------------------------------------------
class CniNetwork:
    """Sandboxes on a CNI network: the network named `network` in `conf_dir` (None: the first valid configuration,
    libcni's rule), read again at each set-up, so a changed configuration applies to the next sandbox."""

    def __init__(self, conf_dir: Path, plugin_dirs: Sequence[Path], cache_dir: Path, netns_dir: Path,
                 network: str | None, ifname: str = "eth0", timeout: float = cni.DEFAULT_TIMEOUT) -> None:
        self.conf_dir, self.plugin_dirs, self.cache_dir = Path(conf_dir), tuple(plugin_dirs), Path(cache_dir)
        self.netns_dir, self.network, self.ifname, self.timeout = Path(netns_dir), network, ifname, timeout
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def journal(self) -> Path:
        return self.cache_dir / JOURNAL

    def describe(self) -> str:
        name = f"network {self.network!r}" if self.network else "the first valid network"
        return f"CNI: {name} in {self.conf_dir}, plugins in {':'.join(map(str, self.plugin_dirs))}"

    def _config(self) -> cni.NetworkConfig:
        return cni.load(self.conf_dir, self.network)

    async def readiness(self) -> Readiness:
        ok, why = await asyncio.to_thread(cni.ready, self.conf_dir, self.plugin_dirs, self.network)
        if ok:
            return Readiness(True)
        return Readiness(False, "NetworkPluginNotReady", f"CNI is not ready: {why}")

    # ---- set-up ------------------------------------------------------------------------------------------------
    def _setup(self, sandbox_id: str, pod: cni.PodRef, caps: dict[str, Any]) -> tuple[str, cni.Sandbox]:
        """In a worker thread: the network's configuration, a journal entry, the namespace and ADD (both undone by
        setup_sandbox when the ADD fails), or nothing at all."""
        try:
            conf = self._config()
        except cni.ConfigError as e:
            raise failed_precondition(f"the pod network is not ready: {e.message}") from None
        name = netns_name(sandbox_id)
        mark = self.journal / name
        mark.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        mark.write_text(f"{sandbox_id}\n{self.netns_dir / name}\n")  # a crash before the ADD's cache entry
        try:
            return conf.name, cni.setup_sandbox(
                sandbox_id, conf, pod=pod, capability_args=caps, ifname=self.ifname, netns_dir=self.netns_dir,
                netns_name=name, plugin_dirs=self.plugin_dirs, cache_dir=self.cache_dir, timeout=self.timeout)
        except BaseException:
            mark.unlink(missing_ok=True)
            raise

    async def setup(self, sandbox_id: str, config: Any) -> SandboxNetwork:
        md = config.metadata
        pod = cni.PodRef(md.namespace, md.name, md.uid)
        caps = capability_args(config)
        job = asyncio.ensure_future(asyncio.to_thread(self._setup, sandbox_id, pod, caps))
        try:
            network, sb = await asyncio.shield(job)
        except asyncio.CancelledError:
            # the client gave up: the thread cannot be stopped; what it makes goes as soon as it is done
            job.add_done_callback(lambda j: self._undo_late(sandbox_id, j))
            raise
        except cni.CNIError as e:
            raise CriError(grpc.StatusCode.UNAVAILABLE, f"setting up the pod network failed: {e.message}") from None
        state = {"netns": str(sb.netns.path), "network": network, "ifname": self.ifname}
        return SandboxNetwork({"namespace": str(sb.netns.path)}, sb.ips, state)

    def _undo_late(self, sandbox_id: str, job: asyncio.Future[tuple[str, cni.Sandbox]]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        path = str(job.result()[1].netns.path)
        undo = asyncio.ensure_future(self.teardown(sandbox_id, {"netns": path, "ifname": self.ifname}))
        self._background.add(undo)
        undo.add_done_callback(self._background.discard)

        def said(t: asyncio.Future[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.warning("CRI sandbox %s: undoing the network of a cancelled start: %s", sandbox_id[:12],
                            t.exception())

        undo.add_done_callback(said)

    # ---- teardown ----------------------------------------------------------------------------------------------
    def _teardown(self, sandbox_id: str, netns: str | None, ifname: str) -> None:
        cni.teardown_sandbox(sandbox_id, netns, None, ifname=ifname, plugin_dirs=self.plugin_dirs,
                             cache_dir=self.cache_dir, timeout=self.timeout)
        (self.journal / netns_name(sandbox_id)).unlink(missing_ok=True)

    async def teardown(self, sandbox_id: str, state: dict[str, Any]) -> None:
        if not state.get("netns"):
            return  # no CNI network (a sandbox made without one)
        await asyncio.to_thread(self._teardown, sandbox_id, str(state["netns"]), str(state.get("ifname") or
                                                                                      self.ifname))

    # ---- hyperd's start ----------------------------------------------------------------------------------------
    def _reconcile(self, live: set[str], stopped: dict[str, dict[str, Any]]) -> None:
        def attempt(what: str, fn: Callable[..., Any], *args: Any) -> None:
            try:
                fn(*args)
            except (HCError, OSError) as e:
                log.warning("CNI: %s: %s", what, e.message if isinstance(e, HCError) else e)

        for sid, state in stopped.items():  # stopped while hyperd was away (or a Stop that did not finish)
            if state.get("netns"):
                log.info("CNI: releasing the network of stopped sandbox %s", sid[:12])
                attempt(f"sandbox {sid[:12]}", self._teardown, sid, str(state["netns"]),
                        str(state.get("ifname") or self.ifname))
        keep = [(sid, self.ifname) for sid in sorted(live)]
        try:
            conf: cni.NetworkConfig | None = self._config()
        except cni.ConfigError as e:
            log.warning("CNI: no network to collect garbage of: %s", e.message)
            conf = None
        if conf is not None:  # its attachments no live sandbox holds (DEL), then the plugins' GC (CNI 1.1)
            def collect(conf: cni.NetworkConfig = conf) -> None:
                for cid, _ in cni.gc(conf, keep, plugin_dirs=self.plugin_dirs, cache_dir=self.cache_dir,
                                     timeout=self.timeout):
                    log.info("CNI: released the attachment of sandbox %s to %s (no live sandbox holds it)",
                             cid[:12], conf.name)
            attempt(f"garbage collection of {conf.name}", collect)
        for entry in cni.attachments(self.cache_dir):  # those of other networks (the configuration changed)
            if entry.container_id not in live:
                log.info("CNI: released the attachment of sandbox %s to %s (no live sandbox holds it)",
                         entry.container_id[:12], entry.network.name)
                attempt(f"sandbox {entry.container_id[:12]}", self._teardown, entry.container_id,
                        entry.netns or None, entry.ifname)
        with contextlib.suppress(FileNotFoundError):  # namespaces made, never released (a crash, the DELs above)
            for mark in sorted(self.journal.iterdir()):
                lines = mark.read_text().splitlines()
                if len(lines) < 2 or lines[0] in live:
                    continue
                log.info("CNI: removing network namespace %s (no live sandbox holds it)", lines[1])
                attempt(f"namespace {lines[1]}", cni.netns.remove, lines[1])
                mark.unlink(missing_ok=True)

    async def reconcile(self, live: set[str], stopped: dict[str, dict[str, Any]]) -> None:
        await asyncio.to_thread(self._reconcile, live, stopped)
