"""What a tenant's pod may be: the host's resources are the administrator's, and its quotas hold.

Refused to tenants (403): host-path and block volumes (host files), `network: {namespace: PATH}` (a host network
namespace), privileged containers and the capabilities that amount to it in the guest (ALL, SYS_MODULE, SYS_RAWIO),
host ports below 1024. The quotas count every pod of the tenant, whatever its state, until it is removed; a pod
that would pass one is refused before anything of it exists.
"""

from __future__ import annotations

from typing import Any

from ..errors import Forbidden
from ..image.store import Image
from ..pod.manager import PodManager
from ..spec.pod import ContainerSpec, PodSpec
from .tenant_images import TenantImages
from .tenants import Tenant

GUEST_KERNEL_CAPS = ("ALL", "SYS_MODULE", "SYS_RAWIO")  # a container with these owns its VM's kernel and devices
MIN_HOST_PORT = 1024


def usage(pods: list[dict[str, Any]]) -> dict[str, int]:
    """What pods (their infos) hold against the quotas."""
    return {"pods": len(pods), "vcpus": sum(int(p["vm"]["vcpu"]) for p in pods),
            "memory": sum(int(p["vm"]["memory_mib"]) for p in pods)}


class TenantAdmission:
    """The manager's Admission for one tenant's request."""

    def __init__(self, tenant: Tenant, manager: PodManager, images: TenantImages) -> None:
        self.tenant, self.manager, self.images = tenant, manager, images

    def admit(self, spec: PodSpec) -> None:
        for v in spec.volumes:
            if v.host_path or v.block:
                raise Forbidden(f"volume {v.name}: host paths are for the administrator")
        if spec.network_namespace:
            raise Forbidden("network namespaces (--net ns:PATH) are for the administrator")
        for p in spec.ports:
            if 0 < p.host_port < MIN_HOST_PORT:
                raise Forbidden(f"host port {p.host_port}: ports below {MIN_HOST_PORT} are for the administrator")
        for c in spec.containers:
            self.admit_container(c)
        self.check_quota(spec.resources.vcpu, spec.resources.memory)

    def admit_container(self, spec: ContainerSpec) -> None:
        if spec.privileged:
            raise Forbidden(f"container {spec.name}: privileged containers are for the administrator")
        caps = sorted(set(spec.capabilities.add) & set(GUEST_KERNEL_CAPS))
        if caps:
            raise Forbidden(f"container {spec.name}: capabilities {', '.join(caps)} are for the administrator")

    def check_quota(self, vcpus: int, memory: int) -> None:
        q, used = self.tenant.quotas, usage(self.manager.list(self.tenant.name))
        for what, asked, limit in (("pods", 1, q.max_pods), ("vcpus", vcpus, q.max_vcpus),
                                   ("memory", memory, q.max_memory)):
            if used[what] + asked > limit:
                unit = " MiB" if what == "memory" else ""
                raise Forbidden(f"tenant {self.tenant.name}: the {what} quota would be exceeded: {used[what]}{unit} "
                                f"in use + {asked}{unit} asked > {limit}{unit} allowed")

    def image(self, ref: str) -> Image:
        return self.images.get(ref)
