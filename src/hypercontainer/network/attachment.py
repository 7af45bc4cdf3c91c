"""What a provider hands a pod: how its VM's NIC is wired on the host and what its guest is told."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")
Mode = Literal["bridge", "user", "none"]  # the providers' names (a namespace provider joins them: issue 14)


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
    """A route the guest gets besides its default one (`via` None: on the link)."""

    dst: str
    via: str | None = None


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
    netns: str | None = None  # the namespace the tap is in (a path); None: hyperd's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attachment:
        """Also reads what an earlier hyperd recorded (fewer fields)."""
        return cls(**{**d, "ports": [Published(**p) for p in d.get("ports", [])],
                      "routes": [Route(**r) for r in d.get("routes", [])]})


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
