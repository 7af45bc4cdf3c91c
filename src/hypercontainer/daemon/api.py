"""The REST API. Each route turns a request into one call on the pod manager or the image store.

This module imports nothing from vm/: the API never talks to QEMU.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from .. import __version__
from ..errors import Conflict, HCError, InvalidArgument
from ..image import archive
from ..image.auth import Credentials
from ..image.pull import Puller
from ..image.reference import parse as parse_ref
from ..image.registry import Registry
from ..image.store import Image, ImageStore
from ..pod.events import EventLog
from ..pod.manager import PodManager
from ..pod.pod import Pod
from ..protocol.codec import VERSION as PROTOCOL_VERSION
from .stdio import ContainerTarget, ProcessTarget, process_events, send_error, session

API_VERSION = "v1"


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


class CreateRequest(BaseModel):
    spec: dict


class Auth(BaseModel):
    username: str
    password: str


class PullRequest(BaseModel):
    ref: str
    platform: str | None = None
    auth: Auth | None = None


class AddContainerRequest(BaseModel):
    container: dict


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


def _image_info(img: Image) -> dict:
    return {"id": img.id, "refs": [parse_ref(r).short for r in img.refs], "size": img.size,
            "digests": [parse_ref(d).short for d in img.repo_digests], "created": img.created,
            "layers": list(img.diff_ids), "config": img.run_config,
            "architecture": img.config.get("architecture"), "os": img.config.get("os")}


async def _pull_events(puller: Puller, ref: str, creds: Credentials | None, platform: str | None):
    """Progress of one pull as NDJSON lines; the last line is the image or the error."""
    queue: asyncio.Queue[dict | None] = asyncio.Queue()
    task = asyncio.ensure_future(puller.pull(ref, creds, platform, queue.put_nowait))
    task.add_done_callback(lambda _t: queue.put_nowait(None))
    while (ev := await queue.get()) is not None:
        yield json.dumps(ev).encode() + b"\n"
    try:
        image = task.result()
        yield json.dumps({"status": "done", "image": _image_info(image)}).encode() + b"\n"
    except HCError as e:
        yield json.dumps({"error": e.body()}).encode() + b"\n"
    except Exception as e:
        yield json.dumps({"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}).encode() + b"\n"


def create_app(manager: PodManager, images: ImageStore, puller: Puller, info: DaemonInfo) -> FastAPI:
    app = FastAPI(title="hyperd", version=__version__, description="hypercontainer daemon API")

    @app.exception_handler(HCError)
    async def _hc_error(_: Request, e: HCError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return JSONResponse({"code": "invalid_argument", "message": msg}, status_code=400)

    @app.get("/v1/version")
    async def version() -> dict:
        return {"version": __version__, "api": API_VERSION, "protocol": PROTOCOL_VERSION}

    @app.get("/v1/info")
    async def get_info() -> dict:
        pods = manager.list()
        recent = list(reversed(manager.recent_boots))
        return {
            "version": __version__, "api": API_VERSION, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version(), "host_kernel": platform.release(),
            "accelerator": {"name": info.accel, "reason": info.accel_reason},
            "guest": {"kernel": info.kernel, "kernel_release": info.kernel_release, "initrd": info.initrd,
                      "agent": info.agent},
            "root": info.root,
            "cri": {"socket": info.cri_socket},
            "network": manager.network.info() if manager.network else {"mode": "none", "reason": "disabled"},
            "boot": {"policy": manager.boot, "templates": manager.templates.list() if manager.templates else [],
                     "pool": manager.pool.info() if manager.pool and manager.pool.size else None},
            "pods": {"total": len(pods), "running": sum(p["state"] == "running" for p in pods)},
            "images": len(images.list()),
            "recent_boots": recent,
        }

    # ---- pods --------------------------------------------------------------------------------------------
    @app.get("/v1/pods")
    async def list_pods() -> list[dict]:
        return manager.list()

    @app.post("/v1/pods", status_code=201)
    async def create_pod(req: CreateRequest) -> dict:
        pod = manager.create(req.spec)
        await manager.start(pod)
        return {"id": pod.id, "name": pod.name}

    @app.get("/v1/pods/{ref}")
    async def inspect_pod(ref: str) -> dict:
        return manager.get(ref).info()

    @app.delete("/v1/pods/{ref}")
    async def remove_pod(ref: str, force: bool = False) -> dict:
        return {"id": await manager.remove(ref, force=force)}

    @app.post("/v1/pods/{ref}/containers", status_code=201)
    async def add_container(ref: str, req: AddContainerRequest) -> dict:
        return {"name": await manager.add_container(ref, req.container)}

    @app.delete("/v1/pods/{ref}/containers/{name}")
    async def remove_container(ref: str, name: str, force: bool = False) -> dict:
        return {"name": await manager.remove_container(ref, name, force=force)}

    @app.get("/v1/pods/{ref}/agent")
    async def agent_stats(ref: str) -> dict:
        return await manager.get(ref).agent_stats()

    @app.post("/v1/pods/{ref}/stop")
    async def stop_pod(ref: str, timeout: float = 10.0) -> dict:
        return {"id": await manager.stop(ref, timeout)}

    @app.post("/v1/pods/{ref}/kill")
    async def kill_pod(ref: str, req: KillRequest) -> dict:
        await manager.get(ref).signal(req.container, req.signal)
        return {}

    @app.get("/v1/pods/{ref}/logs")
    async def logs(ref: str, follow: bool = False, container: str | None = None, tail: int | None = None,
                   since: float | None = None) -> StreamingResponse:
        path, done = manager.log_source(ref, container)
        return StreamingResponse(_logs(path, follow, done, tail, since), media_type="application/x-ndjson")

    @app.post("/v1/pods/{ref}/pause")
    async def pause_pod(ref: str) -> dict:
        await manager.get(ref).pause()
        return {}

    @app.post("/v1/pods/{ref}/unpause")
    async def unpause_pod(ref: str) -> dict:
        await manager.get(ref).unpause()
        return {}

    @app.get("/v1/events")
    async def events(since: float | None = None, until: float | None = None) -> StreamingResponse:
        return StreamingResponse(_events(manager.events, since, until), media_type="application/x-ndjson")

    @app.websocket("/v1/pods/{ref}/attach")
    async def attach_ws(ws: WebSocket, ref: str) -> None:
        """Output of a running container from now on, stdin to it; first client message {"container"}."""
        await ws.accept()
        try:
            req = await ws.receive_json()
            pod = manager.get(ref)
            c = pod.container((req or {}).get("container"))
            if not c.started.is_set() or c.done.is_set():
                raise Conflict(f"container {c.name} of pod {pod.name} is not running")
        except HCError as e:
            await send_error(ws, e)
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
            pod = manager.create(req["spec"])
        except HCError as e:
            await send_error(ws, e)
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
            pod = manager.get(ref)
            proc = await pod.exec(req.get("container"), [str(a) for a in req["command"]],
                                  tty=bool(req.get("tty")), stdin=bool(req.get("stdin")), user=req.get("user"),
                                  env=[str(e) for e in req.get("env") or []], workdir=req.get("workdir"),
                                  size=(int(req.get("rows") or 0), int(req.get("cols") or 0)))
        except HCError as e:
            await send_error(ws, e)
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

    # ---- images ------------------------------------------------------------------------------------------
    def in_use() -> set[str]:
        return {c.image.id for p in manager.pods.values() for c in p.containers}

    @app.get("/v1/images")
    async def list_images() -> list[dict]:
        return [_image_info(i) for i in await asyncio.to_thread(images.list)]

    @app.post("/v1/images/pull")
    async def pull_image(req: PullRequest) -> StreamingResponse:
        creds = Credentials(req.auth.username, req.auth.password) if req.auth else None
        return StreamingResponse(_pull_events(puller, req.ref, creds, req.platform),
                                 media_type="application/x-ndjson")

    @app.post("/v1/images/load")
    async def load_image(request: Request) -> dict:
        with tempfile.NamedTemporaryFile(dir=images.tmp, suffix=".tar") as f:
            async for chunk in request.stream():
                f.write(chunk)
            f.flush()
            loaded = await asyncio.to_thread(archive.load, Path(f.name), images)
        return {"loaded": [_image_info(i) for i in loaded]}

    @app.get("/v1/images/save")
    async def save_images(ref: Annotated[list[str], Query()], format: str = "docker") -> FileResponse:
        chosen: list[tuple[Image, str | None]] = [(await asyncio.to_thread(images.get, r), r) for r in ref]
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
    async def tag_image(req: TagRequest) -> dict:
        return {"id": await asyncio.to_thread(images.tag, req.source, req.target)}

    @app.post("/v1/images/prune")
    async def prune_images() -> dict:
        return await asyncio.to_thread(images.prune, in_use())

    @app.get("/v1/images/check")
    async def check_images() -> dict:
        return {"problems": await asyncio.to_thread(images.check)}

    @app.post("/v1/auth")
    async def login(req: LoginRequest) -> dict:
        reg = Registry(req.registry, Credentials(req.username, req.password),
                       insecure=req.registry in puller.insecure)
        try:
            await reg.ping()
        finally:
            await reg.close()
        return {"status": "Login Succeeded"}

    @app.get("/v1/images/{ref:path}")
    async def inspect_image(ref: str) -> dict:
        return _image_info(await asyncio.to_thread(images.get, ref))

    @app.delete("/v1/images/{ref:path}")
    async def remove_image(ref: str) -> dict:
        return {"removed": await asyncio.to_thread(images.remove, ref, in_use())}

    return app


async def _events(log: EventLog, since: float | None, until: float | None):
    """Recent events from `since`, then new ones until `until` (none given: until the client leaves)."""
    q = log.subscribe()
    try:
        for ev in list(log.recent):
            if since is not None and ev["time"] >= since and (until is None or ev["time"] <= until):
                yield json.dumps(ev).encode() + b"\n"
        while until is None or time.time() < until:
            try:
                ev = await asyncio.wait_for(q.get(), None if until is None else max(0.0, until - time.time()))
            except TimeoutError:
                return
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
