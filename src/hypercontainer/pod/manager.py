"""The pod manager: the one entry point the API layer calls. It owns every pod of this daemon."""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import logging
import secrets
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from .. import procs
from ..errors import Conflict, InvalidArgument, NotFound
from ..image.store import Image, ImageStore
from ..network.bridge_mode import BridgeProvider
from ..network.manager import Network
from ..protocol.codec import Fields
from ..spec.errors import invalid_spec
from ..spec.kube import from_kube, is_kube_pod
from ..spec.pod import ContainerSpec, PodSpec, Volume
from ..storage.mount import detach_all_under
from ..storage.named_volumes import ADMIN as ADMIN_OWNER
from ..storage.named_volumes import NamedVolume, NamedVolumes
from ..storage.volumes import check_block_file, check_host_dir, remove_tree
from .container import Container
from .events import EventLog
from .pod import GuestAssets, Pod
from .pool import Pool
from .records import PodInfo, PodRecords
from .states import FINAL, PodState
from .templates import Templates

log = logging.getLogger(__name__)
LIVE = (PodState.RUNNING.value, PodState.PAUSED.value)  # the states a restarted hyperd takes pods over in


def owner(info: PodInfo | Pod) -> str | None:
    """The tenant a pod belongs to (its meta's "tenant"); None: the administrator's."""
    meta = info.meta if isinstance(info, Pod) else info.get("meta")
    tenant = (meta or {}).get("tenant")
    return str(tenant) if tenant is not None else None


class Admission(Protocol):
    """How a pod made for a tenant is checked and given its images (daemon/admission.py): each method raises to
    refuse, before anything of the pod exists."""

    def admit(self, spec: PodSpec) -> None: ...
    def admit_container(self, spec: ContainerSpec) -> None: ...
    def image(self, ref: str) -> Image: ...


class PodManager:
    def __init__(self, images: ImageStore, records: PodRecords, poddir: Path, rundir: Path,
                 assets: GuestAssets, network: Network | None = None, templates: Templates | None = None,
                 boot: str = "cold", pool: Pool | None = None, storage_size: int = 0) -> None:
        self.images, self.records = images, records
        self.network = network
        self.templates = templates
        self.boot = boot  # the daemon's boot policy: cold | template | pool
        self.pool = pool
        self.storage_size = storage_size  # each pod's disk for its writable layers, bytes; 0: no limit
        self.poddir, self.rundir, self.assets = poddir, rundir, assets
        self.pods: dict[str, Pod] = {}
        self._starts: dict[str, asyncio.Task[None]] = {}
        self._stale: dict[str, PodInfo] = {}  # records of pods from an earlier run of the daemon
        self._starting_again: set[str] = set()  # pods start_again() is booting anew
        self.recent_boots: collections.deque[dict[str, float]] = collections.deque(maxlen=10)  # newest last
        # Live restore: pods outlive hyperd and the next one takes them over (hyperd sets it; on by default).
        # Without it, hyperd stops its pods when it stops, and after a crash releases what the old pods left.
        self.live_restore = False
        self.events = EventLog()
        self.volumes: NamedVolumes | None = None  # named volumes (storage/named_volumes.py), where hyperd keeps them

    # ---- lookup ------------------------------------------------------------------------------------------
    def get(self, ref: str) -> Pod:
        if ref in self.pods:
            return self.pods[ref]
        by_name = [p for p in self.pods.values() if p.name == ref]
        if by_name:
            return by_name[0]
        matches = [p for p in self.pods.values() if p.id.startswith(ref)] if len(ref) >= 3 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"pod id prefix {ref} is ambiguous")
        raise NotFound(f"no such pod: {ref}")

    def resolve(self, ref: str, tenant: str | None = None) -> str:
        """The id of the pod (live, or left by an earlier hyperd) `ref` names: its id, its name, or a prefix of 3 or
        more of its id, among the pods `tenant` owns. None: the administrator, who sees every pod; a name is looked
        up among the administrator's own pods first, then everyone's. Another tenant's pod is not found, with the
        same error as a pod that does not exist."""
        seen = [(p.id, p.name, owner(p)) for p in self.pods.values()]
        seen += [(i, r["name"], owner(r)) for i, r in self._stale.items()]
        if tenant is not None:
            seen = [s for s in seen if s[2] == tenant]
        if any(i == ref for i, _, _ in seen):
            return ref
        named = [s for s in seen if s[1] == ref]
        own = [s for s in named if s[2] is None] if tenant is None else named
        if len(own or named) == 1:
            return (own or named)[0][0]
        if len(named) > 1:
            raise InvalidArgument(f"the name {ref} is used by pods of several tenants; give the pod's id")
        matches = [i for i, _, _ in seen if i.startswith(ref)] if len(ref) >= 3 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"pod id prefix {ref} is ambiguous")
        raise NotFound(f"no such pod: {ref}")

    def log_source(self, ref: str, container: str | None) -> tuple[Path, asyncio.Event | None]:
        """The container's log file and an event set once no more output will come (None: never more)."""
        try:
            pod = self.get(ref)
        except NotFound:
            stale = [r for i, r in self._stale.items() if r["name"] == ref or i.startswith(ref)]
            if len(stale) != 1:
                raise
            name = container or stale[0]["containers"][0]["name"]
            return self.poddir / stale[0]["id"] / "logs" / f"{name}.log", None
        c = pod.container(container)
        return c.log_path, c.done

    def info_of(self, pod_id: str) -> PodInfo:
        """The pod's info: live, or as an earlier hyperd recorded it."""
        if pod_id in self.pods:
            return self.pods[pod_id].info()
        if pod_id in self._stale:
            return self._stale[pod_id]
        raise NotFound(f"no such pod: {pod_id}")

    def list(self, tenant: str | None = None) -> list[PodInfo]:
        """Every pod, newest first; with `tenant`, only that tenant's."""
        live = [p.info() for p in self.pods.values()]
        every = [i for i in live + list(self._stale.values()) if tenant is None or owner(i) == tenant]
        return sorted(every, key=lambda i: i["created"], reverse=True)

    # ---- create / start ----------------------------------------------------------------------------------
    def create(self, raw_spec: dict[str, Any], meta: dict[str, Any] | None = None, pod_id: str | None = None,
               admission: Admission | None = None) -> Pod:
        """Validates the spec (ours, or a Kubernetes v1 Pod) and resolves images; creates nothing on disk until
        start. `meta`: kept with the pod and its record for the caller (the CRI's ids, labels, annotations; a
        tenant's name as "tenant": names are unique per tenant); `pod_id`: the id to give it (64 hex digits: the
        CRI's sandbox id, known before the pod is made); `admission`: a tenant's checks and images."""
        if is_kube_pod(raw_spec):
            raw_spec, ignored = from_kube(raw_spec)
            if ignored:
                log.info("Kubernetes manifest: ignored %s", ", ".join(ignored))
        try:
            spec = PodSpec.model_validate(raw_spec)
        except ValidationError as e:
            raise invalid_spec(e) from None
        if admission:
            admission.admit(spec)
        spec = self._named_volumes(spec, owner({"meta": meta}))
        for v in spec.volumes:
            if v.host_path:
                check_host_dir(v.name, v.host_path)
            if v.block:
                check_block_file(v.name, v.block)
        if pod_id is not None and (len(pod_id) != 64 or any(ch not in "0123456789abcdef" for ch in pod_id)
                                   or pod_id in self.pods or pod_id in self._stale):
            raise InvalidArgument(f"pod id {pod_id!r} is not 64 hex digits or is in use")
        pod_id = pod_id or secrets.token_hex(32)
        name = spec.name or pod_id[:12]
        tenant = owner({"meta": meta})
        if any(i["name"] == name for i in self.list(tenant) if owner(i) == tenant):
            raise Conflict(f"the name {name} is already in use by another pod; remove it or choose another name")
        containers = []
        for i, cspec in enumerate(spec.containers):
            image = admission.image(cspec.image) if admission else self.images.get(cspec.image)
            containers.append(Container(cspec, image, stream=2 * (i + 1),
                                        log_path=self.poddir / pod_id / "logs" / f"{cspec.name}.log"))
        if self.network:
            self.network.mode_for(spec)  # bridge asked for where there is none: refused now, not at start
        boot = self.boot if spec.boot == "default" else spec.boot
        pod = Pod(pod_id, name, spec, containers, self.poddir / pod_id, self.rundir / pod_id[:16], self.assets,
                  self.network, self.templates, boot, self.pool, self.storage_size)
        pod.meta = dict(meta or {})
        pod.on_change.append(self._persist)
        pod.on_event.append(self._event)
        self.pods[pod_id] = pod
        self._event(pod, "create", {"image": spec.containers[0].image if spec.containers else None})
        return pod

    def _named_volumes(self, spec: PodSpec, tenant: str | None) -> PodSpec:
        """The spec with each named volume's image as its `block` (the owner's volume of that name; a `block` the
        request gave with it is never trusted)."""
        if not any(v.named for v in spec.volumes):
            return spec
        if self.volumes is None:
            raise InvalidArgument("named volumes are not available in this hyperd")
        store = self.volumes
        vols = [v.model_copy(update={"block": str(store.get(tenant or ADMIN_OWNER, v.named).path)}) if v.named else v
                for v in spec.volumes]
        return spec.model_copy(update={"volumes": vols})

    def volumes_in_use(self) -> set[Path]:
        """The images of named (and other block) volumes that pods, running or not, attach."""
        used = {Path(v.block) for p in self.pods.values() for v in p.spec.volumes if v.block}
        for r in self._stale.values():
            for v in (r.get("spec") or {}).get("volumes") or []:
                if isinstance(v, dict) and v.get("block"):
                    used.add(Path(v["block"]))
        return used

    # ---- named networks and volumes: an owner's (a tenant's; None: the administrator's) ------------------
    def _bridged(self) -> BridgeProvider:
        if self.network is None or self.network.mode != "bridge":
            raise InvalidArgument("named networks need hyperd's bridge networking (hyperd --network bridge)")
        return self.network.bridged

    def _volume_store(self) -> NamedVolumes:
        if self.volumes is None:
            raise InvalidArgument("named volumes are not available in this hyperd")
        return self.volumes

    def networks(self, owner: str | None) -> builtins.list[dict[str, Any]]:
        return self._bridged().list_networks(owner)

    async def create_network(self, owner: str | None, name: str) -> dict[str, Any]:
        return await self._bridged().create_network(owner, name)

    async def remove_network(self, owner: str | None, name: str) -> None:
        await self._bridged().remove_network(owner, name)

    def named_volumes(self, owner: str | None) -> builtins.list[NamedVolume]:
        return self._volume_store().all(owner or ADMIN_OWNER)

    def named_volume(self, owner: str | None, name: str) -> NamedVolume:
        return self._volume_store().get(owner or ADMIN_OWNER, name)

    def volume_bytes(self, owner: str) -> int:
        return self._volume_store().used(owner)

    async def create_volume(self, owner: str | None, name: str, size: int) -> NamedVolume:
        return await self._volume_store().create(owner or ADMIN_OWNER, name, size)

    def remove_volume(self, owner: str | None, name: str) -> None:
        """Conflict while a pod (running or not) attaches it."""
        self._volume_store().remove(owner or ADMIN_OWNER, name, self.volumes_in_use())

    async def release_owner(self, owner: str) -> None:
        """A tenant that goes (its pods gone first): its volumes and networks go too."""
        if self.volumes is not None:
            for vol in self.volumes.all(owner):
                self.volumes.remove(owner, vol.name, set())
        if self.network is not None:
            await self.network.bridged.remove_owner(owner)

    def _event(self, pod: Pod, action: str, attrs: dict[str, object]) -> None:
        """An event of `pod`, with its tenant (if it has one): `hyperctl events` of a tenant shows only its own."""
        self.events.record(pod, action, {**attrs, "tenant": owner(pod)})

    def _persist(self, pod: Pod) -> None:
        if pod.state in FINAL and "started" in pod.timings.marks:
            self.recent_boots.append(dict(pod.timings.marks))
        if pod.state in FINAL and pod.spec.auto_remove:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.remove(pod.id, force=True)))
        if pod.id in self.pods:
            self.records.save(pod.id, pod.name, pod.state.value, pod.info())

    def keep_created(self, pod: Pod) -> None:
        """docker create: the pod stays created (no VM, nothing on disk) until start_again(); recorded now, so that
        a later hyperd lists it, still created."""
        self._persist(pod)

    async def start(self, pod: Pod) -> None:
        pod.statedir.mkdir(mode=0o700, exist_ok=True)  # what its guest writes is for hyperd alone
        (pod.statedir / "logs").mkdir(exist_ok=True)
        task = asyncio.ensure_future(pod.start())
        self._starts[pod.id] = task

        def done(_: asyncio.Future[None]) -> None:
            if self._starts.get(pod.id) is task:
                self._starts.pop(pod.id, None)

        task.add_done_callback(done)  # when it ends, not when a caller stops waiting: stop() and remove() cancel it
        await asyncio.shield(task)

    async def start_again(self, pod_id: str, admission: Admission | None = None) -> Pod:
        """docker start: a pod that was created and never started boots now; one that exited or failed (or that
        an earlier hyperd left stopped) boots again from its recorded spec, under the same id and name, with its
        containers' writable layers, logs and volumes as they were. A running or paused pod is left as it is.
        `admission`: a tenant's (its quotas and images, as at create)."""
        pod = self.pods.get(pod_id)
        if pod is not None and pod.state == PodState.CREATED and pod_id not in self._starts:
            await self.start(pod)
            return pod
        if pod is not None and pod.state not in FINAL:
            if pod.state in (PodState.RUNNING, PodState.PAUSED):
                return pod
            raise Conflict(f"pod {pod.name} is {pod.state.value}: wait until it has started or stopped")
        info = pod.info() if pod is not None else self._stale.get(pod_id)
        if info is None:
            raise NotFound(f"no such pod: {pod_id}")
        if pod_id in self._starting_again:
            raise Conflict(f"pod {info['name']} is being started already")
        self._starting_again.add(pod_id)
        try:
            return await self._start_again(pod_id, pod, info, admission)
        finally:
            self._starting_again.discard(pod_id)

    async def _start_again(self, pod_id: str, pod: Pod | None, info: PodInfo, admission: Admission | None) -> Pod:
        spec, meta = dict(info["spec"]), dict(info.get("meta") or {})
        if "cri" in meta:
            raise Conflict(f"pod {info['name']} is the Kubernetes CRI's: the kubelet starts its pods")
        if spec.get("auto_remove") and info["state"] != PodState.CREATED.value:  # create --rm's first start is fine
            raise Conflict(f"pod {info['name']} was run with --rm: it is removed, not started again")
        spec["name"] = info["name"]
        if pod is not None:
            await pod.teardown()  # idempotent: nothing of its last run is left
            self.pods.pop(pod_id, None)
        else:
            self._stale.pop(pod_id, None)
        try:
            new = self.create(spec, meta, pod_id=pod_id, admission=admission)
        except BaseException:  # as it was: the old pod stays, stopped
            if pod is not None:
                self.pods[pod_id] = pod
            else:
                self._stale[pod_id] = info
            raise
        new.created = info["created"]
        if pod is not None:
            pod.on_change.clear()  # the old object is done with: nothing of it is recorded any more
            pod.on_event.clear()
            for old_c, new_c in zip(pod.containers, new.containers, strict=False):
                new_c.restarts = old_c.restarts
        await self.start(new)
        return new

    def rename(self, pod_id: str, name: str) -> str:
        """docker rename: the pod's new name, unique among its owner's pods (as create makes them)."""
        try:
            PodSpec.model_validate({"name": name, "containers": [], "keep_alive": True})
        except ValidationError as e:
            raise invalid_spec(e) from None
        pod = self.pods.get(pod_id)
        info = pod.info() if pod is not None else self._stale.get(pod_id)
        if info is None:
            raise NotFound(f"no such pod: {pod_id}")
        if "cri" in (info.get("meta") or {}):
            raise Conflict(f"pod {info['name']} is the Kubernetes CRI's: its name is the kubelet's")
        tenant = owner(info)
        if any(i["name"] == name and i["id"] != pod_id for i in self.list(tenant) if owner(i) == tenant):
            raise Conflict(f"the name {name} is already in use by another pod; remove it or choose another name")
        old = info["name"]
        if pod is not None:
            pod.name = name
            pod.spec = pod.spec.model_copy(update={"name": name})
            self.records.save(pod.id, pod.name, pod.state.value, pod.info())
            self._event(pod, "rename", {"old_name": old})
        else:
            info["name"] = name
            info["spec"] = {**info["spec"], "name": name}
            self.records.save(pod_id, name, info["state"], info)
        return str(old)

    async def wait(self, pod_id: str) -> int:
        """docker wait: blocks until the pod's first container has exited (or the pod has stopped); its exit
        code."""
        pod = self.pods.get(pod_id)
        if pod is None:
            info = self._stale.get(pod_id)
            if info is None:
                raise NotFound(f"no such pod: {pod_id}")
            first = (info.get("containers") or [{}])[0]
            code = first.get("exit_code", info.get("exit_code"))
            return int(code if code is not None else 255)
        while True:
            c = pod.containers[0] if pod.containers else None
            if c is not None and c.done.is_set():
                return c.exit_code if c.exit_code is not None else 255
            if pod.state in FINAL:
                return pod.exit_code if pod.exit_code is not None else 255
            if c is None:
                await asyncio.sleep(0.2)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.done.wait(), 0.5)

    async def add_container(self, ref: str, raw: dict[str, Any], *, start: bool = True,
                            volumes: builtins.list[dict[str, Any]] | None = None, cri_log: Path | None = None,
                            overrides: Fields | None = None, admission: Admission | None = None) -> str:
        """hyperctl create -c POD: one more container in a running pod. The CRI's CreateContainer also uses
        `start=False` (it stays created until start_container()), `volumes` (pod volumes it brings: its host
        directories), `cri_log` (its output also in the CRI log format there, from its start) and `overrides`
        (protocol fields over those its spec gives: pod.container.with_overrides); `admission`: a tenant's."""
        pod = self.get(ref)
        try:
            cspec = ContainerSpec.model_validate(raw)
            vols = tuple(Volume.model_validate(v) for v in volumes or [])
            dumped = pod.spec.model_dump(mode="json")
            added = [v.model_dump(mode="json") for v in vols]
            PodSpec.model_validate({**dumped, "volumes": [*dumped["volumes"], *added],
                                    "containers": [*dumped["containers"], cspec.model_dump(mode="json")]})
        except ValidationError as e:
            raise invalid_spec(e) from None
        if admission:
            admission.admit_container(cspec)
        for v in vols:
            if v.host_path:
                check_host_dir(v.name, v.host_path)
            if v.block:
                raise InvalidArgument(f"volume {v.name}: a block volume cannot be added to a running pod")
        image = admission.image(cspec.image) if admission else self.images.get(cspec.image)
        c = Container(cspec, image, stream=0, log_path=pod.statedir / "logs" / f"{cspec.name}.log",
                      overrides=dict(overrides or {}), cri_log=cri_log)
        await pod.add_container(c, start=start, volumes=vols)
        return c.name

    async def start_container(self, ref: str, name: str) -> str:
        """Starts a container that add_container(start=False) left created."""
        await self.get(ref).start_created(name)
        return name

    def update_meta(self, pod_id: str, meta: dict[str, Any]) -> None:
        """Replaces what the caller keeps with a pod (create's `meta`), also for a pod an earlier hyperd left
        stopped; persisted at once."""
        if pod_id in self.pods:
            pod = self.pods[pod_id]
            pod.meta = dict(meta)
            self.records.save(pod.id, pod.name, pod.state.value, pod.info())
        elif pod_id in self._stale:
            info = self._stale[pod_id]
            info["meta"] = dict(meta)
            self.records.save(pod_id, info["name"], info["state"], info)
        else:
            raise NotFound(f"no such pod: {pod_id}")

    async def remove_container(self, ref: str, name: str, force: bool = False) -> str:
        """hyperctl rm POD/CONTAINER: one container out of a running pod."""
        await self.get(ref).remove_container(name, force=force)
        return name

    async def stop(self, ref: str, timeout: float = 10.0) -> str:
        pod = self.get(ref)
        start = self._starts.get(pod.id)
        if start:
            start.cancel()
            with contextlib.suppress(BaseException):
                await start
        await pod.graceful_stop(timeout)
        return pod.id

    # ---- remove ------------------------------------------------------------------------------------------
    async def remove(self, ref: str, force: bool = False) -> str:
        if ref in self._stale:
            return self._remove_stale(ref)
        try:
            pod = self.get(ref)
        except NotFound:
            stale = [i for i, r in self._stale.items() if r["name"] == ref or i.startswith(ref)]
            if len(stale) == 1:
                return self._remove_stale(stale[0])
            raise
        if pod.state not in FINAL and pod.state != PodState.CREATED and not force:
            raise Conflict(f"pod {pod.name} is {pod.state.value}: stop it first or use rm -f")
        start = self._starts.get(pod.id)
        if start:
            start.cancel()
            with contextlib.suppress(BaseException):
                await start
        await pod.stop()
        await pod.teardown()
        remove_tree(pod.statedir)
        self.pods.pop(pod.id, None)
        self._event(pod, "destroy", {})
        self.records.delete(pod.id)
        return pod.id

    def _remove_stale(self, pod_id: str) -> str:
        self._cleanup_dirs(pod_id)
        self._stale.pop(pod_id, None)
        self.records.delete(pod_id)
        return pod_id

    def _cleanup_dirs(self, pod_id: str) -> None:
        remove_tree(self.poddir / pod_id)
        remove_tree(self.rundir / pod_id[:16])

    # ---- daemon start and stop ---------------------------------------------------------------------------
    async def recover(self) -> None:
        """Pods recorded by an earlier daemon: running ones are taken over (their VMs kept running); what a
        dead one left (VM, mounts, sockets), and what one was still starting or stopping (its QEMU and virtiofsd
        are recorded as soon as they exist), is released and it shows as exited."""
        infos = [rec["info"] for rec in self.records.all()]
        live = [i for i in infos if i["state"] in LIVE]
        taken = await asyncio.gather(*(self._take_over(i) for i in live)) if self.live_restore else [False] * len(live)
        taken_ids = {i["id"] for i, ok in zip(live, taken, strict=True) if ok}
        for info in infos:
            if info["id"] in taken_ids:
                continue
            if info["state"] == PodState.CREATED.value:  # docker create's, never started: nothing of it runs
                self._stale[info["id"]] = info
                continue
            if info["state"] not in (s.value for s in FINAL):
                self._release(info)
                why = "ran" if info["state"] in LIVE else "was " + info["state"]
                info.update(state="exited", error=f"hyperd stopped while the pod {why}", exit_code=255)
                self.records.save(info["id"], info["name"], "exited", info)
            if info.get("spec", {}).get("auto_remove"):
                self._remove_stale(info["id"])
                continue
            self._stale[info["id"]] = info
        if self.pool and (n := self.pool.sweep({self._rundir_of(i) for i in live if i["id"] in taken_ids})):
            log.info("removed %d pool VMs an earlier hyperd left", n)
        if self.network:
            await self.network.reconcile(set(self.pods))

    async def _take_over(self, info: PodInfo) -> bool:
        rt = info.get("runtime") or {}
        rundir = self._rundir_of(info)
        vm = procs.adopt(rt.get("vm_pid"), rt.get("vm_start"), str(rundir))
        if vm is None:
            return False
        share = procs.adopt(rt.get("share_pid"), rt.get("share_start"), str(rundir))
        try:
            pod = self._rebuild(info)
            await pod.reattach(vm, share, rt.get("network"))
        except Exception as e:
            log.warning("pod %s: could not take it over (%s); stopping its VM", info["name"], e)
            for p in (vm, share):
                if p:
                    with contextlib.suppress(ProcessLookupError, OSError):
                        p.kill()
            return False
        self.pods[pod.id] = pod
        log.info("pod %s: taken over (VM pid %d)", pod.name, vm.pid)
        return True

    def _rebuild(self, info: PodInfo) -> Pod:
        spec = PodSpec.model_validate(info["spec"])
        rt = info["runtime"]
        containers = []
        for cs, ci in zip(spec.containers, info["containers"], strict=True):
            state = rt["containers"][cs.name]
            c = Container(cs, self.images.get(ci["image"]), stream=state["stream"],
                          log_path=self.poddir / info["id"] / "logs" / f"{cs.name}.log",
                          fields=state["fields"], mounts=state["mounts"], restarts=state["restarts"],
                          pid=state["pid"], oom_killed=state.get("oom_killed", False),
                          root_dir=state.get("root_dir", cs.name),
                          cri_log=Path(state["cri_log"]) if state.get("cri_log") else None,
                          brought=tuple(state.get("brought") or ()),
                          started_at=state.get("started_at"), finished_at=state.get("finished_at"))
            if state["started"]:
                c.started.set()
            if state["done"]:
                c.exit_code, c.error = state["exit_code"], state["error"]
                c.done.set()
            containers.append(c)
        pod = Pod(info["id"], info["name"], spec, containers, self.poddir / info["id"], self._rundir_of(info),
                  self.assets, self.network, storage_size=self.storage_size)
        if rt.get("share_dir") and Path(rt["share_dir"]) != pod.share_dir:  # a pool VM's
            pod._share_dir = Path(rt["share_dir"])
        pod.hostname, pod.created = info["hostname"], info["created"]
        pod.meta = dict(info.get("meta") or {})
        pod._stream_seq = rt["stream_seq"]
        pod._generation = rt.get("generation", 0)
        pod.timings.marks = dict(info.get("timings") or {})
        pod.on_change.append(self._persist)
        pod.on_event.append(self._event)
        return pod

    def _rundir_of(self, info: PodInfo) -> Path:
        """Where the pod's sockets are: its own runtime directory, or the pool VM's it took."""
        rt = info.get("runtime") or {}
        return Path(rt["rundir"]) if rt.get("rundir") else self.rundir / info["id"][:16]

    def _release(self, info: PodInfo) -> None:
        rt = info.get("runtime") or {}
        rundir = self._rundir_of(info)
        for kind in ("vm", "share"):  # still ours: same pid, same start
            procs.kill_if_ours(rt.get(f"{kind}_pid"), rt.get(f"{kind}_start"), str(rundir))
        detach_all_under(self.poddir / info["id"])
        remove_tree(rundir)

    async def shutdown(self) -> None:
        """hyperd is stopping: starts in progress are undone; running pods are stopped (with live restore: left
        running for the next hyperd); pool VMs go."""
        for pod_id in list(self._starts):
            self._starts[pod_id].cancel()
        if self.pool:
            await self.pool.close()
        if not self.live_restore:
            await asyncio.gather(*(p.stop() for p in list(self.pods.values())), return_exceptions=True)
            for p in list(self.pods.values()):
                await p.teardown()
            return
        await asyncio.gather(*(p.detach() for p in list(self.pods.values())), return_exceptions=True)
