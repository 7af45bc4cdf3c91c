"""Network `user`: QEMU's user-mode stack (no host links, no root-only setup); published ports become QEMU host
forwards, checked free here (QEMU binds them itself). Not poolable: the forwards are fixed when QEMU starts."""

from __future__ import annotations

import asyncio
import ipaddress

from ..errors import InvalidArgument
from ..spec.pod import PodSpec
from . import hostports
from .attachment import Attachment, Mode, Published, mac_for

USER_NET = ipaddress.IPv4Network("10.0.2.0/24")  # QEMU's user-mode defaults
USER_GUEST, USER_GATEWAY, USER_DNS = "10.0.2.15", "10.0.2.2", "10.0.2.3"


class UserProvider:
    mode: Mode = "user"
    nic = True
    poolable = False
    ready = True

    def __init__(self) -> None:
        self.pods: dict[str, Attachment] = {}

    async def setup(self) -> None:
        pass

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None) -> Attachment | None:
        if tap:
            raise InvalidArgument("user mode takes no tap made in advance")
        ports = [Published(p.host_ip, await asyncio.to_thread(hostports.check_free, p.host_ip, p.host_port,
                                                               p.protocol), p.container_port, p.protocol)
                 for p in spec.ports]
        att = Attachment("user", mac_for(ipaddress.IPv4Address(USER_GUEST)), USER_GUEST, USER_NET.prefixlen,
                         USER_GATEWAY, [USER_DNS], ports=ports)
        self.pods[pod_id] = att
        return att

    def adopt(self, pod_id: str, att: Attachment) -> None:
        self.pods[pod_id] = att  # QEMU holds its forwarded ports itself

    async def detach(self, pod_id: str) -> None:
        self.pods.pop(pod_id, None)

    async def reconcile(self, live: set[str]) -> None:
        for pod_id in set(self.pods) - live:
            del self.pods[pod_id]

    async def premake(self, key: str) -> str | None:
        raise InvalidArgument("user mode cannot serve pods from VMs made in advance")

    async def discard(self, tap: str) -> None:
        pass

    def info(self) -> dict[str, str | None]:
        return {}

    async def close(self, remove_rules: bool) -> None:
        self.pods.clear()
