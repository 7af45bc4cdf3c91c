"""The sandbox network step: what RunPodSandbox asks of a network before the VM boots, and Stop/RemovePodSandbox
hand back. For now sandboxes get no network (loopback only); the CNI step (network/cni) will implement the same
interface: ADD into a network namespace it makes, which the pod's VM then joins (pod spec `network: {namespace}`),
DEL at stop and remove (after a hyperd restart too: its state is kept in the sandbox's record)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Readiness:
    """The runtime's NetworkReady condition."""

    ready: bool
    reason: str = ""
    message: str = ""


@dataclass
class SandboxNetwork:
    """What a set-up gave a sandbox."""

    spec: str | dict[str, str]  # the pod spec's `network`: "none", or {"namespace": PATH} for a VM to join
    ips: list[str] = field(default_factory=list)  # the pod's addresses, the primary first (PodSandboxStatus)
    state: dict[str, Any] = field(default_factory=dict)  # kept in the sandbox's record; given back to teardown()


class NetworkStep(Protocol):
    def readiness(self) -> Readiness: ...

    async def setup(self, sandbox_id: str, config: Any) -> SandboxNetwork:
        """Before the VM: the sandbox's network from its PodSandboxConfig (port mappings, DNS are its to use).
        Raises HCError, having left nothing behind, when it cannot."""
        ...

    async def teardown(self, sandbox_id: str, state: dict[str, Any]) -> None:
        """Releases what setup() made; idempotent (Stop then Remove both call it), also after a restart."""
        ...


class NoNetwork:
    """Loopback only. NetworkReady follows hyperd's own networking (`ready_when`), which CNI will replace."""

    def __init__(self, ready_when: Callable[[], Readiness]) -> None:
        self._ready = ready_when

    def readiness(self) -> Readiness:
        return self._ready()

    async def setup(self, sandbox_id: str, config: Any) -> SandboxNetwork:
        return SandboxNetwork("none")

    async def teardown(self, sandbox_id: str, state: dict[str, Any]) -> None:
        return None
