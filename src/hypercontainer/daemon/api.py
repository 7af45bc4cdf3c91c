"""The REST API. Each route turns a request into one call on the pod manager or the image store, for the
administrator (hyperd's unix socket) or for a tenant (a remote request with its token: auth.py), who sees and
changes only what is its own: its pods (any other reads as missing), its images (tenant_images.py), within what
admission.py lets it have.

This module imports nothing from vm/: the API never talks to QEMU.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection

from .. import __version__
from ..errors import Conflict, Forbidden, HCError, InvalidArgument, NotFound, host_error, no_space
from ..image import archive
from ..image.auth import Credentials
from ..image.pull import Puller
from ..image.reference import parse as parse_ref
from ..image.registry import Registry
from ..image.store import Image, ImageStore
from ..pod.events import EventLog
from ..pod.manager import PodManager
from ..pod.pod import Pod
from ..pod.records import PodInfo
from ..protocol.codec import VERSION as PROTOCOL_VERSION
from ..storage.disk import parse_size
from .admission import TenantAdmission, usage
from .api_debug import add_debug_routes
from .api_files import add_file_routes
from .api_stats import add_stats_routes
from .api_system import add_system_routes
from .audit import AUDIT_LOG, AuditLog
from .auth import Guard, RateLimiter, Streams, admin_only, note, refused, tenant_of
from .state import StateDB
from .stdio import ContainerTarget, ProcessTarget, process_events, send_error, session
from .tenant_images import TenantImages, namespaced
from .tenants import Quotas, Tenant, Tenants, parse_expires

API_VERSION = "v1"
log = logging.getLogger(__name__)
RATE, BURST = 10.0, 20  # each token's requests: 20 at once, then 10 a second
RECHECK = 2.0  # seconds between checks of a running remote request's token


@dataclass
class DaemonInfo:
    accel: str
    accel_reason: str
    kernel: str
    kernel_release: str
    initrd: str
    agent: str
    root: str
    started: float = field(default_factory=time.time)
    cri_socket: str | None = None  # the Kubernetes CRI's socket; None: hyperd runs with --no-cri
    kernel_build: Any = None  # our kernel's background build (daemon/kernel_switch.py), on a first run


class CreateRequest(BaseModel):
    spec: dict
    start: bool = True  # false: docker create (the pod stays created until POST /v1/pods/{ref}/start)


class Auth(BaseModel):
    username: str
    password: str


class PullRequest(BaseModel):
    ref: str
    platform: str | None = None
    auth: Auth | None = None


class AddContainerRequest(BaseModel):
    container: dict


class ExecDetachedRequest(BaseModel):
    command: list[str]
    container: str | None = None
    user: str | None = None
    env: list[str] = []
    workdir: str | None = None


class RenameRequest(BaseModel):
    name: str


class TagRequest(BaseModel):
    source: str
    target: str


class LoginRequest(BaseModel):
    registry: str
    username: str
    password: str


class KillRequest(BaseModel):
    signal: int = 15
    container: str | None = None


class TenantRequest(BaseModel):
    name: str
    max_pods: int | None = None
    max_vcpus: int | None = None
    max_memory: int | None = None
    max_volume_gib: int | None = None


class NetworkRequest(BaseModel):
    name: str


class VolumeRequest(BaseModel):
    name: str
    size: str = "1G"  # 512M, 1G, 10G, or bytes


class TokenRequest(BaseModel):
    tenant: str
    expires: str | None = None  # 30d, 12h, 90m, 3600s, never; default 30d


def tenant_view(pod: PodInfo) -> PodInfo:
    """A pod's info as its tenant sees it: without the host's side (processes, paths, network namespace, taps)."""
    net = dict(pod.get("network") or {})
    net.pop("netns", None)
    if "interfaces" in net:
        net["interfaces"] = [{k: v for k, v in i.items() if k != "tap"} for i in net["interfaces"]]
    return {**{k: v for k, v in pod.items() if k != "runtime"},
            "vm": {k: v for k, v in (pod.get("vm") or {}).items() if k != "pid"}, "network": net}


def _image_info(img: Image) -> dict:
    return {"id": img.id, "refs": [parse_ref(r).short for r in img.refs], "size": img.size,
            "digests": [parse_ref(d).short for d in img.repo_digests], "created": img.created,
            "layers": list(img.diff_ids), "config": img.run_config,
            "architecture": img.config.get("architecture"), "os": img.config.get("os")}


async def _pull_events(puller: Puller, ref: str, creds: Credentials | None, platform: str | None,
                       name: str | None = None, show: Callable[[Image], dict] = _image_info):
    """Progress of one pull as NDJSON lines; the last line is the image (as `show` gives it) or the error. `name`:
    what the image is recorded as (a tenant's namespace)."""
    queue: asyncio.Queue[dict | None] = asyncio.Queue()
    task = asyncio.ensure_future(puller.pull(ref, creds, platform, queue.put_nowait, name))
    task.add_done_callback(lambda _t: queue.put_nowait(None))
    while (ev := await queue.get()) is not None:
        yield json.dumps(ev).encode() + b"\n"
    try:
        image = task.result()
        yield json.dumps({"status": "done", "image": show(image)}).encode() + b"\n"
    except HCError as e:
        yield json.dumps({"error": e.body()}).encode() + b"\n"
    except OSError as e:
        yield json.dumps({"error": host_error(e, puller.store.root).body()}).encode() + b"\n"
    except Exception as e:
        yield json.dumps({"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}).encode() + b"\n"


def create_app(manager: PodManager, images: ImageStore, puller: Puller, info: DaemonInfo, *,
               tenants: Tenants | None = None, audit_log: Path | None = AUDIT_LOG, rate: float = RATE,
               burst: int = BURST, recheck: float = RECHECK) -> FastAPI:
    """The API. `tenants`: the tenants store (default: in the manager's state database); `audit_log`: where the
    audit lines go (None: nowhere); `rate`/`burst`: each token's request rate; `recheck`: how often (seconds) a
    running remote request's token is checked again."""
    app = FastAPI(title="hyperd", version=__version__, description="hypercontainer daemon API")
    if tenants is None:
        if not isinstance(manager.records, StateDB):
            raise TypeError("create_app needs `tenants` when the pod records are not hyperd's StateDB")
        tenants = Tenants(manager.records)
    store = tenants
    streams = Streams()
    app.add_middleware(Guard, tenants=store, audit=AuditLog(audit_log) if audit_log else None,
                       streams=streams, limiter=RateLimiter(rate, burst), recheck=recheck, routes=app.router.routes)
    admin = [Depends(admin_only)]

    @app.exception_handler(HCError)
    async def _hc_error(_: Request, e: HCError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(OSError)
    async def _os_error(_: Request, e: OSError) -> JSONResponse:
        """A full disk is the user's to know about (507, where); any other host error a 500 naming it."""
        err = host_error(e, "hyperd's state directory")
        log.error("request failed: %s", err.message)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return JSONResponse({"code": "invalid_argument", "message": msg}, status_code=400)

    def tenant(conn: HTTPConnection) -> Tenant | None:
        name = tenant_of(conn)
        return store.get(name) if name is not None else None

    def admission(t: Tenant | None) -> TenantAdmission | None:
        return TenantAdmission(t, manager, TenantImages(images, t.name)) if t else None

    def meta(t: Tenant | None) -> dict | None:
        return {"tenant": t.name} if t else None

    def live(conn: HTTPConnection, ref: str) -> str:
        """The id of the running (not left-over) pod `ref` names among the caller's."""
        pod_id = manager.resolve(ref, tenant_of(conn))
        if pod_id not in manager.pods:
            raise NotFound(f"no such pod: {ref}")
        return pod_id

    def pod_of(conn: HTTPConnection, ref: str) -> Pod:
        return manager.pods[live(conn, ref)]

    def view(conn: HTTPConnection, pod: PodInfo) -> PodInfo:
        return pod if tenant_of(conn) is None else tenant_view(pod)

    @app.get("/v1/version")
    async def version() -> dict:
        return {"version": __version__, "api": API_VERSION, "protocol": PROTOCOL_VERSION}

    @app.get("/v1/info")
    async def get_info(request: Request) -> dict:
        t = tenant(request)
        if t is not None:  # what the tenant's own: nothing of the host's paths, network or other pods
            own = manager.list(t.name)
            return {"version": __version__, "api": API_VERSION, "protocol": PROTOCOL_VERSION,
                    "accelerator": {"name": info.accel},
                    "tenant": {**t.info(), "usage": usage(own)},
                    "pods": {"total": len(own), "running": sum(p["state"] == "running" for p in own)},
                    "images": len(TenantImages(images, t.name).list())}
        pods = manager.list()
        recent = list(reversed(manager.recent_boots))
        return {
            "version": __version__, "api": API_VERSION, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version(), "host_kernel": platform.release(),
            "accelerator": {"name": info.accel, "reason": info.accel_reason},
            "guest": {"kernel": info.kernel, "kernel_release": info.kernel_release, "initrd": info.initrd,
                      "agent": info.agent, "build": info.kernel_build.info() if info.kernel_build else None},
            "root": info.root,
            "cri": {"socket": info.cri_socket},
            "network": manager.network.info() if manager.network else {"mode": "none", "reason": "disabled"},
            "boot": {"policy": manager.boot, "templates": manager.templates.list() if manager.templates else [],
                     "pool": manager.pool.info() if manager.pool and (manager.pool.size or manager.pool.auto)
                     else None},
            "pods": {"total": len(pods), "running": sum(p["state"] == "running" for p in pods)},
            "images": len(images.list()),
            "tenants": len(store.list()),
            "recent_boots": recent,
        }

    # ---- tenants and tokens (the administrator's) --------------------------------------------------------
    @app.post("/v1/tenants", status_code=201, dependencies=admin)
    async def create_tenant(req: TenantRequest) -> dict:
        quotas = Quotas(**{k: v for k, v in req.model_dump().items() if k != "name" and v is not None})
        return store.create(req.name, quotas).info()

    @app.get("/v1/tenants", dependencies=admin)
    async def list_tenants() -> list[dict]:
        return [{**t.info(), "usage": usage(manager.list(t.name))} for t in store.list()]

    @app.delete("/v1/tenants/{name}", dependencies=admin)
    async def remove_tenant(name: str, force: bool = False) -> dict:
        store.get(name)
        pods = manager.list(name)
        if pods and not force:
            raise Conflict(f"tenant {name} has {len(pods)} pods: remove them first, or use --force")
        for tok in store.tokens(name):  # first: nothing of the tenant's runs on while its pods go
            store.revoke(tok.id)
        streams.cut([tok.id for tok in store.tokens(name)])
        for p in pods:
            await manager.remove(p["id"], force=True)
        await asyncio.to_thread(TenantImages(images, name).remove_all, in_use())
        await manager.release_owner(name)  # its volumes and networks
        store.delete(name)
        return {"name": name, "pods": [p["id"] for p in pods]}

    @app.post("/v1/tokens", status_code=201, dependencies=admin)
    async def create_token(req: TokenRequest) -> dict:
        tok, text = store.issue(req.tenant, parse_expires(req.expires))
        return {**tok.info(), "token": text}

    @app.get("/v1/tokens", dependencies=admin)
    async def list_tokens(tenant: str | None = None) -> list[dict]:
        return [t.info() for t in store.tokens(tenant)]

    @app.delete("/v1/tokens/{token_id}", dependencies=admin)
    async def revoke_token(token_id: str) -> dict:
        tok = store.revoke(token_id)
        return {**tok.info(), "cut": streams.cut([tok.id])}

    # ---- pods --------------------------------------------------------------------------------------------
    @app.get("/v1/pods")
    async def list_pods(request: Request) -> list[dict]:
        return [view(request, p) for p in manager.list(tenant_of(request))]

    @app.post("/v1/pods", status_code=201)
    async def create_pod(request: Request, req: CreateRequest) -> dict:
        t = tenant(request)
        pod = manager.create(req.spec, meta(t), admission=admission(t))
        note(request, pod.id)
        if req.start:
            await manager.start(pod)
        else:
            manager.keep_created(pod)
        return {"id": pod.id, "name": pod.name}

    @app.get("/v1/pods/{ref}")
    async def inspect_pod(request: Request, ref: str) -> dict:
        """A running pod's info, or the record of one that is not (created, stopped, left by an earlier hyperd)."""
        return view(request, manager.info_of(manager.resolve(ref, tenant_of(request))))

    @app.delete("/v1/pods/{ref}")
    async def remove_pod(request: Request, ref: str, force: bool = False) -> dict:
        return {"id": await manager.remove(manager.resolve(ref, tenant_of(request)), force=force)}

    @app.post("/v1/pods/{ref}/containers", status_code=201)
    async def add_container(request: Request, ref: str, req: AddContainerRequest) -> dict:
        pod_id = live(request, ref)
        return {"name": await manager.add_container(pod_id, req.container, admission=admission(tenant(request)))}

    @app.delete("/v1/pods/{ref}/containers/{name}")
    async def remove_container(request: Request, ref: str, name: str, force: bool = False) -> dict:
        return {"name": await manager.remove_container(live(request, ref), name, force=force)}

    @app.get("/v1/pods/{ref}/agent")
    async def agent_stats(request: Request, ref: str) -> dict:
        return await pod_of(request, ref).agent_stats()

    @app.post("/v1/pods/{ref}/stop")
    async def stop_pod(request: Request, ref: str, timeout: float = 10.0) -> dict:
        return {"id": await manager.stop(live(request, ref), timeout)}

    @app.post("/v1/pods/{ref}/wait")
    async def wait_pod(request: Request, ref: str) -> dict:
        """docker wait: answers once the pod's first container has exited (or the pod stopped)."""
        return {"exit_code": await manager.wait(manager.resolve(ref, tenant_of(request)))}

    @app.post("/v1/pods/{ref}/start")
    async def start_pod(request: Request, ref: str) -> dict:
        """docker start: a created pod boots; a stopped one boots again from its spec (same id, name, volumes)."""
        pod = await manager.start_again(manager.resolve(ref, tenant_of(request)), admission(tenant(request)))
        return {"id": pod.id, "name": pod.name}

    @app.post("/v1/pods/{ref}/restart")
    async def restart_pod(request: Request, ref: str, timeout: float = 10.0) -> dict:
        pod_id = manager.resolve(ref, tenant_of(request))
        if pod_id in manager.pods:
            await manager.stop(pod_id, timeout)
        pod = await manager.start_again(pod_id, admission(tenant(request)))
        return {"id": pod.id, "name": pod.name}

    @app.post("/v1/pods/{ref}/rename")
    async def rename_pod(request: Request, ref: str, req: RenameRequest) -> dict:
        pod_id = manager.resolve(ref, tenant_of(request))
        return {"id": pod_id, "name": req.name, "old_name": manager.rename(pod_id, req.name)}

    @app.post("/v1/pods/{ref}/execs", status_code=201)
    async def exec_detached(request: Request, ref: str, req: ExecDetachedRequest) -> dict:
        """docker exec -d: the process runs on by itself; inspect shows its exit code under "execs"."""
        return await pod_of(request, ref).exec_detached(req.container, req.command, user=req.user, env=req.env,
                                                        workdir=req.workdir)

    @app.post("/v1/pods/{ref}/kill")
    async def kill_pod(request: Request, ref: str, req: KillRequest) -> dict:
        await pod_of(request, ref).signal(req.container, req.signal)
        return {}

    @app.get("/v1/pods/{ref}/logs")
    async def logs(request: Request, ref: str, follow: bool = False, container: str | None = None,
                   tail: int | None = None, since: float | None = None) -> StreamingResponse:
        path, done = manager.log_source(manager.resolve(ref, tenant_of(request)), container)
        return StreamingResponse(_logs(path, follow, done, tail, since), media_type="application/x-ndjson")

    @app.post("/v1/pods/{ref}/pause")
    async def pause_pod(request: Request, ref: str) -> dict:
        await pod_of(request, ref).pause()
        return {}

    @app.post("/v1/pods/{ref}/unpause")
    async def unpause_pod(request: Request, ref: str) -> dict:
        await pod_of(request, ref).unpause()
        return {}

    @app.get("/v1/events")
    async def events(request: Request, since: float | None = None, until: float | None = None) -> StreamingResponse:
        return StreamingResponse(_events(manager.events, since, until, tenant_of(request)),
                                 media_type="application/x-ndjson")

    async def refuse(ws: WebSocket, e: HCError) -> None:
        refused(ws, e)
        await send_error(ws, e)

    @app.websocket("/v1/pods/{ref}/attach")
    async def attach_ws(ws: WebSocket, ref: str) -> None:
        """Output of a running container from now on, stdin to it; first client message {"container"}."""
        await ws.accept()
        try:
            req = await ws.receive_json()
            pod = pod_of(ws, ref)
            c = pod.container((req or {}).get("container"))
            if not c.started.is_set() or c.done.is_set():
                raise Conflict(f"container {c.name} of pod {pod.name} is not running")
        except HCError as e:
            await refuse(ws, e)
            return
        except (ValueError, WebSocketDisconnect):
            return
        events = c.subscribe()

        async def resize() -> None:
            if req.get("rows") and req.get("cols"):
                await pod.resize(c.name, int(req["rows"]), int(req["cols"]))

        await session(ws, events, ContainerTarget(pod, c), False, resize, lambda: c.unsubscribe(events))

    @app.websocket("/v1/pods/run")
    async def run(ws: WebSocket) -> None:
        await ws.accept()
        try:
            req = await ws.receive_json()
            if not isinstance(req, dict) or not isinstance(req.get("spec"), dict):
                raise InvalidArgument("the first message must be {\"spec\": {...}}")
            t = tenant(ws)
            pod = manager.create(req["spec"], meta(t), admission=admission(t))
            note(ws, pod.id)
        except HCError as e:
            await refuse(ws, e)
            return
        except (ValueError, WebSocketDisconnect):
            return
        await _attach_and_start(ws, pod, req)

    async def _attach_and_start(ws: WebSocket, pod: Pod, req: dict) -> None:
        if not pod.containers:
            await send_error(ws, InvalidArgument("a pod without containers starts detached (run -d)"))
            return
        c = pod.containers[0]
        events = c.subscribe()
        await ws.send_json({"type": "created", "id": pod.id, "name": pod.name})

        async def start() -> None:
            await manager.start(pod)
            if req.get("rows") and req.get("cols"):
                await pod.resize(None, int(req["rows"]), int(req["cols"]))

        await session(ws, events, ContainerTarget(pod, c), c.spec.stdin, start, lambda: c.unsubscribe(events))

    @app.websocket("/v1/pods/{ref}/exec")
    async def exec_ws(ws: WebSocket, ref: str) -> None:
        """First client message: {"command": [...], "container", "tty", "stdin", "user", "env", "workdir",
        "rows", "cols"}; then the stdio frames of stdio.py."""
        await ws.accept()
        try:
            req = await ws.receive_json()
            if not isinstance(req, dict) or not isinstance(req.get("command"), list):
                raise InvalidArgument("the first message must be {\"command\": [...]}")
            pod = pod_of(ws, ref)
            proc = await pod.exec(req.get("container"), [str(a) for a in req["command"]],
                                  tty=bool(req.get("tty")), stdin=bool(req.get("stdin")), user=req.get("user"),
                                  env=[str(e) for e in req.get("env") or []], workdir=req.get("workdir"),
                                  size=(int(req.get("rows") or 0), int(req.get("cols") or 0)))
        except HCError as e:
            await refuse(ws, e)
            return
        except (ValueError, WebSocketDisconnect):
            return
        events, pump = process_events(proc)

        async def resize() -> None:
            if req.get("tty") and req.get("rows") and req.get("cols"):
                await pod.resize_stream(proc.stream, int(req["rows"]), int(req["cols"]))

        def detach() -> None:
            if not pump.done():  # the client went away: the process stays, its output is dropped
                events.detach()

        await session(ws, events, ProcessTarget(pod, proc), bool(req.get("stdin")), resize, detach)

    # ---- networks and volumes: each caller's own ----------------------------------------------------------
    @app.get("/v1/networks")
    async def list_networks(request: Request) -> list[dict]:
        return manager.networks(tenant_of(request))

    @app.post("/v1/networks", status_code=201)
    async def create_network(request: Request, req: NetworkRequest) -> dict:
        note(request, req.name)
        return await manager.create_network(tenant_of(request), req.name)

    @app.delete("/v1/networks/{name}")
    async def remove_network(request: Request, name: str) -> dict:
        await manager.remove_network(tenant_of(request), name)
        return {"name": name}

    @app.get("/v1/volumes")
    async def list_volumes(request: Request) -> list[dict]:
        return [v.info() for v in manager.named_volumes(tenant_of(request))]

    @app.post("/v1/volumes", status_code=201)
    async def create_volume(request: Request, req: VolumeRequest) -> dict:
        note(request, req.name)
        try:
            size = parse_size(req.size)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        t = tenant(request)
        if t is not None:
            used, limit = manager.volume_bytes(t.name), t.quotas.max_volume_gib << 30
            if used + size > limit:
                raise Forbidden(f"tenant {t.name}: the volume quota would be exceeded: {used >> 20} MiB in use + "
                                f"{size >> 20} MiB asked > {limit >> 20} MiB allowed")
        return (await manager.create_volume(t.name if t else None, req.name, size)).info()

    @app.get("/v1/volumes/{name}")
    async def inspect_volume(request: Request, name: str) -> dict:
        vol = manager.named_volume(tenant_of(request), name)
        return {**vol.info(), "in_use": vol.path in manager.volumes_in_use()}

    @app.delete("/v1/volumes/{name}")
    async def remove_volume(request: Request, name: str) -> dict:
        manager.remove_volume(tenant_of(request), name)
        return {"name": name}

    # ---- images ------------------------------------------------------------------------------------------
    def in_use() -> set[str]:
        return {c.image.id for p in manager.pods.values() for c in p.containers}

    def scoped(conn: HTTPConnection) -> TenantImages | None:
        name = tenant_of(conn)
        return TenantImages(images, name) if name is not None else None

    @app.get("/v1/images")
    async def list_images(request: Request) -> list[dict]:
        own = scoped(request)
        if own is not None:
            return [own.info(i) for i in await asyncio.to_thread(own.list)]
        return [_image_info(i) for i in await asyncio.to_thread(images.list)]

    @app.post("/v1/images/pull")
    async def pull_image(request: Request, req: PullRequest) -> StreamingResponse:
        creds = Credentials(req.auth.username, req.auth.password) if req.auth else None  # this pull's alone
        own = scoped(request)
        name = namespaced(own.tenant, req.ref) if own else None
        note(request, req.ref)
        return StreamingResponse(_pull_events(puller, req.ref, creds, req.platform, name,
                                              own.info if own else _image_info), media_type="application/x-ndjson")

    @app.post("/v1/images/load")
    async def load_image(request: Request) -> dict:
        own = scoped(request)
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > shutil.disk_usage(images.tmp).free:
            raise no_space(images.tmp)  # refused before a byte is kept
        with tempfile.NamedTemporaryFile(dir=images.tmp, suffix=".tar") as f:
            try:
                async for chunk in request.stream():
                    f.write(chunk)
                f.flush()
            except OSError as e:
                raise host_error(e, images.tmp) from None
            if own is not None:
                loaded = await asyncio.to_thread(own.load, Path(f.name))
                return {"loaded": [own.info(i) for i in loaded]}
            loaded = await asyncio.to_thread(archive.load, Path(f.name), images)
        return {"loaded": [_image_info(i) for i in loaded]}

    @app.get("/v1/images/save")
    async def save_images(request: Request, ref: Annotated[list[str], Query()], format: str = "docker") -> FileResponse:
        own = scoped(request)
        pick = own.for_save if own else (lambda r: (images.get(r), r))
        chosen: list[tuple[Image, str | None]] = [await asyncio.to_thread(pick, r) for r in ref]
        fd, tmp = tempfile.mkstemp(dir=images.tmp, suffix=".tar")
        os.close(fd)
        try:
            await asyncio.to_thread(archive.save, chosen, images, Path(tmp), format)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return FileResponse(tmp, media_type="application/x-tar",
                            background=BackgroundTask(lambda: Path(tmp).unlink(missing_ok=True)))

    @app.post("/v1/images/tag")
    async def tag_image(request: Request, req: TagRequest) -> dict:
        own = scoped(request)
        tag = own.tag if own else images.tag
        return {"id": await asyncio.to_thread(tag, req.source, req.target)}

    @app.post("/v1/images/prune", dependencies=admin)
    async def prune_images() -> dict:
        return await asyncio.to_thread(images.prune, in_use())

    @app.get("/v1/images/check", dependencies=admin)
    async def check_images() -> dict:
        return {"problems": await asyncio.to_thread(images.check)}

    @app.post("/v1/auth")
    async def login(req: LoginRequest) -> dict:
        """Checks credentials with the registry; nothing is kept (the client sends them with each pull)."""
        reg = Registry(req.registry, Credentials(req.username, req.password),
                       insecure=req.registry in puller.insecure)
        try:
            await reg.ping()
        finally:
            await reg.close()
        return {"status": "Login Succeeded"}

    @app.get("/v1/images/{ref:path}")
    async def inspect_image(request: Request, ref: str) -> dict:
        own = scoped(request)
        if own is not None:
            return own.info(await asyncio.to_thread(own.get, ref))
        return _image_info(await asyncio.to_thread(images.get, ref))

    @app.delete("/v1/images/{ref:path}")
    async def remove_image(request: Request, ref: str) -> dict:
        own = scoped(request)
        drop = own.remove if own else images.remove
        return {"removed": await asyncio.to_thread(drop, ref, in_use())}

    add_system_routes(app, manager, images, puller)  # push, system df and prune: api_system.py
    add_stats_routes(app, manager, pod_of)  # pod stats (hyperctl stats): api_stats.py
    add_file_routes(app, pod_of)  # cp and top: api_files.py
    add_debug_routes(app)  # hyperd's resource counts (leak checks): api_debug.py
    return app


async def _events(log: EventLog, since: float | None, until: float | None, tenant: str | None = None):
    """Recent events from `since`, then new ones until `until` (none given: until the client leaves); with
    `tenant`, only those of its pods."""
    q = log.subscribe()
    try:
        for ev in list(log.recent):
            if since is not None and ev["time"] >= since and (until is None or ev["time"] <= until) \
                    and (tenant is None or ev.get("tenant") == tenant):
                yield json.dumps(ev).encode() + b"\n"
        while until is None or time.time() < until:
            try:
                ev = await asyncio.wait_for(q.get(), None if until is None else max(0.0, until - time.time()))
            except TimeoutError:
                return
            if tenant is None or ev.get("tenant") == tenant:
                yield json.dumps(ev).encode() + b"\n"
    finally:
        log.unsubscribe(q)


async def _logs(path: Path, follow: bool, done: asyncio.Event | None, tail: int | None, since: float | None):
    """Log lines (the rotated file first), filtered by time and count; with follow, new lines until the
    container is done."""
    def keep(line: bytes) -> bool:
        if since is None:
            return True
        try:
            return dt.datetime.fromisoformat(json.loads(line)["time"]).timestamp() >= since
        except (ValueError, KeyError):
            return True

    rotated = path.with_name(path.name + ".1")
    old = [ln for ln in rotated.read_bytes().splitlines(keepends=True) if keep(ln)] if rotated.exists() else []
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally
    except FileNotFoundError:
        for ln in old[-tail:] if tail else old:
            yield ln
        return
    try:
        first = old + [ln for ln in f.read().splitlines(keepends=True) if keep(ln)]
        complete = [ln for ln in first if ln.endswith(b"\n")]
        if len(complete) != len(first):  # a line still being written: read it again below
            f.seek(-len(first[-1]), 1)
        for ln in complete[-tail:] if tail is not None else complete:
            if tail == 0:
                break
            yield ln
        while follow and done is not None:
            line = f.readline()
            if line.endswith(b"\n"):
                yield line
                continue
            if line:
                f.seek(-len(line), 1)
            if done.is_set():
                rest = f.read()
                if rest:
                    yield rest
                return
            await asyncio.sleep(0.05)
    finally:
        f.close()
