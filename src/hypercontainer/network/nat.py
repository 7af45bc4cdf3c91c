"""NAT through nftables: hyperd's own table, rendered whole from the live pods and swapped in atomically.

Egress: the subnet is masqueraded behind the host. Published ports: DNAT to the pod for packets addressed to a
local address (from outside in prerouting, from this host in output; from 127.0.0.1 the bridge needs
route_localnet and the source is masqueraded). Re-rendering the whole table makes every change, and the
reconciliation after a crash, one idempotent step.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import HCError

TABLE = "hypercontainer"


@dataclass(frozen=True)
class Forward:
    host_ip: str  # 0.0.0.0: every local address
    host_port: int
    protocol: str
    guest_ip: str
    guest_port: int


def ruleset(bridge: str, subnet: str, forwards: Iterable[Forward]) -> str:
    publish = []
    for f in forwards:
        match = "" if f.host_ip == "0.0.0.0" else f"ip daddr {f.host_ip} "
        publish.append(f"    {match}{f.protocol} dport {f.host_port} dnat to {f.guest_ip}:{f.guest_port}")
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
        f"    ip saddr {subnet} ip daddr != {subnet} masquerade",
        f'    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade',
        f'    oifname "{bridge}" ip saddr {subnet} ct status dnat masquerade',
        "  }",
        "}",
        "",
    ])


async def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if not nft:
        raise HCError("nftables is not installed (Debian package nftables; make demo installs it)")
    proc = await asyncio.create_subprocess_exec(nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(script.encode())
    if proc.returncode:
        raise HCError(f"nft failed: {err.decode(errors='replace').strip()[-500:]}")


async def apply(bridge: str, subnet: str, forwards: Iterable[Forward]) -> None:
    await _nft(ruleset(bridge, subnet, forwards))


async def remove() -> None:
    await _nft(f"table ip {TABLE}\ndelete table ip {TABLE}\n")


async def rules() -> str:
    """The table as nft lists it (tests and `hyperctl info --debug` read it)."""
    proc = await asyncio.create_subprocess_exec("nft", "list", "table", "ip", TABLE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return out.decode() if proc.returncode == 0 else ""
