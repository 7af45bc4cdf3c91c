"""Pulling an image: resolve the manifest (and the platform in an index), fetch config and layers in parallel,
verify, store, unpack. Concurrent pulls share downloads and unpacks of the same blob. The registry's mirrors, if
the registry configuration names any (mirrors.py), are tried first; the image keeps the name asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from . import reference
from .auth import Credentials
from .mirrors import RegistryHosts, Sources
from .store import Image, ImageStore, check_digest

log = logging.getLogger(__name__)
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
IMAGE_TYPES = ("application/vnd.oci.image.manifest.v1+json",
               "application/vnd.docker.distribution.manifest.v2+json")
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1"
PARALLEL = 4  # layers downloaded at once per pull (hyperd --pull-parallel)
MAX_CONFIG = 4 << 20

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> Platform:
        if not text:
            return cls()
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageError(f"invalid platform {text!r} (os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, p: dict) -> bool:
        return (p.get("os"), p.get("architecture")) == (self.os, self.architecture) and \
            (self.variant is None or p.get("variant") == self.variant)


def _parse_json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError:
        raise ImageError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def _descriptor(d: object, what: str) -> tuple[str, int]:
    if not isinstance(d, dict) or not isinstance(d.get("size"), int) or d["size"] < 0:
        raise ImageError(f"{what}: malformed descriptor")
    digest = str(d.get("digest", ""))
    check_digest(digest)
    return digest, d["size"]


class Puller:
    """One per daemon: the in-flight downloads and unpacks that concurrent pulls share."""

    def __init__(self, store: ImageStore, insecure: set[str] | None = None, parallel: int = PARALLEL,
                 hosts: RegistryHosts | None = None) -> None:
        if parallel < 1:
            raise ValueError(f"parallel downloads must be 1 or more, not {parallel}")
        self.store = store
        self.insecure = insecure or set()
        self.parallel = parallel
        self.hosts = hosts or RegistryHosts()  # mirrors: none unless a registry configuration was read
        for line in self.hosts.warnings:
            log.warning("registry config: %s", line)
        for line in self.hosts.describe():
            log.info("registry mirrors: %s", line)
        self._downloads: dict[str, asyncio.Task] = {}
        self._unpacks: dict[str, asyncio.Future[Path]] = {}

    async def pull(self, ref_text: str, creds: Credentials | None = None, platform: str | None = None,
                   progress: Progress | None = None, name: str | None = None) -> Image:
        """Pulls `ref_text` and records it under that reference, or under `name` (a tenant's own namespace)."""
        ref = reference.parse(ref_text)
        plat = Platform.parse(platform)
        emit = progress or (lambda ev: None)
        reg = Sources(ref.registry, self.hosts.hosts(ref.registry), creds, self.insecure)
        try:
            body, media, digest = await reg.manifest(ref)
            manifest = _parse_json(body, "manifest")
            media = manifest.get("mediaType") or media
            if media.startswith(SCHEMA1) or manifest.get("schemaVersion") == 1:
                raise ImageError(f"{ref.short}: Docker schema 1 manifests are not supported")
            if media in INDEX_TYPES or "manifests" in manifest:
                chosen = [m for m in manifest.get("manifests") or [] if plat.matches(m.get("platform") or {})]
                if not chosen:
                    have = ", ".join(str(Platform(**{k: v for k, v in (m.get("platform") or {}).items()
                                                     if k in ("os", "architecture", "variant")}))
                                     for m in manifest.get("manifests") or [])
                    raise ImageError(f"{ref.short}: no manifest for {plat} (the index has: {have or 'none'})")
                digest, _ = _descriptor(chosen[0], "index entry")
                body, media, digest = await reg.manifest(ref, digest)
                manifest = _parse_json(body, "manifest")
                media = manifest.get("mediaType") or media
            if media not in IMAGE_TYPES and "layers" not in manifest:
                raise ImageError(f"{ref.short}: unsupported manifest type {media!r}")
            self.store.put_blob(body, digest)
            config_digest, config_size = _descriptor(manifest.get("config"), "config")
            if config_size > MAX_CONFIG:
                raise ImageError(f"{ref.short}: image config larger than {MAX_CONFIG} bytes refused")
            layers = [_descriptor(d, f"layer {i}") for i, d in enumerate(manifest.get("layers") or [])]
            emit({"status": f"Pulling {ref.short}", "manifest": digest, "layers": len(layers)})
            await self._fetch(reg, ref, config_digest, config_size, None)
            config = _parse_json(self.store.get_blob(config_digest), "image config")
            try:
                diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
            except (KeyError, TypeError):
                raise ImageError(f"{ref.short}: image config lacks rootfs.diff_ids") from None
            if len(diff_ids) != len(layers):
                raise ImageError(f"{ref.short}: config lists {len(diff_ids)} layers, manifest {len(layers)}")
            sem = asyncio.Semaphore(self.parallel)

            async def one(blob: tuple[str, int], diff_id: str) -> None:
                d, size = blob
                short = d[7:19]
                if self.store.layer_dir(diff_id).exists() and self.store.has_blob(d):
                    emit({"id": short, "status": "Already exists", "total": size})
                    return
                async with sem:  # the blob is kept even when its diff-id is unpacked: `save` needs it
                    await self._fetch(reg, ref, d, size, lambda n: emit(
                        {"id": short, "status": "Downloading", "current": n, "total": size}), diff_id)
                if not self.store.layer_dir(diff_id).exists():
                    emit({"id": short, "status": "Extracting", "total": size})
                    await self._unpack(d, diff_id)
                emit({"id": short, "status": "Pull complete", "total": size})

            await asyncio.gather(*(one(b, d) for b, d in zip(layers, diff_ids, strict=True)))
            tags = [name] if name else [str(ref)] if ref.tag else []
            repo_digest = f"{ref.registry}/{ref.repository}@{digest}"
            image = await asyncio.to_thread(self.store.add_image, config_digest, [b for b, _ in layers], tags,
                                            repo_digest)
            emit({"status": "Downloaded", "image": image.id, "digest": digest})
            return image
        finally:
            await reg.close()

    async def _fetch(self, reg: Sources, ref: reference.Reference, digest: str, size: int,
                     progress: Callable[[int], None] | None, diff_id: str | None = None) -> None:
        """Downloads a blob unless stored (a layer is unpacked as it arrives); a second caller for the same
        digest waits for the first."""
        if self.store.has_blob(digest):
            return
        task = self._downloads.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._download(reg, ref, digest, size, progress, diff_id))
            self._downloads[digest] = task
            task.add_done_callback(lambda _t: self._downloads.pop(digest, None))
        await asyncio.shield(task)

    async def _download(self, reg: Sources, ref: reference.Reference, digest: str, size: int,
                        progress: Callable[[int], None] | None, diff_id: str | None) -> None:
        out, tmp = self.store.temp_file()
        out.close()
        tee = None
        if diff_id and not self.store.layer_dir(diff_id).exists() and diff_id not in self._unpacks:
            tee = _UnpackTee(self.store, diff_id)
            self._unpacks[diff_id] = tee.task
            tee.task.add_done_callback(lambda _t: self._unpacks.pop(diff_id, None))
        try:
            await reg.blob(ref, digest, size, tmp, progress, tee)
            # an abandoned unpack (the bytes it saw were not the ones kept): one() unpacks the stored blob
            work = await tee.finish() if tee and not tee.abandoned else None
            await asyncio.to_thread(self.store.commit_blob, tmp, digest)
            if work is not None and diff_id:
                await asyncio.to_thread(self.store.commit_layer, work, diff_id)
        except BaseException:
            if tee:
                await tee.abandon()
            raise
        finally:
            tmp.unlink(missing_ok=True)

    async def _unpack(self, blob: str, diff_id: str) -> None:
        task = self._unpacks.get(diff_id)
        if task is not None:
            with contextlib.suppress(_Abandoned):
                await asyncio.shield(task)
            if self.store.layer_dir(diff_id).exists():
                return
        task = asyncio.ensure_future(asyncio.to_thread(self.store.add_layer, blob, diff_id))
        self._unpacks[diff_id] = task
        task.add_done_callback(lambda _t: self._unpacks.pop(diff_id, None))
        await asyncio.shield(task)


class _Abandoned(Exception):
    """The download feeding a streamed unpack was abandoned (a retry unpacks from the stored blob)."""


class _ChunkReader:
    """A read()-able stream over chunks handed across threads; None ends it, an exception aborts it."""

    def __init__(self) -> None:
        self.q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=32)
        self.cur, self.pos, self.eof = b"", 0, False

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:
            if self.pos >= len(self.cur):
                if self.eof:
                    break
                item = self.q.get()
                if item is None:
                    self.eof = True
                    break
                if isinstance(item, BaseException):
                    raise item
                self.cur, self.pos = item, 0
                continue
            take = len(self.cur) - self.pos if n < 0 else min(n, len(self.cur) - self.pos)
            parts.append(self.cur[self.pos : self.pos + take])
            self.pos += take
            if n > 0:
                n -= take
        return b"".join(parts)


class _UnpackTee:
    """Unpacks a layer in a worker thread while it downloads; the result is committed only once the blob's
    digest has been verified."""

    def __init__(self, store: ImageStore, diff_id: str) -> None:
        self.reader = _ChunkReader()
        self.task: asyncio.Future[Path] = asyncio.ensure_future(
            asyncio.to_thread(store.unpack_stream, self.reader, diff_id))  # type: ignore[arg-type]
        self.done = False
        self.abandoned = False  # by a failed download attempt: what it unpacked is not the blob that is kept

    async def _put(self, item: bytes | BaseException | None) -> None:
        try:
            self.reader.q.put_nowait(item)
        except queue.Full:
            await asyncio.to_thread(self.reader.q.put, item)

    async def chunk(self, data: bytes) -> None:
        if self.task.done():  # the unpack already failed: the download goes on, the error comes at finish()
            return
        await self._put(data)

    async def finish(self) -> Path:
        self.done = True
        if not self.task.done():
            await self._put(None)
        return await self.task

    async def abandon(self) -> None:
        if self.done and self.task.done():
            if not self.task.cancelled() and self.task.exception() is None:
                shutil.rmtree(self.task.result(), ignore_errors=True)
            return
        self.done = self.abandoned = True
        if not self.task.done():
            await self._put(_Abandoned("download abandoned"))
        with contextlib.suppress(BaseException):
            work = await self.task
            shutil.rmtree(work, ignore_errors=True)
