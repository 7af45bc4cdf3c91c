"""The pods' networks: hyperd's default mode (`auto` resolved at start) and, per pod, the provider its spec asks for
(provider.py: the interface, and which starts can serve which providers' pods). The namespace mode (netns_mode.py)
is per pod only, never hyperd's default.

Callers hold one `Network`; it selects the provider by mode and remembers which provider attached each pod."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import Forbidden, HCError, InvalidArgument
from ..spec.pod import PodSpec
from .attachment import FALLBACK_DNS, Attachment, Mode, Published, Route, host_nameservers, mac_for
from .bridge_mode import BridgeProvider, subnet_of
from .ipam import Leases
from .links import Bridge
from .netns_mode import NamespaceProvider
from .none_mode import NoneProvider
from .provider import Provider
from .user_mode import USER_DNS, USER_GATEWAY, USER_GUEST, USER_NET, UserProvider

__all__ = ["DEFAULT_BRIDGE", "DEFAULT_SUBNET", "FALLBACK_DNS", "USER_DNS", "USER_GATEWAY", "USER_GUEST", "USER_NET",
           "Attachment", "Mode", "Network", "Published", "Route", "host_nameservers", "mac_for"]

log = logging.getLogger(__name__)
DEFAULT_BRIDGE = "hyper0"
DEFAULT_SUBNET = "10.77.0.0/16"  # not docker's 172.17/16, podman's 10.88/16 or the usual Kubernetes ranges


class Network:
    def __init__(self, mode: str, db: Path, bridge: str = DEFAULT_BRIDGE, subnet: str = DEFAULT_SUBNET) -> None:
        if mode not in ("auto", "bridge", "user", "none"):
            raise InvalidArgument(f"unknown network mode {mode!r} (auto, bridge, user or none)")
        self.requested = mode
        self.mode: Mode = "none"
        self.reason = ""
        self.bridged = BridgeProvider(db, Bridge(bridge, subnet_of(subnet)))
        self.namespaced = NamespaceProvider(db)  # per pod only (a spec's `network: {namespace: PATH}`)
        self.providers: dict[str, Provider] = {"bridge": self.bridged, "user": UserProvider(), "none": NoneProvider(),
                                               "namespace": self.namespaced}
        self._owner: dict[str, Provider] = {}  # pod id -> the provider that attached (or adopted) it

    @property
    def bridge(self) -> Bridge:
        return self.bridged.bridge

    @property
    def leases(self) -> Leases:
        return self.bridged.leases

    @property
    def default(self) -> Provider:
        """The provider of pods whose spec says `default` (and of the pool's VMs); never the namespace mode's."""
        return self.providers[self.mode]

    def provider(self, mode: str) -> Provider:
        try:
            return self.providers[mode]
        except KeyError:
            raise InvalidArgument(f"unknown network mode {mode!r}") from None

    # ---- daemon start ------------------------------------------------------------------------------------
    async def setup(self) -> None:
        """Resolves `auto`: bridge where this process can create links and nftables is there, else user mode."""
        if self.requested in ("user", "none"):
            self.mode, self.reason = "user" if self.requested == "user" else "none", "chosen by --network"
            await self.default.setup()
            return
        try:
            await self.bridged.setup()
        except (HCError, OSError) as e:
            msg = e.message if isinstance(e, HCError) else str(e)
            if self.requested == "bridge":
                raise HCError(f"bridge networking failed: {msg}") from None
            self.mode, self.reason = "user", f"bridge unavailable ({msg}); QEMU user mode"
            log.warning("network: %s", self.reason)
            await self.default.setup()
            return
        self.mode, self.reason = "bridge", f"bridge {self.bridge.name} {self.bridge.subnet}"
        self.namespaced.protect("/proc/self/ns/net", "hyperd's own network namespace (where its bridge is)")

    async def reconcile(self, live: set[str]) -> None:
        """After the pods an earlier hyperd left were taken over: what belongs to no live pod goes (taps, leases,
        NAT and anti-spoofing rules; taps and tc filters in the namespaces of namespace pods)."""
        for pod_id in set(self._owner) - live:
            del self._owner[pod_id]
        for p in self.providers.values():
            await p.reconcile(live)

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "bridge": None, "subnet": None, "gateway": None,
                **self.default.info()}

    # ---- pods --------------------------------------------------------------------------------------------
    def mode_for(self, spec: PodSpec) -> Mode:
        """The pod's mode; InvalidArgument where its provider is not usable here."""
        provider = self.provider(self.mode if spec.network_mode == "default" else spec.network_mode)
        if not provider.ready:  # the namespace provider probes the kernel (tun, tc) the first time it is asked
            why = self.namespaced.reason if provider is self.namespaced else self.reason
            raise InvalidArgument(f"{provider.mode} networking is not available: {why or 'hyperd runs without it'}")
        return provider.mode

    def provider_for(self, spec: PodSpec) -> Provider:
        return self.provider(self.mode_for(spec))

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None,
                     owner: str | None = None) -> Attachment | None:
        """The pod's network, set up before its VM starts; on failure nothing is left. `tap`: one the provider made
        in advance (a pool VM's), taken over instead of a new one. `owner`: the pod's tenant (None: the
        administrator): a tenant's pod joins a network of its own (bridge_mode.py), or none; QEMU's user mode
        (which reaches the host's loopback) and host network namespaces are not for tenants."""
        provider = self.provider_for(spec)
        if owner is not None and provider.mode in ("user", "namespace"):
            raise Forbidden(f"{provider.mode} networking is not for tenants' pods: they need hyperd's bridge "
                            "networking (their own network) or none")
        if provider is self.bridged:
            att = await self.bridged.attach(pod_id, spec, tap, owner)
        else:
            att = await provider.attach(pod_id, spec, tap)
        self._owner[pod_id] = provider
        return att

    def adopt(self, pod_id: str, saved: dict[str, Any]) -> Attachment:
        """A pod taken over from an earlier hyperd: its attachment as recorded, back with the provider that made it
        (its host ports reserved again)."""
        att = Attachment.from_dict(saved)
        provider = self.provider(att.mode)
        provider.adopt(pod_id, att)
        self._owner[pod_id] = provider
        return att

    async def detach(self, pod_id: str) -> None:
        """Idempotent. A pod no provider is known to hold (a failed start, a crashed hyperd's) is detached from
        each: whatever it may have left (a lease) goes."""
        owner = self._owner.pop(pod_id, None)
        for p in [owner] if owner else self.providers.values():
            await p.detach(pod_id)

    async def close(self, remove_rules: bool) -> None:
        for p in self.providers.values():
            await p.close(remove_rules)
