"""hyperd's nftables: two tables of its own, rendered whole from the live pods and swapped in atomically (one
`nft -f` transaction), so every change, and the sweep after a crash, is one idempotent step.

`table ip hypercontainer` (NAT, the host's input, forwarding between networks):
  hyperd's bridge and every named network's (networks.py: a tenant's) are rendered alike. Egress: each subnet is
  masqueraded behind the host. Published ports: DNAT to the pod for packets addressed to
  a local address (from outside in prerouting, from this host in output; from 127.0.0.1 the bridge needs
  route_localnet and the source is masqueraded). Input: what arrives from the bridge for the host itself is
  dropped except replies (ct state established,related) and DNS to the resolvers hyperd gave the pods, where one
  of them is a host address; published ports are DNATed before input and never reach it. Forward: nothing from
  one of the bridges goes into another (another tenant's pods, the administrator's) unless it came through a
  published port (ct status dnat; masqueraded then, so the pod sees the bridge's gateway, not the other pod).

`table bridge hypercontainer` (anti-spoofing, on each tap's ingress into the bridge):
  a pod's frames must come from its own MAC; it may send ARP for its own MAC and address and IPv4 from its own
  address, nothing else (no IPv6, no VLAN tags, no other ethertype). A tap of ours (name `hc*`) that belongs to
  no pod (a pool VM not taken yet, a leftover) sends nothing. br_netfilter plays no part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import HCError
from .links import TAP_PREFIX

TABLE = "hypercontainer"
TAP_GLOB = TAP_PREFIX + "*"  # pods' taps and the premade ones (links.py, bridge_mode.py)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class Forward:
    host_ip: str  # 0.0.0.0: every local address
    host_port: int
    protocol: str
    guest_ip: str
    guest_port: int


@dataclass(frozen=True)
class Port:
    """A pod's tap on the bridge and the only MAC and IPv4 address it may send from."""

    tap: str
    mac: str
    ip: str

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.ip)
        except ValueError:
            raise HCError(f"invalid pod address {self.ip!r}") from None
        if not _IFNAME.match(self.tap) or not _MAC.match(self.mac.lower()):
            raise HCError(f"invalid tap {self.tap!r} or MAC {self.mac!r}")


def ip_table(bridges: Sequence[tuple[str, str]], forwards: Iterable[Forward], dns: Iterable[str] = ()) -> str:
    """`bridges`: (name, subnet) of hyperd's bridge and of each named network's."""
    publish = []
    for f in forwards:
        match = "" if f.host_ip == "0.0.0.0" else f"ip daddr {f.host_ip} "
        publish.append(f"    {match}{f.protocol} dport {f.host_port} dnat to {f.guest_ip}:{f.guest_port}")
    resolvers = sorted(set(dns))
    serve = [f"    ip daddr {{ {', '.join(resolvers)} }} meta l4proto {{ tcp, udp }} th dport 53 accept"] \
        if resolvers else []
    names = ", ".join(f'"{b}"' for b, _ in bridges)
    subnets = ", ".join(s for _, s in bridges)
    nat, isolate = [], []
    for bridge, subnet in bridges:
        nat += [f"    ip saddr {subnet} ip daddr != {subnet} masquerade",
                f'    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade',
                f'    oifname "{bridge}" ip saddr {{ {subnets} }} ct status dnat masquerade']
        isolate.append(f'    iifname "{bridge}" oifname != "{bridge}" oifname {{ {names} }} drop')
    return "\n".join([
        f"table ip {TABLE}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  chain publish {", *publish, "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",
        "    fib daddr type local jump publish",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump publish",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority 100; policy accept;",
        *nat,
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    iifname {{ {names} }} jump from_pods",
        "  }",
        "  chain from_pods {",
        "    ct state established,related accept",
        *serve,
        "    drop",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        "    ct status dnat accept",
        *isolate,
        "  }",
        "}",
        "",
    ])


def bridge_table(ports: Iterable[Port]) -> str:
    ports = sorted(set(ports), key=lambda p: p.tap)
    chains, entries = [], []
    for p in ports:
        chain = "pod_" + p.tap.replace("-", "_").replace(".", "_")
        mac = p.mac.lower()
        entries.append(f'"{p.tap}" : jump {chain}')
        chains += [
            f"  chain {chain} {{",
            f"    ether saddr != {mac} drop",
            f"    arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {p.ip} accept",
            f"    ether type ip ip saddr {p.ip} accept",
            "    drop",
            "  }",
        ]
    return "\n".join([
        f"table bridge {TABLE}",
        f"delete table bridge {TABLE}",
        f"table bridge {TABLE} {{",
        "  chain taps {",
        "    type filter hook prerouting priority filter; policy accept;",
        *([f"    iifname vmap {{ {', '.join(entries)} }}"] if entries else []),
        f'    iifname "{TAP_GLOB}" drop',
        "  }",
        *chains,
        "}",
        "",
    ])


def _nft_binary() -> str:
    nft = shutil.which("nft")
    if not nft:
        raise HCError("nftables is not installed (Debian package nftables; make demo installs it)")
    return nft


async def _nft(script: str) -> None:
    proc = await asyncio.create_subprocess_exec(_nft_binary(), "-f", "-", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(script.encode())
    if proc.returncode:
        msg = err.decode(errors="replace").strip()[-500:]
        if "not supported" in msg.lower():
            msg += " (hyperd needs nftables' ip family with nat and fib, and its bridge family against spoofing)"
        raise HCError(f"nft failed: {msg}")


async def apply(bridges: Sequence[tuple[str, str]], forwards: Iterable[Forward], ports: Iterable[Port],
                dns: Iterable[str] = ()) -> None:
    """Both tables in one transaction: nothing changes if any of it fails."""
    await _nft(ip_table(bridges, forwards, dns) + bridge_table(ports))


async def present() -> bool:
    """Whether both tables are there (left by an earlier hyperd whose pods are being taken over)."""
    if not shutil.which("nft"):
        return False
    for family in ("ip", "bridge"):
        proc = await asyncio.create_subprocess_exec(_nft_binary(), "list", "table", family, TABLE,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait():
            return False
    return True


async def remove() -> None:
    await _nft(f"table ip {TABLE}\ndelete table ip {TABLE}\ntable bridge {TABLE}\ndelete table bridge {TABLE}\n")


async def rules(family: str = "ip") -> str:
    """A table as nft lists it (tests and `hyperctl info --debug` read it)."""
    proc = await asyncio.create_subprocess_exec(_nft_binary(), "list", "table", family, TABLE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return out.decode() if proc.returncode == 0 else ""
