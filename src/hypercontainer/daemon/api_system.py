"""The API's push and system routes (added to the app by create_app):

    POST /v1/images/push    push an image to a registry (NDJSON progress); a tenant pushes only images it named,
                            with the credentials it sends (never kept)
    GET  /v1/system/df      disk usage: images, layers, pods, volumes, logs, templates; a tenant sees its own
                            images, pods, volumes and logs only
    POST /v1/system/prune   stopped pods, unused images (dangling, or every unused one with `all`), unreferenced
                            blobs and layers: the administrator's
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from ..errors import HCError, NotFound
from ..image.auth import Credentials
from ..image.pull import Puller
from ..image.push import Pusher
from ..image.reference import parse as parse_ref
from ..image.store import Image, ImageStore
from ..pod.manager import PodManager
from .auth import admin_only, note, tenant_of
from .tenant_images import TenantImages, namespaced

STOPPED = ("exited", "failed")  # the pod states prune removes
Items = list[dict[str, Any]]


class PushAuth(BaseModel):
    username: str
    password: str


class PushRequest(BaseModel):
    ref: str
    auth: PushAuth | None = None


class PruneRequest(BaseModel):
    all: bool = False  # every image no pod uses, not only the dangling ones


def disk_usage(path: Path) -> int:
    """Bytes `path` takes on disk (allocated blocks: sparse files count what they hold), not following links."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_blocks * 512
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]  # a pod's mounts are not its own
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _section(items: list[dict], active: int, reclaimable: int) -> dict:
    return {"total": len(items), "active": active, "size": sum(int(i["size"]) for i in items),
            "reclaimable": reclaimable, "items": items}


async def _events(work: Callable[[Callable[[dict], None]], Coroutine[Any, Any, dict]]) -> AsyncIterator[bytes]:
    """NDJSON progress of `work` (given an emit function); the last line is {"status": "done", ...} or the error."""
    queue: asyncio.Queue[dict | None] = asyncio.Queue()
    task = asyncio.ensure_future(work(queue.put_nowait))
    task.add_done_callback(lambda _t: queue.put_nowait(None))
    while (ev := await queue.get()) is not None:
        yield json.dumps(ev).encode() + b"\n"
    try:
        yield json.dumps({"status": "done", **task.result()}).encode() + b"\n"
    except HCError as e:
        yield json.dumps({"error": e.body()}).encode() + b"\n"
    except Exception as e:
        yield json.dumps({"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}).encode() + b"\n"


def add_system_routes(app: FastAPI, manager: PodManager, images: ImageStore, puller: Puller) -> None:
    pusher = Pusher(images, puller.insecure)
    admin = [Depends(admin_only)]

    def in_use() -> set[str]:
        return {c.image.id for p in manager.pods.values() for c in p.containers}

    def scoped(conn: HTTPConnection) -> TenantImages | None:
        name = tenant_of(conn)
        return TenantImages(images, name) if name is not None else None

    def to_push(own: TenantImages | None, ref: str) -> Image:
        """The image `ref` names, by a name of the caller's (an id or a digest is no name to push as)."""
        missing = NotFound(f"no such image: {ref} (pull it with 'hyperctl pull {ref}' or load it with "
                           "'hyperctl load -i FILE')")  # as for any other image route
        try:
            stored = namespaced(own.tenant, ref) if own else str(parse_ref(ref))
            img = images.get(stored)
        except (NotFound, HCError):
            raise missing from None
        if stored not in img.refs:
            raise missing
        return img

    @app.post("/v1/images/push")
    async def push_image(request: Request, req: PushRequest) -> StreamingResponse:
        creds = Credentials(req.auth.username, req.auth.password) if req.auth else None  # this push's alone
        img = await asyncio.to_thread(to_push, scoped(request), req.ref)
        note(request, req.ref)

        async def work(emit: Callable[[dict], None]) -> dict:
            pushed = await pusher.push(img, req.ref, creds, emit)
            return {"push": {"ref": parse_ref(pushed.ref).short, "digest": pushed.digest, "size": pushed.size,
                             "image": img.id}}

        return StreamingResponse(_events(work), media_type="application/x-ndjson")

    def df(tenant: str | None) -> dict:
        used = in_use()
        own = TenantImages(images, tenant) if tenant is not None else None
        imgs = own.list() if own else images.list()
        image_items: Items = [
            {"id": i.id, "refs": own.info(i)["refs"] if own else [parse_ref(r).short for r in i.refs],
             "size": i.size, "active": i.id in used} for i in imgs]
        out: dict[str, Any] = {"images": _section(image_items, sum(i["active"] for i in image_items),
                                                  sum(i["size"] for i in image_items if not i["active"]))}
        pods = manager.list(tenant)
        pod_items: Items = [{"id": p["id"], "name": p["name"], "state": p["state"],
                      "size": disk_usage(manager.poddir / p["id"])} for p in pods]
        out["pods"] = _section(pod_items, sum(p["state"] == "running" for p in pods),
                               sum(p["size"] for p in pod_items if p["state"] in STOPPED))
        vols = manager.volumes.all(tenant) if manager.volumes is not None else []
        busy = manager.volumes_in_use()
        vol_items: Items = [{"name": v.name, "capacity": v.size, "size": disk_usage(v.path),
                             "active": v.path in busy} for v in vols]
        out["volumes"] = _section(vol_items, sum(v["active"] for v in vol_items),
                                  sum(v["size"] for v in vol_items if not v["active"]))
        log_items: Items = [{"pod": p["id"], "size": disk_usage(manager.poddir / p["id"] / "logs")}
                            for p in pods]
        out["logs"] = _section(log_items, sum(p["state"] == "running" for p in pods),
                               sum(li["size"] for li, p in zip(log_items, pods, strict=True) if p["state"] in STOPPED))
        if tenant is None:  # the daemon's own: shared by everyone
            layer_items: Items = [{"id": f"sha256:{p.name}", "size": disk_usage(p)}
                                  for p in sorted(images.layers.iterdir())]
            busy_layers = {d for i in imgs if i.id in used for d in i.diff_ids}
            out["layers"] = _section(layer_items, sum(li["id"] in busy_layers for li in layer_items),
                                     sum(li["size"] for li in layer_items if li["id"] not in busy_layers))
            tpl_items: Items = []
            if manager.templates is not None and manager.templates.home.exists():
                tpl_items = [{"key": d.name, "size": disk_usage(d)} for d in sorted(manager.templates.home.iterdir())]
            out["templates"] = _section(tpl_items, len(tpl_items), 0)
        return out

    @app.get("/v1/system/df")
    async def system_df(request: Request) -> dict:
        return await asyncio.to_thread(df, tenant_of(request))

    @app.post("/v1/system/prune", dependencies=admin)
    async def system_prune(req: PruneRequest) -> dict:
        def usage() -> int:
            return disk_usage(images.root) + disk_usage(manager.poddir)

        before = await asyncio.to_thread(usage)
        pods = []
        for p in manager.list():
            if p["state"] in STOPPED:
                pods.append(await manager.remove(p["id"]))
        used = in_use()
        removed: list[str] = []
        if req.all:
            for img in await asyncio.to_thread(images.list):
                if img.id not in used:
                    await asyncio.to_thread(images.remove, img.id, used)
                    removed.append(img.id)
        pruned = await asyncio.to_thread(images.prune, used)
        after = await asyncio.to_thread(usage)
        return {"pods": pods, "images": removed + pruned["images"], "bytes_freed": max(0, before - after)}
