"""Pushing an image to a registry (Docker Registry HTTP API v2 / OCI distribution).

Each blob (layers, then the config) is checked first (HEAD); one the registry has in another repository of the
image is mounted from there; the rest are uploaded: POST for an upload, then one PUT with the digest, or PATCHes
of CHUNK bytes and a closing PUT for a larger blob. The manifest comes last: the one the image was pulled with when
the store still has it (so the digest stays the same), else an OCI manifest built from the stored blobs. Auth,
retries and the plain-HTTP rules are the Registry client's, as for pulls.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from ..errors import ImageError, InvalidArgument
from . import reference
from .auth import Credentials
from .registry import AuthError, Registry, RegistryError
from .store import GZIP_MAGIC, ZSTD_MAGIC, Image, ImageStore, check_digest

log = logging.getLogger(__name__)
CHUNK = 16 << 20  # blobs above this go up in PATCHes of this size
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_TYPES = (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class Pushed:
    ref: str  # registry/repository:tag
    digest: str  # the manifest's
    size: int  # the manifest's bytes


def layer_media_type(store: ImageStore, digest: str) -> str:
    """The OCI media type of a stored layer blob, told by its magic."""
    with open(store.blob_path(digest), "rb") as f:
        head = f.read(4)
    if head[:2] == GZIP_MAGIC:
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head == ZSTD_MAGIC:
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


def original_manifest(store: ImageStore, img: Image) -> tuple[bytes, str] | None:
    """The manifest the image came with (bytes, media type), if the store still has one that names exactly its
    config and layer blobs."""
    for rd in img.repo_digests:
        digest = rd.rpartition("@")[2]
        try:
            check_digest(digest)
            if not store.has_blob(digest):
                continue
            body = store.get_blob(digest)
            m = json.loads(body)
            media = m.get("mediaType") or (OCI_MANIFEST if "config" in m else "")
            if media not in IMAGE_TYPES:
                continue
            if m["config"]["digest"] == img.id and [d["digest"] for d in m["layers"]] == list(img.blobs):
                return body, media
        except (ValueError, KeyError, TypeError, ImageError):
            continue
    return None


def build_manifest(store: ImageStore, img: Image) -> tuple[bytes, str]:
    """An OCI image manifest for the stored config and layer blobs."""
    layers = [{"mediaType": layer_media_type(store, b), "digest": b, "size": store.blob_path(b).stat().st_size}
              for b in img.blobs]
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": {"mediaType": OCI_CONFIG, "digest": img.id, "size": store.blob_path(img.id).stat().st_size},
         "layers": layers}
    return json.dumps(m, indent=3).encode(), OCI_MANIFEST


class Uploader:
    """The push half of the registry protocol, on a Registry client."""

    def __init__(self, reg: Registry, ref: reference.Reference) -> None:
        self.reg, self.ref = reg, ref
        self.scope = f"repository:{ref.repository}:pull,push"

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code in (401, 403):
            hint = "check the credentials" if self.reg.creds else f"log in with 'hyperctl login {self.reg.host}'"
            raise AuthError(f"{self.reg.host}: push to {self.ref.repository} denied ({r.status_code}); {hint}")
        if r.status_code >= 400:
            detail = ""
            try:
                errs = r.json().get("errors") or []
                detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)
            except ValueError:
                pass
            raise RegistryError(f"{self.reg.host}: {what} answered {r.status_code}{f' ({detail})' if detail else ''}")

    def _location(self, r: httpx.Response) -> str:
        loc = r.headers.get("location")
        if not loc:
            raise RegistryError(f"{self.reg.host}: an upload without a Location")
        return urljoin(str(r.request.url), loc)

    async def exists(self, digest: str) -> bool:
        r = await self.reg._send("HEAD", f"{self.ref.repository}/blobs/{digest}", self.scope)
        if r.status_code == 404:
            return False
        self._check(r, f"blob {digest[:19]} check")
        return True

    async def start(self, digest: str, mount_from: str | None = None) -> str | None:
        """An upload's address; None when the blob was mounted from `mount_from` (a repository of this registry)."""
        params = {"mount": digest, "from": mount_from} if mount_from else {}
        r = await self.reg._send("POST", f"{self.ref.repository}/blobs/uploads/", self.scope, params=params)
        if r.status_code == 201 and mount_from:
            return None
        self._check(r, "upload start")
        return self._location(r)

    async def upload(self, store: ImageStore, digest: str, location: str, size: int,
                     progress: Callable[[int], None]) -> None:
        path = store.blob_path(digest)
        if size <= CHUNK:
            data = await asyncio.to_thread(path.read_bytes)
            r = await self.reg._send("PUT", "", self.scope, {"Content-Type": "application/octet-stream"},
                                     url=location, content=data, params={"digest": digest})
            self._check(r, f"blob {digest[:19]} upload")
            progress(size)
            return
        done = 0
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{done}-{done + len(chunk) - 1}"}
                r = await self.reg._send("PATCH", "", self.scope, headers, url=location, content=chunk, params={})
                self._check(r, f"blob {digest[:19]} chunk at {done}")
                location = self._location(r)
                done += len(chunk)
                progress(done)
        r = await self.reg._send("PUT", "", self.scope, url=location, content=b"", params={"digest": digest})
        self._check(r, f"blob {digest[:19]} upload end")

    async def manifest(self, body: bytes, media: str, tag: str) -> str:
        r = await self.reg._send("PUT", f"{self.ref.repository}/manifests/{tag}", self.scope,
                                 {"Content-Type": media}, content=body, params={})
        self._check(r, "manifest upload")
        return r.headers.get("docker-content-digest", "")


class Pusher:
    """Pushes stored images; `insecure`: registries reached over plain HTTP (as for pulls)."""

    def __init__(self, store: ImageStore, insecure: set[str] | None = None) -> None:
        self.store = store
        self.insecure = insecure or set()

    @staticmethod
    def _pushing(emit: Progress, short: str, total: int, current: int) -> None:
        emit({"id": short, "status": "Pushing", "current": current, "total": total})

    async def push(self, img: Image, target: str, creds: Credentials | None = None,
                   progress: Progress | None = None) -> Pushed:
        """Pushes `img` as `target` (registry/repository:tag)."""
        ref = reference.parse(target)
        if ref.digest:
            raise InvalidArgument(f"push {target}: a pushed name has a tag, not a digest")
        tag = ref.tag or "latest"
        for digest in [*img.blobs, img.id]:
            if not self.store.has_blob(digest):
                raise ImageError(f"push {target}: blob {digest[:19]} of image {img.id[7:19]} is not in the store "
                                 "(pull or load the image again)")
        emit = progress or (lambda ev: None)
        got = original_manifest(self.store, img)
        body, media = got if got else build_manifest(self.store, img)
        manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        # a repository of the same registry that has these blobs already: mount rather than upload
        mount_from = next((r.repository for r in (reference.parse(d) for d in img.repo_digests)
                           if r.registry == ref.registry and r.repository != ref.repository), None)
        reg = Registry(ref.registry, creds, insecure=ref.registry in self.insecure)
        up = Uploader(reg, ref)
        emit({"status": f"The push refers to repository [{ref.registry}/{ref.repository}]"})
        try:
            for digest in [*img.blobs, img.id]:
                short = digest[7:19]
                size = self.store.blob_path(digest).stat().st_size
                emit({"id": short, "status": "Preparing", "current": 0, "total": size})
                if await up.exists(digest):
                    emit({"id": short, "status": "Layer already exists", "current": size, "total": size})
                    continue
                try:
                    location = await up.start(digest, mount_from)
                except AuthError:  # no access to the other repository: upload
                    if not mount_from:
                        raise
                    location = await up.start(digest)
                if location is None:
                    emit({"id": short, "status": f"Mounted from {mount_from}", "current": size, "total": size})
                    continue
                await up.upload(self.store, digest, location, size, functools.partial(self._pushing, emit, short, size))
                emit({"id": short, "status": "Pushed", "current": size, "total": size})
            sent = await up.manifest(body, media, tag)
            if sent and sent != manifest_digest:
                raise RegistryError(f"{reg.host}: the registry took the manifest as {sent}, not {manifest_digest}")
        finally:
            await reg.close()
        if not self.store.has_blob(manifest_digest):
            self.store.put_blob(body, manifest_digest)
        # the image now has this repository's digest too (as a pull would record it)
        await asyncio.to_thread(self.store.add_image, img.id, list(img.blobs), [],
                                f"{ref.registry}/{ref.repository}@{manifest_digest}")
        emit({"status": f"{tag}: digest: {manifest_digest} size: {len(body)}"})
        return Pushed(f"{ref.registry}/{ref.repository}:{tag}", manifest_digest, len(body))
