"""Network `bridge`: one tap per pod on hyperd's bridge, an address leased from the subnet (sqlite), NAT for
egress and published ports, anti-spoofing per tap (firewall.py). Poolable: a pool VM's tap is made in advance
(premake) on the bridge, sends nothing until a pod takes it, and is then guarded like any pod's."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from pathlib import Path

from ..errors import HCError, InvalidArgument
from ..spec.pod import PodSpec
from . import firewall, hostports
from .attachment import Attachment, Mode, Published, host_nameservers, mac_for
from .ipam import Leases
from .links import TAP_PREFIX, Bridge, tap_name

log = logging.getLogger(__name__)
SPARE_PREFIX = TAP_PREFIX + "pool"  # premade taps: within the rules' `hc*` (they send nothing until taken)


class BridgeProvider:
    mode: Mode = "bridge"
    nic = True
    poolable = True

    def __init__(self, db: Path, bridge: Bridge) -> None:
        self.bridge = bridge
        self.leases = Leases(db, bridge.subnet)
        self.ready = False
        self.pods: dict[str, Attachment] = {}
        self.spares: set[str] = set()  # premade taps no pod took yet
        self._reserved: dict[str, list[socket.socket]] = {}
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        await asyncio.to_thread(self.bridge.ensure)
        if not await firewall.present():  # else kept as they are until reconcile(): pods being taken over
            await self._apply_rules()
        self.ready = True

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None) -> Attachment | None:
        if tap:
            self.spares.discard(tap)  # the pod's now: it goes with the pod, also if this fails
        try:
            ip = self.leases.allocate(pod_id)
            socks = self._reserved.setdefault(pod_id, [])
            ports = []
            for p in spec.ports:
                s = hostports.reserve(p.host_ip, p.host_port, p.protocol)
                socks.append(s)
                ports.append(Published(p.host_ip, s.getsockname()[1], p.container_port, p.protocol))
            name = tap or tap_name(pod_id)
            att = Attachment("bridge", mac_for(ip), str(ip), self.bridge.subnet.prefixlen, str(self.bridge.gateway),
                             host_nameservers(), tap=name, ports=ports)
            if not tap:
                await asyncio.to_thread(self.bridge.add_tap, name)
            self.pods[pod_id] = att
            await self._apply_rules()  # until then the tap, ours by its name, may send nothing
        except BaseException:
            await self.detach(pod_id)
            if tap:
                await self.discard(tap)
            raise
        return att

    def adopt(self, pod_id: str, att: Attachment) -> None:
        """Its host ports reserved again (the rules follow at reconcile)."""
        self.pods[pod_id] = att
        for p in att.ports:
            try:
                self._reserved.setdefault(pod_id, []).append(hostports.reserve(p.host_ip, p.host_port, p.protocol))
            except HCError as e:
                log.warning("pod %s: %s", pod_id[:12], e.message)

    async def detach(self, pod_id: str) -> None:
        """Host ports, tap, lease, NAT and anti-spoofing rules."""
        att = self.pods.pop(pod_id, None)
        for s in self._reserved.pop(pod_id, []):
            s.close()
        if att and att.tap:
            await self.discard(att.tap)
        self.leases.release(pod_id)  # also one an attach that failed early leaves
        if att:
            await self._apply_rules()

    async def reconcile(self, live: set[str]) -> None:
        """Taps, leases and rules of pods that are gone (a crashed hyperd's); the live pods' taps (a pool VM's
        too) and unused spares stay."""
        for pod_id in set(self.pods) - live:
            await self.detach(pod_id)
        if self.ready:
            keep = {tap_name(i) for i in live} | {a.tap for a in self.pods.values() if a.tap} | self.spares
            for tap in await asyncio.to_thread(Bridge.taps):
                if tap not in keep:
                    log.info("network: removing leftover tap %s", tap)
                    await self.discard(tap)
        for pod_id in self.leases.all():
            if pod_id not in live:
                self.leases.release(pod_id)
        if self.ready:
            await self._apply_rules()

    async def premake(self, key: str) -> str | None:
        tap = SPARE_PREFIX + key[:8]
        self.spares.add(tap)
        try:
            await asyncio.to_thread(self.bridge.add_tap, tap)
        except BaseException:
            self.spares.discard(tap)
            raise
        return tap

    async def discard(self, tap: str) -> None:
        self.spares.discard(tap)
        try:
            await asyncio.to_thread(Bridge.remove_tap, tap)
        except OSError as e:
            log.warning("network: cannot remove tap %s: %s", tap, e)

    def info(self) -> dict[str, str | None]:
        return {"bridge": self.bridge.name, "subnet": str(self.bridge.subnet), "gateway": str(self.bridge.gateway)}

    async def _apply_rules(self) -> None:
        """hyperd's nftables rendered from the bridge pods: their published ports, the MAC and address each tap
        may send from, and the resolvers they were given (reachable on the host if one is a host address)."""
        async with self._lock:
            pods = list(self.pods.values())
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
        if remove_rules and self.ready:
            with contextlib.suppress(HCError):
                await firewall.remove()
        self.leases.close()


def subnet_of(subnet: str) -> ipaddress.IPv4Network:
    """The bridge's subnet from a flag, checked."""
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {e}") from None
    if net.prefixlen > 29:
        raise InvalidArgument(f"subnet {subnet} is too small for pods")
    return net
