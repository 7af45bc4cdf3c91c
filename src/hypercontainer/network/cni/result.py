"""A plugin's (a network's) ADD result, parsed: interfaces, IPs, routes, DNS. The JSON exactly as the plugin wrote
it stays in `raw`: it is what the next plugin gets as `prevResult` and what the cache keeps for DEL and CHECK.

Shapes: 0.3.0 and later (`interfaces`, `ips` with `interface` indexes, `routes`, `dns`; 0.3.x/0.4.0 also carry a
`version` per IP, dropped in 1.0.0), and 0.1.0/0.2.0 (`ip4`/`ip6`, each with `ip`, `gateway` and `routes`), read
into the same fields."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError


class ResultError(ConfigError):
    """A result that is not what the spec describes."""


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the namespace path for interfaces inside the container; "" for the host's
    mtu: int | None = None


@dataclass(frozen=True)
class IPConfig:
    address: str  # CIDR: "10.66.0.2/16"
    gateway: str | None = None
    interface: int | None = None  # index into Result.interfaces

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, doc: Any, plugin: str = "plugin") -> Result:
        """ResultError naming `plugin` when the JSON is not a result."""
        def bad(why: str) -> ResultError:
            return ResultError(f"CNI result of {plugin}: {why}")

        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        try:
            version = str(doc.get("cniVersion", ""))
            if "ip4" in doc or "ip6" in doc:  # 0.1.0 / 0.2.0
                ips, routes = [], []
                for key in ("ip4", "ip6"):
                    block = doc.get(key)
                    if block:
                        ips.append(IPConfig(_cidr(block["ip"]), block.get("gateway") or None))
                        routes += [Route(_cidr(r["dst"]), r.get("gw") or None) for r in block.get("routes") or ()]
                return cls(version, (), tuple(ips), tuple(routes), _dns(doc.get("dns")), dict(doc))
            interfaces = tuple(Interface(str(i["name"]), str(i.get("mac") or ""), str(i.get("sandbox") or ""),
                                         int(i["mtu"]) if i.get("mtu") else None)
                               for i in doc.get("interfaces") or ())
            ips = []
            for ip in doc.get("ips") or ():
                index = ip.get("interface")
                if index is not None and not (isinstance(index, int) and 0 <= index < len(interfaces)):
                    raise bad(f"ip {ip.get('address')} names interface {index}, which is not in the result")
                ips.append(IPConfig(_cidr(ip["address"]), ip.get("gateway") or None, index))
            routes = [Route(_cidr(r["dst"]), r.get("gw") or None) for r in doc.get("routes") or ()]
            return cls(version, interfaces, tuple(ips), tuple(routes), _dns(doc.get("dns")), dict(doc))
        except ResultError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise bad(f"malformed ({type(e).__name__}: {e})") from None

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)

    def sandbox_interface(self, ifname: str) -> int | None:
        """The index of the container's interface `ifname` (one with a sandbox)."""
        for i, iface in enumerate(self.interfaces):
            if iface.name == ifname and iface.sandbox:
                return i
        return None

    def addresses(self, ifname: str | None = None) -> list[IPConfig]:
        """The IPs of the container's interface `ifname` (IPv4 first); all the result's IPs that belong to a
        container interface (or name none, as IPAM results and 0.2.0 results do) when `ifname` is None."""
        if ifname is not None:
            index = self.sandbox_interface(ifname)
            picked = [ip for ip in self.ips if ip.interface is not None and ip.interface == index] \
                if index is not None else []
            if not picked and not self.interfaces:  # 0.2.0 or an IPAM-only result: the IPs are the container's
                picked = list(self.ips)
        else:
            picked = [ip for ip in self.ips
                      if ip.interface is None or self.interfaces[ip.interface].sandbox]
        return sorted(picked, key=lambda ip: ip.version)

    def pod_ips(self, ifname: str = "eth0") -> list[str]:
        """The pod's addresses without prefix, IPv4 first (CRI's PodSandboxStatus.network.ip, additional_ips)."""
        return [ip.ip for ip in self.addresses(ifname)]

    def gateway(self, version: int = 4) -> str | None:
        return next((ip.gateway for ip in self.ips if ip.gateway and ip.version == version), None)


def _cidr(value: Any) -> str:
    """A CIDR, normalised for the address's own text ("10.66.0.2/16" stays; host bits are kept)."""
    iface = ipaddress.ip_interface(str(value))
    return f"{iface.ip}/{iface.network.prefixlen}"


def _dns(doc: Any) -> DNS:
    if not isinstance(doc, Mapping):
        return DNS()
    return DNS(tuple(map(str, doc.get("nameservers") or ())), str(doc.get("domain") or ""),
               tuple(map(str, doc.get("search") or ())), tuple(map(str, doc.get("options") or ())))

