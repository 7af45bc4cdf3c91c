"""CRI v1 RuntimeService: pod sandboxes (one VM each), their containers, exec, stats, events and the runtime's
status, as calls on the pod manager. The message shapes are in status.py, the config translation in convert.py."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Protocol

import grpc

from .. import __version__
from ..errors import CommandNotRunnable, Conflict, HCError, InvalidArgument, NotFound
from ..image.store import ImageStore
from ..pod.manager import PodManager
from ..pod.pod import Pod
from ..protocol.agent import ContainerStats as GuestStats
from ..protocol.agent import PortStream, PortWriter
from ..protocol.client import AgentRequestError
from . import convert, status
from .api import pb, rpc
from .errors import CriError, already_exists, failed_precondition, finishing, stream, unary, unimplemented
from .events import Events
from .index import KEY, ContainerView, Index, SandboxView, matches_labels, to_json
from .network import NetworkStep

log = logging.getLogger(__name__)
RUNTIME_NAME = "hypercontainer"
KUBELET_API_VERSION = "0.1.0"  # what VersionResponse.version has always said
HANDLERS = ("", RUNTIME_NAME)  # the runtime handlers (RuntimeClass) this runtime serves
EXEC_OUTPUT_MAX = 16 << 20  # bytes of stdout, and of stderr, an ExecSync returns (the rest is dropped)
DIAL_TIMEOUT = 10.0  # seconds a port-forward's connection to the pod may take

StreamKind = Literal["exec", "attach", "portforward"]


class Streaming(Protocol):
    """The streaming server (cri/streaming/): a URL for an Exec, Attach or PortForward request the runtime has
    checked (the container exists and runs, the sandbox is ready); the server then uses target()/sandbox_pod()."""

    async def url(self, kind: StreamKind, request: Any) -> str: ...


def _key(md: Any) -> tuple[str, str, str, int]:
    return md.get("name", ""), md.get("namespace", ""), md.get("uid", ""), int(md.get("attempt", 0))


class RuntimeService(rpc.RuntimeServiceServicer):
    def __init__(self, manager: PodManager, images: ImageStore, network: NetworkStep,
                 streaming: Streaming | None = None) -> None:
        self.manager, self.images, self.network = manager, images, network
        self.streaming = streaming
        self.index = Index(manager)
        self.events = Events()
        self.pod_cidr = ""  # UpdateRuntimeConfig's (reported; the CNI configuration names its own ranges)
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._creating: set[tuple[str, str, str, int]] = set()
        self._cpu: dict[str, tuple[int, int]] = {}  # sandbox id -> (timestamp ns, CPU ns): for usage_nano_cores

    # ---- for the streaming server ------------------------------------------------------------------------
    def target(self, container_id: str) -> tuple[Pod, str]:
        """The live pod and the pod core's name of a running CRI container (exec, attach)."""
        c = self._running(container_id)
        assert c.sandbox.pod is not None
        return c.sandbox.pod, c.name

    def sandbox_pod(self, sandbox_id: str) -> Pod:
        """The live pod of a ready sandbox (port-forward)."""
        v = self.index.sandbox(sandbox_id)
        if not v.ready or v.pod is None:
            raise failed_precondition(f"pod sandbox {sandbox_id} is not ready")
        return v.pod

    def stdin_once(self, container_id: str) -> bool:
        """Whether the container's config said StdinOnce (attach closes its stdin when the client's ends)."""
        return bool((self.index.container(container_id).meta.get("config") or {}).get("stdin_once"))

    async def dial(self, sandbox_id: str, port: int) -> tuple[PortStream, PortWriter]:
        """Port-forward: a TCP connection to the pod's own localhost:`port` (inside its VM), relayed by the guest's
        agent, as the kubelet's port-forward reaches a pod's loopback."""
        v = self.index.sandbox(sandbox_id)
        if not v.ready:
            raise failed_precondition(f"pod sandbox {v.id} is not ready")
        try:
            conn = await asyncio.wait_for(self.sandbox_pod(v.id).open_port(port), DIAL_TIMEOUT)
        except AgentRequestError as e:
            if e.errno == errno.ECONNREFUSED:
                raise ConnectionRefusedError(f"nothing listens on port {port} of pod sandbox {v.id[:12]}") from None
            raise ConnectionError(f"cannot connect to port {port} of pod sandbox {v.id[:12]}: {e.message}") from None
        except TimeoutError:
            raise ConnectionError(f"cannot connect to port {port} of pod sandbox {v.id[:12]}: timed out") from None
        return conn, conn.writer()

    async def streaming_url(self, kind: StreamKind, request: Any) -> str:
        """Where Exec, Attach and PortForward get their URL: the one place the streaming server plugs in."""
        if self.streaming is None:
            raise unimplemented(f"{kind}: this runtime has no streaming server yet (ExecSync works)")
        return await self.streaming.url(kind, request)

    async def reconcile_network(self) -> None:
        """hyperd started (before the CRI serves): sandboxes that run keep their network; those that stopped while
        hyperd was away, and attachments no sandbox holds, are released."""
        live, stopped = set(), {}
        for v in self.index.sandboxes():
            if v.pod is not None and v.info["state"] in ("starting", "running", "paused"):
                live.add(v.id)
            else:
                stopped[v.id] = (v.meta.get("network") or {}).get("state") or {}
        await self.network.reconcile(live, stopped)

    def arm(self) -> None:
        """hyperd started: containers that run (taken over from an earlier hyperd) get their exit watched."""
        for c in self.index.containers():
            if c.state == "running" and c.sandbox.pod is not None:
                self._watch_exit(c)

    def close(self) -> None:
        self.events.close()

    # ---- runtime -----------------------------------------------------------------------------------------
    @unary
    async def Version(self, request: Any, context: Any) -> Any:
        return pb.VersionResponse(version=KUBELET_API_VERSION, runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__, runtime_api_version="v1")

    @unary
    async def Status(self, request: Any, context: Any) -> Any:
        net = await self.network.readiness()
        conditions = [pb.RuntimeCondition(type="RuntimeReady", status=True),
                      pb.RuntimeCondition(type="NetworkReady", status=net.ready, reason=net.reason,
                                          message=net.message)]
        features = pb.RuntimeHandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False)
        info = {}
        if request.verbose:
            info["config"] = json.dumps({"handlers": list(HANDLERS), "podCIDR": self.pod_cidr,
                                         "boot": self.manager.boot, "sandbox": "one VM per pod sandbox"})
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions), info=info,
                                 runtime_handlers=[pb.RuntimeHandler(name=h, features=features) for h in HANDLERS],
                                 features=pb.RuntimeFeatures(supplemental_groups_policy=False))

    @unary
    async def RuntimeConfig(self, request: Any, context: Any) -> Any:
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    @unary
    async def UpdateRuntimeConfig(self, request: Any, context: Any) -> Any:
        self.pod_cidr = request.runtime_config.network_config.pod_cidr
        return pb.UpdateRuntimeConfigResponse()

    # ---- sandboxes ---------------------------------------------------------------------------------------
    @unary
    async def RunPodSandbox(self, request: Any, context: Any) -> Any:
        config, handler = request.config, request.runtime_handler
        if handler not in HANDLERS:
            raise InvalidArgument(f"runtime handler {handler!r} is not served here (handlers: "
                                  f"{', '.join(repr(h) for h in HANDLERS)})")
        key = _key(to_json(config.metadata))
        same = [s.id for s in self.index.sandboxes() if _key(s.metadata) == key]
        if same or key in self._creating:
            raise already_exists(f"pod sandbox {key[0]} (namespace {key[1]}, uid {key[2]}, attempt {key[3]}) exists "
                                 f"already{' as ' + same[0] if same else ''}: remove it or use another attempt")
        self._creating.add(key)
        try:
            sid = secrets.token_hex(32)
            plan = convert.sandbox(config, sid, {i["name"] for i in self.manager.list()})
            net = await self.network.setup(sid, config)
            meta = {KEY: {"config": to_json(config), "runtime_handler": handler, "created_ns": time.time_ns(),
                          "network": {"ips": net.ips, "state": net.state}, "sysctls": plan.sysctls,
                          "unapplied": plan.unapplied, "containers": {}}}
            try:
                pod = self.manager.create({**plan.spec, "network": net.spec}, meta=meta, pod_id=sid)
                try:
                    await self.manager.start(pod)
                except BaseException:
                    await asyncio.shield(self._forget(sid))
                    raise
            except BaseException:
                await asyncio.shield(self._teardown_network(sid, net.state))
                raise
        finally:
            self._creating.discard(key)
        for note in plan.unapplied:
            log.warning("CRI sandbox %s (%s): %s", sid[:12], key[0], note)
        self._publish(pb.CONTAINER_CREATED_EVENT, sid, sid)
        self._publish(pb.CONTAINER_STARTED_EVENT, sid, sid)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sid)

    async def _forget(self, sid: str) -> None:
        """A sandbox that failed to start: its pod record goes too (under its lock: a Stop or Remove of the id
        that arrives meanwhile waits, then finds it gone)."""
        async with self._locks[sid]:
            try:
                await self.manager.remove(sid, force=True)
            except NotFound:
                pass
            except HCError as e:
                log.warning("CRI sandbox %s: removing what a failed start left: %s", sid[:12], e.message)
        self._locks.pop(sid, None)

    async def _teardown_network(self, sid: str, state: dict[str, Any]) -> None:
        try:
            await self.network.teardown(sid, state)
        except HCError as e:
            log.warning("CRI sandbox %s: network teardown: %s", sid[:12], e.message)

    @unary
    @finishing
    async def StopPodSandbox(self, request: Any, context: Any) -> Any:
        try:
            v = self.index.sandbox(request.pod_sandbox_id)
        except NotFound:  # the CRI: stopping a sandbox that is gone is not an error
            return pb.StopPodSandboxResponse()
        async with self._locks[v.id]:
            try:
                v = self.index.sandbox(v.id)  # as it is now, under the lock
            except NotFound:
                return pb.StopPodSandboxResponse()
            if v.pod is not None and v.info["state"] in ("starting", "running", "paused"):
                await self.manager.stop(v.id, timeout=0)  # the kubelet stopped its containers before
                self._publish(pb.CONTAINER_STOPPED_EVENT, v.id, v.id)
            await self.network.teardown(v.id, (v.meta.get("network") or {}).get("state") or {})
        return pb.StopPodSandboxResponse()

    @unary
    @finishing
    async def RemovePodSandbox(self, request: Any, context: Any) -> Any:
        try:
            v = self.index.sandbox(request.pod_sandbox_id)
        except NotFound:
            return pb.RemovePodSandboxResponse()
        async with self._locks[v.id]:
            try:
                v = self.index.sandbox(v.id)
            except NotFound:
                return pb.RemovePodSandboxResponse()
            containers = self.index.containers([v])
            listening = self.events.listening  # the events say how things were just before they went
            gone = [(c.id, self._event(pb.CONTAINER_DELETED_EVENT, c.id, v.id) if listening else None)
                    for c in containers]
            last = self._event(pb.CONTAINER_DELETED_EVENT, v.id, v.id) if listening else None
            if v.pod is not None and v.info["state"] in ("starting", "running", "paused"):
                await self.manager.stop(v.id, timeout=0)
            await self.network.teardown(v.id, (v.meta.get("network") or {}).get("state") or {})
            with contextlib.suppress(NotFound):
                await self.manager.remove(v.id, force=True)
        self._locks.pop(v.id, None)
        self._cpu.pop(v.id, None)
        for cid, ev in gone:
            self.events.unwatch(cid)
            if ev is not None:
                self.events.publish(ev)
        if last is not None:
            self.events.publish(last)
        return pb.RemovePodSandboxResponse()

    @unary
    async def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        v = self.index.sandbox(request.pod_sandbox_id)
        st, info = status.sandbox_status(v, request.verbose)
        return pb.PodSandboxStatusResponse(
            status=st, info=info, timestamp=time.time_ns(),
            containers_statuses=[status.container_status(c, False)[0] for c in self.index.containers([v])])

    def _sandboxes(self, f: Any) -> list[SandboxView]:
        out = self.index.sandboxes()
        if f.id:
            out = [s for s in out if s.id.startswith(f.id)]
        if f.HasField("state"):
            out = [s for s in out if status.sandbox_state(s) == f.state.state]
        return [s for s in out if matches_labels(s.labels, f.label_selector)]

    @unary
    async def ListPodSandbox(self, request: Any, context: Any) -> Any:
        return pb.ListPodSandboxResponse(items=[status.pod_sandbox(s) for s in self._sandboxes(request.filter)])

    @stream
    async def StreamPodSandboxes(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.StreamPodSandboxesResponse(pod_sandboxes=[status.pod_sandbox(s)
                                                           for s in self._sandboxes(request.filter)])

    # ---- containers --------------------------------------------------------------------------------------
    @unary
    async def CreateContainer(self, request: Any, context: Any) -> Any:
        v = self.index.sandbox(request.pod_sandbox_id)
        config = request.config
        md = config.metadata
        if not md.name:
            raise InvalidArgument("container metadata needs a name")
        if not config.image.image:
            raise InvalidArgument(f"container {md.name}: no image given")
        async with self._locks[v.id]:
            v = self.index.sandbox(v.id)  # as it is now, under the lock
            if not v.ready or v.pod is None:
                raise failed_precondition(f"pod sandbox {v.id} is {v.info['state']}, not ready: a container can only "
                                          "be created in a running sandbox")
            same = [c.id for c in self.index.containers([v])
                    if (c.config.metadata.name, c.config.metadata.attempt) == (md.name, md.attempt)]
            if same:
                raise already_exists(f"container {md.name} (attempt {md.attempt}) exists already in pod sandbox "
                                     f"{v.id[:12]} as {same[0]}: remove it or use another attempt")
            image = await asyncio.to_thread(self.images.get, config.image.image)
            cid = secrets.token_hex(32)
            name = convert.container_name(md, cid, {c["name"] for c in v.info.get("containers") or []})
            target = None
            if config.linux.security_context.namespace_options.pid == pb.TARGET:
                target = self._running(config.linux.security_context.namespace_options.target_id, v).name
            plan = convert.container(config, name, cid, v.meta.get("sysctls") or {}, target)
            log_dir = v.config.log_directory
            log_path = f"{log_dir.rstrip('/')}/{config.log_path}" if log_dir and config.log_path else ""
            await self.manager.add_container(v.id, plan.spec, start=False, volumes=plan.volumes,
                                             cri_log=Path(log_path) if log_path else None, overrides=plan.overrides)
            entry = {"name": name, "config": to_json(config), "created_ns": time.time_ns(), "image_id": image.id,
                     "image_ref": image.repo_digests[0] if image.repo_digests else image.id, "log_path": log_path,
                     "resources": to_json(config.linux.resources), "unapplied": plan.unapplied}
            try:
                self._save(v.id, lambda m: m.setdefault("containers", {}).__setitem__(cid, entry))
            except BaseException:
                with contextlib.suppress(HCError):
                    await self.manager.remove_container(v.id, name, force=True)
                raise
        for note in plan.unapplied:
            log.warning("CRI container %s (%s): %s", cid[:12], md.name, note)
        self._publish(pb.CONTAINER_CREATED_EVENT, cid, v.id)
        return pb.CreateContainerResponse(container_id=cid)

    def _save(self, sid: str, change: Any) -> None:
        """Changes a sandbox's CRI metadata (under its lock) and persists it with the pod."""
        pod = self.manager.pods.get(sid)
        meta = dict(pod.meta) if pod else dict(self.index.sandbox(sid).info.get("meta") or {})
        cri = dict(meta.get(KEY) or {})
        cri["containers"] = dict(cri.get("containers") or {})
        change(cri)
        meta[KEY] = cri
        self.manager.update_meta(sid, meta)

    def _running(self, container_id: str, sandbox: SandboxView | None = None) -> ContainerView:
        c = self.index.container(container_id)
        if sandbox is not None and c.sandbox.id != sandbox.id:
            raise NotFound(f"container {container_id} is not in pod sandbox {sandbox.id}")
        if c.state != "running" or not c.sandbox.ready:
            raise failed_precondition(f"container {container_id} is {c.state}, not running")
        return c

    def _watch_exit(self, c: ContainerView) -> None:
        pod = c.sandbox.pod
        if pod is None:
            return
        done = pod.container(c.name).done
        cid, sid = c.id, c.sandbox.id
        self.events.watch(cid, done, lambda: self._publish(pb.CONTAINER_STOPPED_EVENT, cid, sid))

    @unary
    @finishing
    async def StartContainer(self, request: Any, context: Any) -> Any:
        c = self.index.container(request.container_id)
        if c.state != "created":
            raise failed_precondition(f"container {c.id} is {c.state}: only a created container can be started")
        if not c.sandbox.ready:
            raise failed_precondition(f"pod sandbox {c.sandbox.id} is not ready: its container cannot start")
        try:
            await self.manager.start_container(c.sandbox.id, c.name)
        except CommandNotRunnable as e:
            raise failed_precondition(f"container {c.id}: {e.message}") from None
        self._watch_exit(c)
        self._publish(pb.CONTAINER_STARTED_EVENT, c.id, c.sandbox.id)
        return pb.StartContainerResponse()

    @unary
    @finishing
    async def StopContainer(self, request: Any, context: Any) -> Any:
        try:
            c = self.index.container(request.container_id)
        except NotFound:  # the CRI: stopping a container that is gone is not an error
            return pb.StopContainerResponse()
        pod = c.sandbox.pod
        if pod is None or c.state != "running":
            return pb.StopContainerResponse()
        with contextlib.suppress(Conflict):  # the sandbox stopped meanwhile: so did the container
            await pod.stop_container(c.name, timeout=max(0, request.timeout))
        return pb.StopContainerResponse()

    @unary
    @finishing
    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        try:
            c = self.index.container(request.container_id)
        except NotFound:
            return pb.RemoveContainerResponse()
        async with self._locks[c.sandbox.id]:
            ev = self._event(pb.CONTAINER_DELETED_EVENT, c.id, c.sandbox.id) if self.events.listening else None
            if c.sandbox.pod is not None:
                with contextlib.suppress(NotFound):
                    await self.manager.remove_container(c.sandbox.id, c.name, force=True)
            self._save(c.sandbox.id, lambda m: m["containers"].pop(c.id, None))
        self.events.unwatch(c.id)
        if ev is not None:
            self.events.publish(ev)
        return pb.RemoveContainerResponse()

    @unary
    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        st, info = status.container_status(self.index.container(request.container_id), request.verbose)
        return pb.ContainerStatusResponse(status=st, info=info)

    def _containers(self, f: Any) -> list[ContainerView]:
        out = self.index.containers()
        if f.id:
            out = [c for c in out if c.id.startswith(f.id)]
        if f.pod_sandbox_id:
            out = [c for c in out if c.sandbox.id.startswith(f.pod_sandbox_id)]
        if f.HasField("state"):
            out = [c for c in out if status.STATES.get(c.state) == f.state.state]
        return [c for c in out if matches_labels(c.labels, f.label_selector)]

    @unary
    async def ListContainers(self, request: Any, context: Any) -> Any:
        return pb.ListContainersResponse(containers=[status.container(c) for c in self._containers(request.filter)])

    @stream
    async def StreamContainers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.StreamContainersResponse(containers=[status.container(c) for c in self._containers(request.filter)])

    @unary
    async def UpdateContainerResources(self, request: Any, context: Any) -> Any:
        c = self.index.container(request.container_id)
        async with self._locks[c.sandbox.id]:
            res = to_json(request.linux)
            self._save(c.sandbox.id, lambda m: m["containers"][c.id].__setitem__("resources", res)
                       if c.id in m["containers"] else None)
        notes = convert.resources_unapplied(request.linux)
        if request.linux.memory_limit_in_bytes > 0:
            notes.append("memory limit: the running container keeps the one it started with (the agent cannot change "
                         "a container's memory cgroup yet)")
        for note in notes:
            log.info("CRI UpdateContainerResources %s: %s", c.id[:12], note)
        return pb.UpdateContainerResourcesResponse()

    @unary
    async def ReopenContainerLog(self, request: Any, context: Any) -> Any:
        c = self._running(request.container_id)
        if not c.meta.get("log_path"):
            raise failed_precondition(f"container {c.id} has no log path (its sandbox gave no log_directory)")
        assert c.sandbox.pod is not None
        try:
            c.sandbox.pod.container(c.name).reopen_log()
        except OSError as e:
            raise failed_precondition(f"container {c.id}: cannot reopen {c.meta['log_path']}: {e}") from None
        return pb.ReopenContainerLogResponse()

    # ---- exec --------------------------------------------------------------------------------------------
    @unary
    async def ExecSync(self, request: Any, context: Any) -> Any:
        c = self._running(request.container_id)
        cmd = list(request.cmd)
        if not cmd:
            raise InvalidArgument("ExecSync needs a command")
        pod = c.sandbox.pod
        assert pod is not None
        try:
            proc = await pod.exec(c.name, cmd)
        except CommandNotRunnable as e:  # not found, not executable: the shell's codes, as docker's exec gives
            return pb.ExecSyncResponse(stderr=e.message.encode() + b"\n", exit_code=e.exit_code)
        out, err = bytearray(), bytearray()

        async def drain(q: asyncio.Queue[bytes | None], buf: bytearray) -> None:
            while (chunk := await q.get()) is not None:
                buf += chunk[: max(0, EXEC_OUTPUT_MAX - len(buf))]

        async def run() -> int:
            try:
                await asyncio.gather(drain(proc.stdout, out), drain(proc.stderr, err))
                return await proc.exit
            finally:
                proc.client.unregister(proc.stream)

        task = asyncio.ensure_future(run())  # drains to the end whatever happens here (a full queue stalls the VM's)
        try:
            code = await asyncio.wait_for(asyncio.shield(task), request.timeout if request.timeout > 0 else None)
        except TimeoutError:
            raise CriError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"command {cmd} timed out after {request.timeout} s; it was killed") from None
        finally:
            if not task.done():  # timed out, or the client went away: the process goes
                await pod.signal_stream(proc.stream, 9)
        return pb.ExecSyncResponse(stdout=bytes(out), stderr=bytes(err), exit_code=code)

    @unary
    async def Exec(self, request: Any, context: Any) -> Any:
        self._running(request.container_id)
        if not request.cmd:
            raise InvalidArgument("Exec needs a command")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("Exec needs one of stdin, stdout and stderr")
        if request.tty and request.stderr:
            raise InvalidArgument("Exec: tty and stderr cannot both be true (a terminal has one output)")
        return pb.ExecResponse(url=await self.streaming_url("exec", request))

    @unary
    async def Attach(self, request: Any, context: Any) -> Any:
        self._running(request.container_id)
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("Attach needs one of stdin, stdout and stderr")
        return pb.AttachResponse(url=await self.streaming_url("attach", request))

    @unary
    async def PortForward(self, request: Any, context: Any) -> Any:
        v = self.index.sandbox(request.pod_sandbox_id)
        self.sandbox_pod(v.id)
        return pb.PortForwardResponse(url=await self.streaming_url("portforward", request))

    # ---- stats -------------------------------------------------------------------------------------------
    async def _container_stats(self, containers: list[ContainerView]) -> list[Any]:
        """Each container's writable layer (the host's) and, while it runs, its CPU and memory from its cgroups in
        the guest (the agent's CONTAINER_STATS)."""
        async def live(c: ContainerView) -> GuestStats | None:
            pod = c.sandbox.pod
            if pod is None or not c.sandbox.ready:
                return None
            with contextlib.suppress(HCError):
                return await pod.container_stats(c.name)
            return None

        guest = await asyncio.gather(*(live(c) for c in containers))
        return await asyncio.to_thread(lambda: [status.container_stats(c, g) for c, g in zip(containers, guest,
                                                                                            strict=True)])

    @unary
    async def ContainerStats(self, request: Any, context: Any) -> Any:
        c = self.index.container(request.container_id)
        return pb.ContainerStatsResponse(stats=(await self._container_stats([c]))[0])

    def _stats_containers(self, f: Any) -> list[ContainerView]:
        out = self.index.containers()
        if f.id:
            out = [c for c in out if c.id.startswith(f.id)]
        if f.pod_sandbox_id:
            out = [c for c in out if c.sandbox.id.startswith(f.pod_sandbox_id)]
        return [c for c in out if matches_labels(c.labels, f.label_selector)]

    @unary
    async def ListContainerStats(self, request: Any, context: Any) -> Any:
        found = self._stats_containers(request.filter)
        return pb.ListContainerStatsResponse(stats=await self._container_stats(found))

    @stream
    async def StreamContainerStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        found = self._stats_containers(request.filter)
        yield pb.StreamContainerStatsResponse(container_stats=await self._container_stats(found))

    async def _sandbox_stats(self, v: SandboxView) -> Any:
        """The VM's CPU and memory as the host counts them (QEMU runs the guest: its resident memory is the VM's
        cost on the host), its containers' stats. No process count: the agent knows only the processes it
        started, not their children."""
        containers = self.index.containers([v])
        linux = pb.LinuxPodSandboxStats(containers=await self._container_stats(containers))
        pod = v.pod
        usage = pod.host_usage() if pod is not None and v.ready else None
        if usage is not None:
            cpu = pb.CpuUsage(timestamp=usage.timestamp, usage_core_nano_seconds=pb.UInt64Value(value=usage.cpu_ns))
            last = self._cpu.get(v.id)
            if last and usage.timestamp > last[0] and usage.cpu_ns >= last[1]:
                rate = (usage.cpu_ns - last[1]) * 1_000_000_000 // (usage.timestamp - last[0])
                cpu.usage_nano_cores.CopyFrom(pb.UInt64Value(value=rate))
            self._cpu[v.id] = (usage.timestamp, usage.cpu_ns)
            linux.cpu.CopyFrom(cpu)
            linux.memory.CopyFrom(pb.MemoryUsage(timestamp=usage.timestamp,
                                                 working_set_bytes=pb.UInt64Value(value=usage.memory),
                                                 usage_bytes=pb.UInt64Value(value=usage.memory),
                                                 rss_bytes=pb.UInt64Value(value=usage.memory)))
        return pb.PodSandboxStats(attributes=status.sandbox_attributes(v), linux=linux)

    @unary
    async def PodSandboxStats(self, request: Any, context: Any) -> Any:
        return pb.PodSandboxStatsResponse(stats=await self._sandbox_stats(self.index.sandbox(request.pod_sandbox_id)))

    def _stats_sandboxes(self, f: Any) -> list[SandboxView]:
        out = self.index.sandboxes()
        if f.id:
            out = [s for s in out if s.id.startswith(f.id)]
        return [s for s in out if matches_labels(s.labels, f.label_selector)]

    @unary
    async def ListPodSandboxStats(self, request: Any, context: Any) -> Any:
        return pb.ListPodSandboxStatsResponse(stats=[await self._sandbox_stats(s)
                                                     for s in self._stats_sandboxes(request.filter)])

    @stream
    async def StreamPodSandboxStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=[await self._sandbox_stats(s)
                                                                  for s in self._stats_sandboxes(request.filter)])

    @unary
    async def ListMetricDescriptors(self, request: Any, context: Any) -> Any:
        raise unimplemented("CRI metrics are not provided (ContainerStats and PodSandboxStats are)")

    @unary
    async def ListPodSandboxMetrics(self, request: Any, context: Any) -> Any:
        raise unimplemented("CRI metrics are not provided (ContainerStats and PodSandboxStats are)")

    @stream
    async def StreamPodSandboxMetrics(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.StreamPodSandboxMetricsResponse()

    @unary
    async def UpdatePodSandboxResources(self, request: Any, context: Any) -> Any:
        self.index.sandbox(request.pod_sandbox_id)
        log.info("CRI UpdatePodSandboxResources %s: not applied (a VM's size is fixed at RunPodSandbox)",
                 request.pod_sandbox_id[:12])
        return pb.UpdatePodSandboxResourcesResponse()

    @unary
    async def CheckpointContainer(self, request: Any, context: Any) -> Any:
        raise unimplemented("CheckpointContainer is not supported")

    @unary
    async def CheckpointPod(self, request: Any, context: Any) -> Any:
        raise unimplemented("CheckpointPod is not supported")

    @unary
    async def RestorePod(self, request: Any, context: Any) -> Any:
        raise unimplemented("RestorePod is not supported")

    # ---- events ------------------------------------------------------------------------------------------
    def _event(self, kind: Any, container_id: str, sandbox_id: str) -> Any:
        ev = pb.ContainerEventResponse(container_id=container_id, container_event_type=kind, created_at=time.time_ns())
        try:
            v = self.index.sandbox(sandbox_id)
        except HCError:
            return ev
        ev.pod_sandbox_status.CopyFrom(status.sandbox_status(v, False)[0])
        ev.containers_statuses.extend(status.container_status(c, False)[0] for c in self.index.containers([v]))
        return ev

    def _publish(self, kind: Any, container_id: str, sandbox_id: str) -> None:
        if self.events.listening:
            self.events.publish(self._event(kind, container_id, sandbox_id))

    @stream
    async def GetContainerEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        q = self.events.subscribe()
        try:
            while True:
                yield await q.get()
        finally:
            self.events.unsubscribe(q)
