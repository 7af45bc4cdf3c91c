"""Network `none`: the VM gets no NIC, the guest loopback only. Pool VMs serve these pods (nothing to wire)."""

from __future__ import annotations

from ..spec.pod import PodSpec
from .attachment import Attachment, Mode


class NoneProvider:
    mode: Mode = "none"
    nic = False
    poolable = True
    ready = True

    async def setup(self) -> None:
        pass

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None) -> Attachment | None:
        return None

    def adopt(self, pod_id: str, att: Attachment) -> None:
        pass

    async def detach(self, pod_id: str) -> None:
        pass

    async def reconcile(self, live: set[str]) -> None:
        pass

    async def premake(self, key: str) -> str | None:
        return None

    async def discard(self, tap: str) -> None:
        pass

    def info(self) -> dict[str, str | None]:
        return {}

    async def close(self, remove_rules: bool) -> None:
        pass
