"""Network `bridge`: one tap per pod on hyperd's bridge, an address leased from the subnet (sqlite), NAT for
egress and published ports, anti-spoofing per tap (firewall.py). Poolable: a pool VM's tap is made in advance
(premake) on the bridge, sends nothing until a pod takes it, and is then guarded like any pod's.

Named networks (networks.py) are bridges of the same kind: a tenant's pod joins its tenant's `default` network
(made, with its bridge, on first use) or the one its spec names; the administrator's pods join hyperd's bridge
unless their spec names one of the administrator's networks. Pool VMs serve hyperd's bridge only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from pathlib import Path

from ..errors import Conflict, HCError, InvalidArgument
from ..spec.pod import PodSpec
from . import firewall, hostports
from .attachment import Attachment, Mode, Published, host_nameservers, mac_for
from .ipam import Leases
from .links import TAP_PREFIX, Bridge, tap_name
from .networks import ADMIN, NetworkRecord, Networks

log = logging.getLogger(__name__)
SPARE_PREFIX = TAP_PREFIX + "pool"  # premade taps: within the rules' `hc*` (they send nothing until taken)


class BridgeProvider:
    mode: Mode = "bridge"
    nic = True
    poolable = True

    def __init__(self, db: Path, bridge: Bridge) -> None:
        self.bridge = bridge
        self.leases = Leases(db, bridge.subnet)  # releases any pod's lease, whichever network's subnet it is in
        self.networks = Networks(db)
        self._db = db
        self._named: dict[str, tuple[Bridge, Leases]] = {}  # bridge name -> a named network's bridge and leases
        self.ready = False
        self.pods: dict[str, Attachment] = {}
        self.spares: set[str] = set()  # premade taps no pod took yet
        self._reserved: dict[str, list[socket.socket]] = {}
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        await asyncio.to_thread(self.bridge.ensure)
        for rec in self.networks.all():  # named networks' bridges, also after the host restarted
            await asyncio.to_thread(self._open(rec)[0].ensure)
        if not await firewall.present():  # else kept as they are until reconcile(): pods being taken over
            await self._apply_rules()
        self.ready = True

    def _network(self, spec: PodSpec, owner: str | None) -> tuple[Bridge, Leases]:
        """The bridge (and its leases) a pod joins: hyperd's own, or a named network (its tenant's default)."""
        if spec.network_name is None and owner is None:
            return self.bridge, self.leases
        rec = (self.networks.find(owner or ADMIN, spec.network_name) if spec.network_name
               else self.networks.ensure(owner or ADMIN, "default"))
        return self._open(rec)

    def _open(self, rec: NetworkRecord) -> tuple[Bridge, Leases]:
        if rec.bridge not in self._named:
            self._named[rec.bridge] = (Bridge(rec.bridge, rec.subnet), Leases(self._db, rec.subnet))
        return self._named[rec.bridge]

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None,
                     owner: str | None = None) -> Attachment | None:
        """`owner`: the pod's tenant (None: the administrator)."""
        if tap:
            self.spares.discard(tap)  # the pod's now: it goes with the pod, also if this fails
        try:
            bridge, leases = self._network(spec, owner)
            if tap and bridge is not self.bridge:
                raise HCError("a premade tap is on hyperd's bridge, not on the pod's network")
            if bridge is not self.bridge:
                await asyncio.to_thread(bridge.ensure)  # made on first use
            ip = leases.allocate(pod_id)
            socks = self._reserved.setdefault(pod_id, [])
            ports = []
            for p in spec.ports:
                s = hostports.reserve(p.host_ip, p.host_port, p.protocol)
                socks.append(s)
                ports.append(Published(p.host_ip, s.getsockname()[1], p.container_port, p.protocol))
            name = tap or tap_name(pod_id)
            att = Attachment("bridge", mac_for(ip), str(ip), bridge.subnet.prefixlen, str(bridge.gateway),
                             host_nameservers(), tap=name, ports=ports)
            if not tap:
                await asyncio.to_thread(bridge.add_tap, name)
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
        may send from, and the resolvers they were given (reachable on the host if one is a host address); the
        bridges are hyperd's and every named network's (no forwarding between them)."""
        async with self._lock:
            pods = list(self.pods.values())
            forwards = [firewall.Forward(p.host_ip, p.host_port, p.protocol, a.address, p.container_port)
                        for a in pods for p in a.ports]
            ports = [firewall.Port(a.tap, a.mac, a.address) for a in pods if a.tap]
            bridges = [(self.bridge.name, str(self.bridge.subnet))]
            bridges += [(rec.bridge, str(rec.subnet)) for rec in self.networks.all()]
            await firewall.apply(bridges, forwards, ports, {d for a in pods for d in a.dns})

    # ---- named networks --------------------------------------------------------------------------------
    def list_networks(self, owner: str | None) -> list[dict[str, object]]:
        """The owner's networks (None: the administrator's, hyperd's bridge first), with their pods' count."""
        out: list[dict[str, object]] = []
        if owner is None:
            out.append({"name": "bridge", "tenant": None, "bridge": self.bridge.name,
                        "subnet": str(self.bridge.subnet), "gateway": str(self.bridge.gateway), "created": None})
        for rec in self.networks.all(owner or ADMIN):
            out.append(rec.info())
        leases = self.leases.all()
        for n in out:
            subnet = ipaddress.IPv4Network(str(n["subnet"]))
            n["pods"] = sum(ipaddress.IPv4Address(ip) in subnet for ip in leases.values())
        return out

    async def create_network(self, owner: str | None, name: str) -> dict[str, object]:
        """A named network of the owner's; its bridge is made now, its rules with it."""
        if owner is None and name == "bridge":
            raise InvalidArgument("network name bridge is hyperd's own network")
        rec = self.networks.create(owner or ADMIN, name)
        try:
            await asyncio.to_thread(self._open(rec)[0].ensure)
            await self._apply_rules()
        except BaseException:
            await self._drop(rec)
            raise
        return rec.info()

    async def remove_network(self, owner: str | None, name: str) -> None:
        """Refused (Conflict) while a pod is on it."""
        rec = self.networks.find(owner or ADMIN, name)
        if any(ipaddress.IPv4Address(ip) in rec.subnet for ip in self.leases.all().values()):
            raise Conflict(f"network {name} has pods: remove them first")
        await self._drop(rec)

    async def remove_owner(self, owner: str) -> None:
        """Every network of a tenant that goes (its pods gone first)."""
        for rec in self.networks.all(owner):
            await self.remove_network(owner, rec.name)

    async def _drop(self, rec: NetworkRecord) -> None:
        self.networks.remove(rec.tenant, rec.name)
        bridge, leases = self._named.pop(rec.bridge, (Bridge(rec.bridge, rec.subnet), None))
        if leases:
            leases.close()
        await asyncio.to_thread(bridge.delete)
        if self.ready:
            await self._apply_rules()

    async def close(self, remove_rules: bool) -> None:
        for socks in self._reserved.values():
            for s in socks:
                s.close()
        self._reserved.clear()
        if remove_rules and self.ready:
            with contextlib.suppress(HCError):
                await firewall.remove()
        self.leases.close()
        for _, leases in self._named.values():
            leases.close()
        self.networks.close()


def subnet_of(subnet: str) -> ipaddress.IPv4Network:
    """The bridge's subnet from a flag, checked."""
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {e}") from None
    if net.prefixlen > 29:
        raise InvalidArgument(f"subnet {subnet} is too small for pods")
    return net
