"""What a provider hands a pod: how its VM's NIC is wired on the host and what its guest is told."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")
Mode = Literal["bridge", "user", "none", "namespace"]  # the providers' names


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.container_port}/{self.protocol} -> {self.host_ip}:{self.host_port}"


@dataclass(frozen=True)
class Route:
    """A route the guest gets besides the default one `gateway` gives (`via` None: on the link). `dst` is a CIDR
    (IPv4 or IPv6; 0.0.0.0/0 and ::/0 are default routes); `mac` names the guest interface (None: the first)."""

    dst: str
    via: str | None = None
    mac: str | None = None


@dataclass(frozen=True)
class Interface:
    """One guest NIC: its host backend (`tap`, in the attachment's `netns`; None: QEMU's user-mode stack) and what
    the guest configures on the interface with this MAC (addresses "addr/len", IPv4 and IPv6; MTU, None: 1500)."""

    mac: str
    tap: str | None
    addresses: tuple[str, ...] = ()
    mtu: int | None = None


@dataclass
class Attachment:
    """One pod's network: the VM's NIC backend (`tap`, in `netns` when that is not hyperd's own namespace; None:
    QEMU's user-mode stack) and what the guest is told (MAC, address, gateway, routes, MTU, resolvers)."""

    mode: Mode
    mac: str
    address: str
    prefixlen: int
    gateway: str
    dns: list[str]
    tap: str | None = None
    ports: list[Published] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    mtu: int | None = None  # None: the guest's default (1500)
    netns: str | None = None  # the namespace the taps are in (a path); None: hyperd's
    # Several NICs (the namespace mode: one per interface of the namespace); empty: the one the fields above give.
    interfaces: list[Interface] = field(default_factory=list)

    def nics(self) -> list[Interface]:
        """The guest's NICs, in device order: what QEMU gets (taps) and the guest configures (addresses, MTU)."""
        if self.interfaces:
            return list(self.interfaces)
        addrs = (f"{self.address}/{self.prefixlen}",) if self.address else ()
        return [Interface(self.mac, self.tap, addrs, self.mtu)]

    def guest_routes(self) -> list[Route]:
        """Every route the guest adds, the default one (`gateway`, on the first NIC) first."""
        default = [Route("0.0.0.0/0", self.gateway, self.mac)] if self.gateway else []
        return default + [r if r.mac else Route(r.dst, r.via, self.mac) for r in self.routes]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attachment:
        """Also reads what an earlier hyperd recorded (fewer fields)."""
        return cls(**{**d, "ports": [Published(**p) for p in d.get("ports", [])],
                      "routes": [Route(**r) for r in d.get("routes", [])],
                      "interfaces": [Interface(**{**i, "addresses": tuple(i.get("addresses", ()))})
                                     for i in d.get("interfaces", [])]})


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
