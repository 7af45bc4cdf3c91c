"""The content-addressed image store.

    images/blobs/sha256/<hex>       manifests, configs and (compressed) layers, named by digest
    images/layers/sha256/<hex>/     each layer unpacked once, named by its diff-id; overlay lower dirs
    images/index.json               references and images (written atomically)
    images/tmp/                     work in progress; emptied at start

Every write lands in tmp/ first, is fsynced and renamed into place, so a kill -9 at any point leaves a store that
`check()` finds consistent: at worst some unreferenced blobs, which `prune()` removes.
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import ImageError, NotFound
from . import reference
from .unpack import unpack_layer

GZIP_MAGIC = b"\x1f\x8b"
BOMB_FLOOR = 256 << 20
BOMB_RATIO = 200
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """The hex part of a sha256 digest; anything else is refused (digests end up in paths)."""
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ImageError(f"unsupported or invalid digest {digest!r}")
    return hexd


@dataclass(frozen=True)
class Image:
    id: str  # sha256:<config digest>
    refs: tuple[str, ...]
    repo_digests: tuple[str, ...]
    config: dict
    diff_ids: tuple[str, ...]
    blobs: tuple[str, ...]  # layer blob digests, bottom first
    layers: tuple[Path, ...]  # unpacked, bottom first
    size: int
    created: str

    @property
    def run_config(self) -> dict:
        return self.config.get("config") or {}


class _CountingReader:
    """Wraps a stream; counts what is read through it (the compressed bytes under a decompressor: their digest is
    the blob's, checked where the blob is stored)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.n += len(data)
        return data


class _HashingReader:
    """Wraps a stream; hashes and counts what is read through it. With `compressed` (the counting reader under
    the decompressor) it also refuses a decompression bomb: past BOMB_FLOOR bytes, an expansion over
    BOMB_RATIO times."""

    def __init__(self, raw: BinaryIO, compressed: _CountingReader | None = None) -> None:
        self.raw = raw
        self.compressed = compressed
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.h.update(data)
        self.n += len(data)
        c = self.compressed
        if c is not None and self.n > BOMB_FLOOR and self.n > BOMB_RATIO * max(c.n, 1):
            raise ImageError(f"layer expands more than {BOMB_RATIO} times ({c.n} bytes to over {self.n}): "
                             "refused as a decompression bomb")
        return data


class _Prefixed:
    """A stream with bytes already read from it put back in front (works on pipes: no seek)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            out = self.head if size < 0 or size >= len(self.head) else self.head[:size]
            self.head = self.head[len(out) :]
            if size < 0:
                return out + self.rest.read()
            return out
        return self.rest.read(size)


def open_layer(f: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer blob: gzip, zstd or plain, told apart by magic."""
    head = f.read(4)
    raw: BinaryIO = _Prefixed(head, f)  # type: ignore[assignment]
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers" / "sha256"
        self.tmp = root / "tmp"
        self.index_path = root / "index.json"
        self._lock = threading.RLock()
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # layers may hold setuid files: no other host user may reach them
        for d in (self.blobs, self.layers):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)

    # ---- index -------------------------------------------------------------------------------------------
    def _load_index(self) -> dict:
        try:
            return json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {"refs": {}, "images": {}}

    def _save_index(self, index: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="index.")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.index_path)

    # ---- blobs -------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def temp_file(self) -> tuple[BinaryIO, Path]:
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="blob.")
        return os.fdopen(fd, "wb"), Path(tmp)

    def commit_blob(self, tmp: Path, digest: str) -> Path:
        """Renames a fully written and verified temp file into place."""
        final = self.blob_path(digest)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(tmp, final)
        return final

    def ingest(self, stream: BinaryIO, expect: str | None = None, limit: int | None = None) -> str:
        """Copies a stream into a blob, verifying the digest (and size limit) as it goes."""
        out, tmp = self.temp_file()
        h = hashlib.sha256()
        n = 0
        try:
            with out:
                while chunk := stream.read(1 << 20):
                    n += len(chunk)
                    if limit is not None and n > limit:
                        raise ImageError(f"blob larger than {limit} bytes")
                    h.update(chunk)
                    out.write(chunk)
            digest = f"sha256:{h.hexdigest()}"
            if expect and expect != digest:
                raise ImageError(f"blob digest mismatch: expected {expect}, got {digest}")
            self.commit_blob(tmp, digest)
            return digest
        finally:
            tmp.unlink(missing_ok=True)

    def put_blob(self, data: bytes, expect: str | None = None) -> str:
        import io

        return self.ingest(io.BytesIO(data), expect)

    def get_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    # ---- layers ------------------------------------------------------------------------------------------
    def layer_dir(self, diff_id: str) -> Path:
        return self.layers / check_digest(diff_id)

    def unpack_stream(self, stream: BinaryIO, diff_id: str) -> Path:
        """Unpacks a layer (compressed or not) into a temp directory and checks its diff-id; commit_layer()
        puts it in place. The caller may still be downloading: `stream` can be a pipe."""
        work = Path(tempfile.mkdtemp(prefix="layer-", dir=self.tmp))
        try:
            counted = _CountingReader(stream)
            hasher = _HashingReader(open_layer(counted), compressed=counted)  # type: ignore[arg-type]
            try:
                unpack_layer(hasher, work / "root")  # type: ignore[arg-type]
                while hasher.read(1 << 20):  # whatever follows the end-of-archive marker counts too
                    pass
            except (OSError, EOFError, zstandard.ZstdError) as e:
                raise ImageError(f"layer {diff_id[:19]} cannot be read: {e}") from None
            got = f"sha256:{hasher.h.hexdigest()}"
            if got != diff_id:
                raise ImageError(f"layer content does not match its diff-id: expected {diff_id}, got {got}")
            return work
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def commit_layer(self, work: Path, diff_id: str) -> Path:
        final = self.layer_dir(diff_id)
        try:
            with contextlib.suppress(OSError):  # another pull may have committed the same layer first
                (work / "root").rename(final)
            if not final.exists():
                raise ImageError(f"could not store layer {diff_id}")
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def add_layer(self, blob_digest: str, diff_id: str) -> Path:
        """Unpacks a stored layer blob unless its diff-id is already unpacked."""
        if self.layer_dir(diff_id).exists():
            return self.layer_dir(diff_id)
        with open(self.blob_path(blob_digest), "rb") as f:
            work = self.unpack_stream(f, diff_id)
        return self.commit_layer(work, diff_id)

    # ---- images ------------------------------------------------------------------------------------------
    def add_image(self, config_digest: str, layer_blobs: list[str], tags: list[str],
                  repo_digest: str | None = None) -> Image:
        """Registers an image whose config and layer blobs are stored; unpacks its layers."""
        try:
            config = json.loads(self.get_blob(config_digest))
            diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        except (ValueError, KeyError, TypeError):
            raise ImageError("image config is not valid JSON with rootfs.diff_ids") from None
        if len(diff_ids) != len(layer_blobs):
            raise ImageError(f"image config lists {len(diff_ids)} layers but the manifest has {len(layer_blobs)}")
        if config.get("os", "linux") != "linux":
            raise ImageError(f"image is for {config.get('os')}, not linux")
        refs = [str(reference.parse(t)) for t in tags]
        for blob, diff_id in zip(layer_blobs, diff_ids, strict=True):
            self.add_layer(blob, diff_id)
        size = sum(self.blob_path(b).stat().st_size for b in layer_blobs)
        with self._lock:
            index = self._load_index()
            prev = index["images"].get(config_digest, {})
            digests = set(prev.get("repo_digests", [])) | ({repo_digest} if repo_digest else set())
            index["images"][config_digest] = {"diff_ids": diff_ids, "blobs": layer_blobs, "size": size,
                                              "created": str(config.get("created", "")),
                                              "repo_digests": sorted(digests)}
            for r in refs:
                index["refs"][r] = config_digest
            self._save_index(index)
        return self.get(config_digest)

    def get(self, ref_or_id: str) -> Image:
        with self._lock:
            index = self._load_index()
            image_id = self._resolve(index, ref_or_id)
            meta = index["images"][image_id]
        config = json.loads(self.get_blob(image_id))
        refs = tuple(sorted(r for r, i in index["refs"].items() if i == image_id))
        return Image(image_id, refs, tuple(meta.get("repo_digests", [])), config, tuple(meta["diff_ids"]),
                     tuple(meta.get("blobs", [])), tuple(self.layer_dir(d) for d in meta["diff_ids"]),
                     meta["size"], meta["created"])

    def _resolve(self, index: dict, ref_or_id: str) -> str:
        if ref_or_id.startswith("sha256:") and ref_or_id in index["images"]:
            return ref_or_id
        if len(ref_or_id) >= 12 and all(c in "0123456789abcdef" for c in ref_or_id):
            matches = [i for i in index["images"] if i[7:].startswith(ref_or_id)]
            if len(matches) == 1:
                return matches[0]
        try:
            ref = reference.parse(ref_or_id)
        except ImageError:
            raise NotFound(f"no such image: {ref_or_id}") from None
        except Exception:
            raise NotFound(f"no such image: {ref_or_id}") from None
        if ref.digest:
            repo = f"{ref.registry}/{ref.repository}@{ref.digest}"
            for image_id, meta in index["images"].items():
                if repo in meta.get("repo_digests", []):
                    return image_id
        elif str(ref) in index["refs"]:
            return index["refs"][str(ref)]
        raise NotFound(f"no such image: {ref_or_id} (pull it with 'hyperctl pull {ref_or_id}' "
                       "or load it with 'hyperctl load -i FILE')")

    def list(self) -> list[Image]:
        with self._lock:
            ids = list(self._load_index()["images"])
        return [self.get(i) for i in ids]

    def tag(self, source: str, target: str) -> str:
        with self._lock:
            index = self._load_index()
            image_id = self._resolve(index, source)
            ref = reference.parse(target)
            if ref.digest:
                raise ImageError("a tag cannot carry a digest")
            index["refs"][str(ref)] = image_id
            self._save_index(index)
            return image_id

    def remove(self, ref_or_id: str, in_use: set[str] | None = None) -> builtins.list[str]:
        """Untags a reference, or removes an image by id; removes the image and the layers no other image
        uses once no reference is left. Images in `in_use` keep their last reference."""
        with self._lock:
            index = self._load_index()
            image_id = self._resolve(index, ref_or_id)
            refs = [r for r, i in index["refs"].items() if i == image_id]
            by_id = image_id == ref_or_id or image_id[7:].startswith(ref_or_id)
            targets = refs if by_id else [str(reference.parse(ref_or_id))]
            if in_use and image_id in in_use and len(targets) == len(refs):
                raise ImageError(f"image {ref_or_id} is used by a pod; remove the pod first")
            removed = []
            for r in targets:
                index["refs"].pop(r, None)
                removed.append(f"Untagged: {reference.parse(r).short}")
            if image_id not in index["refs"].values():
                self._drop_image(index, image_id)
                removed.append(f"Deleted: {image_id}")
            self._save_index(index)
            return removed

    def _drop_image(self, index: dict, image_id: str) -> None:
        meta = index["images"].pop(image_id)
        used = {d for m in index["images"].values() for d in m["diff_ids"]}
        for d in meta["diff_ids"]:
            if d not in used:
                shutil.rmtree(self.layer_dir(d), ignore_errors=True)

    def prune(self, in_use: set[str] | None = None) -> dict:
        """Removes untagged images (not in use), then blobs and layers nothing refers to."""
        with self._lock:
            index = self._load_index()
            tagged = set(index["refs"].values()) | (in_use or set())
            dropped = [i for i in index["images"] if i not in tagged]
            for i in dropped:
                self._drop_image(index, i)
            self._save_index(index)
            keep_blobs = {check_digest(i) for i in index["images"]}
            keep_blobs |= {check_digest(b) for m in index["images"].values() for b in m.get("blobs", [])}
            keep_layers = {check_digest(d) for m in index["images"].values() for d in m["diff_ids"]}
            freed = 0
            for p in self.blobs.iterdir():
                if p.name not in keep_blobs:
                    freed += p.stat().st_size
                    p.unlink()
            for p in self.layers.iterdir():
                if p.name not in keep_layers:
                    shutil.rmtree(p, ignore_errors=True)
        return {"images": dropped, "bytes_freed": freed}

    def check(self) -> builtins.list[str]:
        """Consistency problems, empty when the store is sound: every reference resolves, every image has its
        config and layer blobs with the right digests, every diff-id is unpacked."""
        problems = []
        with self._lock:
            index = self._load_index()
            for ref, image_id in index["refs"].items():
                if image_id not in index["images"]:
                    problems.append(f"reference {ref} points to missing image {image_id}")
            for image_id, meta in index["images"].items():
                for digest in [image_id, *meta.get("blobs", [])]:
                    path = self.blob_path(digest)
                    if not path.exists():
                        problems.append(f"image {image_id[:19]}: blob {digest[:19]} is missing")
                        continue
                    h = hashlib.sha256()
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                    if f"sha256:{h.hexdigest()}" != digest:
                        problems.append(f"blob {digest[:19]} does not match its digest")
                for d in meta["diff_ids"]:
                    if not self.layer_dir(d).is_dir():
                        problems.append(f"image {image_id[:19]}: layer {d[:19]} is not unpacked")
        return problems
