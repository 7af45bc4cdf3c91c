"""CRI v1 ImageService over hyperd's image store and puller."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument, NotFound
from ..image.auth import Credentials
from ..image.pull import Puller
from ..image.store import Image, ImageStore
from ..pod.manager import PodManager
from .api import pb, rpc
from .errors import stream, unary

FS_CACHE_SECONDS = 10.0  # ImageFsInfo walks the store; the kubelet asks every few seconds


def credentials(auth: Any) -> Credentials | None:
    """The request's AuthConfig: username/password, or `auth` (base64 of user:password). Identity and registry
    tokens (OAuth refresh / bearer tokens) are not supported by hyperd's registry client: refused, not ignored."""
    if auth.identity_token or auth.registry_token:
        raise InvalidArgument("PullImage: identity_token and registry_token are not supported; give username and "
                              "password (or auth)")
    if auth.username or auth.password:
        return Credentials(auth.username, auth.password)
    if auth.auth:
        try:
            user, sep, password = base64.b64decode(auth.auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("PullImage: auth is not base64 of USER:PASSWORD") from None
        if not sep:
            raise InvalidArgument("PullImage: auth is not base64 of USER:PASSWORD")
        return Credentials(user, password)
    return None


def image_message(img: Image) -> Any:
    """As containerd reports it: the numeric uid of the image's User, else its name."""
    msg = pb.Image(id=img.id, repo_tags=list(img.refs), repo_digests=list(img.repo_digests), size=img.size,
                   spec=pb.ImageSpec(image=img.id))
    user = str(img.run_config.get("User") or "").split(":")[0]
    if user.isdigit():
        msg.uid.CopyFrom(pb.Int64Value(value=int(user)))
    elif user:
        msg.username = user
    return msg


def _usage(root: Path) -> tuple[int, int]:
    """Allocated bytes and inodes under root (not following symlinks, not leaving its filesystem)."""
    size = inodes = 0
    try:
        dev = root.stat().st_dev
    except OSError:
        return 0, 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    inodes += 1
                    size += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False) and st.st_dev == dev:
                        stack.append(e.path)
        except OSError:
            continue
    return size, inodes


class ImageService(rpc.ImageServiceServicer):
    def __init__(self, images: ImageStore, puller: Puller, manager: PodManager) -> None:
        self.images, self.puller, self.manager = images, puller, manager
        self._fs: tuple[float, list[Any], list[Any]] | None = None

    def _in_use(self) -> set[str]:
        return {c.image.id for p in self.manager.pods.values() for c in p.containers}

    def _list(self, f: Any) -> list[Any]:
        if f.image.image:
            try:
                return [image_message(self.images.get(f.image.image))]
            except NotFound:
                return []
        return [image_message(i) for i in self.images.list()]

    @unary
    async def ListImages(self, request: Any, context: Any) -> Any:
        return pb.ListImagesResponse(images=await asyncio.to_thread(self._list, request.filter))

    @stream
    async def StreamImages(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.StreamImagesResponse(images=await asyncio.to_thread(self._list, request.filter))

    @unary
    async def ImageStatus(self, request: Any, context: Any) -> Any:
        if not request.image.image:
            raise InvalidArgument("ImageStatus: no image given")
        try:
            img = await asyncio.to_thread(self.images.get, request.image.image)
        except NotFound:  # the CRI: no image is a response without one, not an error
            return pb.ImageStatusResponse()
        info = {}
        if request.verbose:
            info["info"] = json.dumps({"id": img.id, "refs": list(img.refs), "digests": list(img.repo_digests),
                                       "created": img.created, "size": img.size, "layers": list(img.diff_ids),
                                       "config": img.run_config, "architecture": img.config.get("architecture"),
                                       "os": img.config.get("os")})
        return pb.ImageStatusResponse(image=image_message(img), info=info)

    @unary
    async def PullImage(self, request: Any, context: Any) -> Any:
        ref = request.image.image
        if not ref:
            raise InvalidArgument("PullImage: no image given")
        img = await self.puller.pull(ref, credentials(request.auth))
        return pb.PullImageResponse(image_ref=img.id)

    @unary
    async def RemoveImage(self, request: Any, context: Any) -> Any:
        ref = request.image.image
        if not ref:
            raise InvalidArgument("RemoveImage: no image given")
        with contextlib.suppress(NotFound):  # the CRI: removing an image that is not there is not an error
            await asyncio.to_thread(self.images.remove, ref, self._in_use())
        return pb.RemoveImageResponse()

    def _fs_info(self) -> tuple[list[Any], list[Any]]:
        if self._fs and time.monotonic() - self._fs[0] < FS_CACHE_SECONDS:
            return self._fs[1], self._fs[2]
        now = time.time_ns()
        out = []
        for root in (self.images.root, self.manager.poddir):
            size, inodes = _usage(root)
            out.append([pb.FilesystemUsage(timestamp=now, fs_id=pb.FilesystemIdentifier(mountpoint=str(root)),
                                           used_bytes=pb.UInt64Value(value=size),
                                           inodes_used=pb.UInt64Value(value=inodes))])
        self._fs = (time.monotonic(), out[0], out[1])
        return out[0], out[1]

    @unary
    async def ImageFsInfo(self, request: Any, context: Any) -> Any:
        images, containers = await asyncio.to_thread(self._fs_info)
        return pb.ImageFsInfoResponse(image_filesystems=images, container_filesystems=containers)
