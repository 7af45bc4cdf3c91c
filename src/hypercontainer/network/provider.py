"""The one interface every network mode implements: attach a pod before its VM starts, detach it when it goes,
adopt it after a hyperd restart, reconcile what a crashed hyperd left, and (where it can) pre-make a NIC backend for
a VM made before its pod is known.

    bridge (bridge_mode.py): a tap per pod on hyperd's bridge, a leased address, NAT and published ports
    user   (user_mode.py):   QEMU's user-mode stack; published ports become QEMU host forwards
    none   (none_mode.py):   loopback only
    namespace (netns_mode.py): per pod (`network: {namespace: PATH}`), never hyperd's default: the VM joins a
                             network namespace the engine made: a tap inside it per interface, tc-redirected to
                             that interface both ways; the guest takes its MAC, addresses, routes and MTU

Which starts can serve a pod whose network is an existing namespace. QEMU's microvm machine has no hotplug, so a
VM's NIC backend is fixed when its QEMU starts:
  - a template clone is a fresh QEMU (restoring a snapshot): it gets its NIC backend, the tap's fd, at start. It
    serves a namespace pod as long as the tap is made in that namespace (and opened there) before QEMU starts,
    which attach() does: clones can serve such pods;
  - a pool VM's QEMU started before its pod was known, its NIC on a backend made then (a tap on hyperd's bridge):
    it cannot be moved into a namespace nobody had made yet. Pool VMs cannot serve pods whose network is an
    existing namespace: that provider says `poolable = False`, and the pool (Pool.matches/take) asks it.
User mode is not poolable either (its port forwards are fixed when QEMU starts).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..spec.pod import PodSpec
from .attachment import Attachment, Mode


@runtime_checkable
class Provider(Protocol):
    """A way to wire a pod's VM to a network. attach/detach are idempotent per pod and leave nothing on failure."""

    mode: Mode
    nic: bool  # the VM gets a virtio-net device (templates are kept with and without one)
    poolable: bool  # a VM started before its pod is known (the pool's) can serve this provider's pods
    ready: bool  # set up and usable (setup() succeeded, or nothing to set up)

    async def setup(self) -> None:
        """At hyperd's start: what all of this provider's pods share (a bridge, its rules); HCError if it cannot."""

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None) -> Attachment | None:
        """The pod's network, before its VM starts (None: the VM gets no NIC). `tap`: one premake() made (the pool
        VM the pod takes), adopted instead of a new one."""

    def adopt(self, pod_id: str, att: Attachment) -> None:
        """A pod a previous hyperd attached and this one takes over: what it holds is its own again."""

    async def detach(self, pod_id: str) -> None:
        """Everything the pod's attachment holds goes; a no-op for a pod it does not know."""

    async def reconcile(self, live: set[str]) -> None:
        """After the live pods were adopted: what belongs to none of them (nor to a spare) goes."""

    async def premake(self, key: str) -> str | None:
        """A NIC backend for a VM made before its pod is known, only where `poolable`: a tap, or None where the
        VM needs no host link. attach(tap=) takes it over; discard() removes one no pod took."""

    async def discard(self, tap: str) -> None:
        """A premade tap no pod took."""

    def info(self) -> dict[str, str | None]:
        """What `hyperctl info` shows besides the mode."""

    async def close(self, remove_rules: bool) -> None:
        """hyperd stops; host-wide rules go only with `remove_rules` (pods left running keep theirs)."""
