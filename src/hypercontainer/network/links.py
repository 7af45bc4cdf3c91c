"""Links through netlink (pyroute2): the pod bridge and one persistent tap per pod, enslaved to it.

pyroute2 is imported when first used (~0.1 s): runv's shims and pods without network never pay for it."""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

from ..errors import HCError

TAP_PREFIX = "hc"


class LinkError(HCError):
    def __init__(self, message: str, errno_: int = 0) -> None:
        super().__init__(message)
        self.errno = errno_  # the netlink error, when there was one


def tap_name(pod_id: str) -> str:
    return TAP_PREFIX + pod_id[:12]  # 14 characters: within IFNAMSIZ


def _sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys/net") / path
    if p.read_text().strip() != value:
        p.write_text(value)


class Bridge:
    """A Linux bridge with the subnet's first address as the pods' gateway."""

    def __init__(self, name: str, subnet: ipaddress.IPv4Network) -> None:
        self.name, self.subnet = name, subnet
        self.gateway = next(subnet.hosts())

    def ensure(self) -> None:
        """Creates the bridge (or checks the one that exists), gives it the gateway address, brings it up, and
        turns on forwarding (egress NAT) and route_localnet on it (published ports reached from 127.0.0.1)."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ip:
                found = ip.link_lookup(ifname=self.name)
                if not found:
                    ip.link("add", ifname=self.name, kind="bridge")
                    found = ip.link_lookup(ifname=self.name)
                index = found[0]
                kind = ip.get_links(index)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                if kind != "bridge":
                    raise LinkError(f"{self.name} exists and is not a bridge ({kind}); choose another --bridge")
                have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ip.get_addr(index=index, family=2)}
                if (str(self.gateway), self.subnet.prefixlen) not in have:
                    ip.addr("add", index=index, address=str(self.gateway), prefixlen=self.subnet.prefixlen)
                ip.link("set", index=index, state="up")
        except NetlinkError as e:
            raise LinkError(f"cannot set up bridge {self.name}: {e}", e.code) from None
        _sysctl("ipv4/ip_forward", "1")
        _sysctl(f"ipv4/conf/{self.name}/route_localnet", "1")

    def delete(self) -> None:
        """Removes the bridge (a named network's, once no pod is on it); not there is fine."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ip:
            try:
                ip.link("del", ifname=self.name)
            except NetlinkError as e:
                if e.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                    raise LinkError(f"cannot remove bridge {self.name}: {e}", e.code) from None

    def add_tap(self, name: str) -> None:
        """A persistent tap on the bridge, up; QEMU opens it by name."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ip:
                if ip.link_lookup(ifname=name):
                    ip.link("del", ifname=name)  # a leftover of this pod's earlier life
                ip.link("add", ifname=name, kind="tuntap", mode="tap")
                index = ip.link_lookup(ifname=name)[0]
                ip.link("set", index=index, master=ip.link_lookup(ifname=self.name)[0], state="up")
        except (NetlinkError, IndexError) as e:
            self.remove_tap(name)
            raise LinkError(f"cannot create tap {name} on {self.name}: {e}") from None

    @staticmethod
    def remove_tap(name: str) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ip:
            try:
                ip.link("del", ifname=name)
            except NetlinkError as e:
                if e.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                    raise

    @staticmethod
    def taps() -> list[str]:
        """Our taps (tun devices with our name prefix), on the bridge or not."""
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            links = ip.get_links()
        names = [link.get_attr("IFLA_IFNAME") for link in links
                 if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun"]
        return [n for n in names if n and n.startswith(TAP_PREFIX)]
