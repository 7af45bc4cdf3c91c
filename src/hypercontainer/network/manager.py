"""The pods' networks: which mode, each pod's attachment (address, tap, published ports), and reconciliation.

    bridge: one tap per pod on a host bridge, an address leased from the subnet, NAT for egress and ports
    user:   QEMU's user-mode stack (no host links needed); published ports become QEMU host forwards
    none:   loopback only
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import HCError, InvalidArgument
from ..spec.pod import PodSpec
from . import firewall, hostports
from .ipam import Leases
from .links import Bridge, LinkError, tap_name

log = logging.getLogger(__name__)
DEFAULT_BRIDGE = "hyper0"
DEFAULT_SUBNET = "10.77.0.0/16"  # not docker's 172.17/16, podman's 10.88/16 or the usual Kubernetes ranges
FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")
USER_NET = ipaddress.IPv4Network("10.0.2.0/24")  # QEMU's user-mode defaults
USER_GUEST, USER_GATEWAY, USER_DNS = "10.0.2.15", "10.0.2.2", "10.0.2.3"
Mode = Literal["bridge", "user", "none"]


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.container_port}/{self.protocol} -> {self.host_ip}:{self.host_port}"


@dataclass
class Attachment:
    """What one pod got: how its VM is wired, and what its guest is told."""

    mode: Mode
    mac: str
    address: str
    prefixlen: int
    gateway: str
    dns: list[str]
    tap: str | None = None
    ports: list[Published] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Attachment:
        return cls(**{**d, "ports": [Published(**p) for p in d.get("ports", [])]})


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """Locally administered, unique on the bridge because the address is: 02:68:63 ("hc") + the address's low
    three bytes."""
    b = ip.packed
    return f"02:68:63:{b[1]:02x}:{b[2]:02x}:{b[3]:02x}"


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's resolvers a guest can reach (loopback ones, such as a local stub, cannot be)."""
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    ip = ipaddress.ip_address(parts[1])
                    if ip.version == 4 and not ip.is_loopback:
                        found.append(str(ip))
    return found[:3] or list(FALLBACK_DNS)


class Network:
    def __init__(self, mode: str, db: Path, bridge: str = DEFAULT_BRIDGE, subnet: str = DEFAULT_SUBNET) -> None:
        if mode not in ("auto", "bridge", "user", "none"):
            raise InvalidArgument(f"unknown network mode {mode!r} (auto, bridge, user or none)")
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise InvalidArgument(f"invalid subnet {subnet!r}: {e}") from None
        if net.prefixlen > 29:
            raise InvalidArgument(f"subnet {subnet} is too small for pods")
        self.requested = mode
        self.mode: Mode = "none"
        self.reason = ""
        self.bridge = Bridge(bridge, net)
        self.leases = Leases(db, net)
        self.pods: dict[str, Attachment] = {}
        self._reserved: dict[str, list[socket.socket]] = {}
        self._lock = asyncio.Lock()

    # ---- daemon start ------------------------------------------------------------------------------------
    async def setup(self) -> None:
        """Resolves `auto`: bridge where this process can create links and nftables is there, else user mode."""
        if self.requested in ("user", "none"):
            self.mode, self.reason = self.requested, "chosen by --network"  # type: ignore[assignment]
            return
        try:
            await asyncio.to_thread(self.bridge.ensure)
            if not await firewall.present():  # else kept as they are until reconcile(): pods being taken over
                await self._apply_rules()
        except (LinkError, HCError, OSError) as e:
            msg = e.message if isinstance(e, HCError) else str(e)
            if self.requested == "bridge":
                raise HCError(f"bridge networking failed: {msg}") from None
            self.mode, self.reason = "user", f"bridge unavailable ({msg}); QEMU user mode"
            log.warning("network: %s", self.reason)
            return
        self.mode, self.reason = "bridge", f"bridge {self.bridge.name} {self.bridge.subnet}"

    async def reconcile(self, live: set[str]) -> None:
        """After the pods an earlier hyperd left were taken over: what belongs to no live pod goes (taps, leases,
        NAT and anti-spoofing rules)."""
        live_taps = {tap_name(i) for i in live}
        if self.mode == "bridge":
            for tap in await asyncio.to_thread(Bridge.taps):
                if tap not in live_taps:
                    log.info("network: removing leftover tap %s", tap)
                    await asyncio.to_thread(Bridge.remove_tap, tap)
        for pod_id in self.leases.all():
            if pod_id not in live:
                self.leases.release(pod_id)
        if self.mode == "bridge":
            await self._apply_rules()

    def info(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "bridge": self.bridge.name if self.mode == "bridge" else None,
                "subnet": str(self.bridge.subnet) if self.mode == "bridge" else None,
                "gateway": str(self.bridge.gateway) if self.mode == "bridge" else None}

    # ---- pods --------------------------------------------------------------------------------------------
    def mode_for(self, spec: PodSpec) -> Mode:
        want = self.mode if spec.network == "default" else spec.network
        if want == "bridge" and self.mode != "bridge":
            raise InvalidArgument(f"bridge networking is not available: {self.reason or 'hyperd runs without it'}")
        return want  # type: ignore[return-value]

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None) -> Attachment | None:
        """The pod's network, set up before its VM starts; on failure nothing is left. `tap`: one made in
        advance (a pool VM's), adopted instead of a new one."""
        mode = self.mode_for(spec)
        if mode == "none":
            return None
        if mode == "user":
            ports = [Published(p.host_ip, await asyncio.to_thread(hostports.check_free, p.host_ip, p.host_port,
                                                                   p.protocol), p.container_port, p.protocol)
                     for p in spec.ports]
            att = Attachment("user", mac_for(ipaddress.IPv4Address(USER_GUEST)), USER_GUEST, USER_NET.prefixlen,
                             USER_GATEWAY, [USER_DNS], ports=ports)
            self.pods[pod_id] = att
            return att
        try:
            ip = self.leases.allocate(pod_id)
            socks = self._reserved.setdefault(pod_id, [])
            ports = []
            for p in spec.ports:
                s = hostports.reserve(p.host_ip, p.host_port, p.protocol)
                socks.append(s)
                ports.append(Published(p.host_ip, s.getsockname()[1], p.container_port, p.protocol))
            att = Attachment("bridge", mac_for(ip), str(ip), self.bridge.subnet.prefixlen, str(self.bridge.gateway),
                             host_nameservers(), tap=tap or tap_name(pod_id), ports=ports)
            if not tap:
                await asyncio.to_thread(self.bridge.add_tap, att.tap)
            self.pods[pod_id] = att
            await self._apply_rules()  # until then the tap, ours by its name, may send nothing
        except BaseException:
            await self.detach(pod_id)
            raise
        return att

    def adopt(self, pod_id: str, saved: dict) -> Attachment:
        """A pod taken over from an earlier hyperd: its attachment as recorded; its host ports reserved again."""
        att = Attachment.from_dict(saved)
        self.pods[pod_id] = att
        if att.mode == "bridge":
            for p in att.ports:
                try:
                    self._reserved.setdefault(pod_id, []).append(hostports.reserve(p.host_ip, p.host_port, p.protocol))
                except HCError as e:
                    log.warning("pod %s: %s", pod_id[:12], e.message)
        return att

    async def detach(self, pod_id: str) -> None:
        """Idempotent: host ports, tap, lease, NAT and anti-spoofing rules."""
        att = self.pods.pop(pod_id, None)
        for s in self._reserved.pop(pod_id, []):
            s.close()
        if att and att.tap:
            try:
                await asyncio.to_thread(Bridge.remove_tap, att.tap)
            except OSError as e:
                log.warning("network: cannot remove tap %s: %s", att.tap, e)
        if self.requested != "none":
            self.leases.release(pod_id)
        if att and att.mode == "bridge":
            await self._apply_rules()

    async def _apply_rules(self) -> None:
        """hyperd's nftables rendered from the bridge pods: their published ports, the MAC and address each tap
        may send from, and the resolvers they were given (reachable on the host if one is a host address)."""
        async with self._lock:
            pods = [a for a in self.pods.values() if a.mode == "bridge"]
            forwards = [firewall.Forward(p.host_ip, p.host_port, p.protocol, a.address, p.container_port)
                        for a in pods for p in a.ports]
            ports = [firewall.Port(a.tap, a.mac, a.address) for a in pods if a.tap]
            await firewall.apply(self.bridge.name, str(self.bridge.subnet), forwards, ports,
                                 {d for a in pods for d in a.dns})

    async def close(self, remove_rules: bool) -> None:
        for socks in self._reserved.values():
            for s in socks:
                s.close()
        self._reserved.clear()
        if remove_rules and self.mode == "bridge":
            with contextlib.suppress(HCError):
                await firewall.remove()
        self.leases.close()

