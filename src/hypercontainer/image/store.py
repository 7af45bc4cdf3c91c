"""The content-addressed image store.

    images/blobs/sha256/<hex>       configs, manifests and compressed layers, named by digest
    images/layers/sha256/<hex>/     each layer unpacked once, named by its diff-id; overlay lower dirs
    images/index.json               references and images (written atomically)
    images/tmp/                     work in progress; emptied at start

Every write lands in tmp/ first and is renamed into place, so an interrupted load leaves nothing half-made.
"""

from __future__ import annotations

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

from ..errors import ImageError, NotFound
from . import reference
from .unpack import unpack_layer


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    id: str  # sha256:<config digest>
    refs: tuple[str, ...]
    config: dict
    diff_ids: tuple[str, ...]
    layers: tuple[Path, ...]  # unpacked, bottom first
    size: int
    created: str

    @property
    def run_config(self) -> dict:
        return self.config.get("config") or {}


class _HashingReader:
    """Wraps a stream; hashes and counts what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.h.update(data)
        self.n += len(data)
        return data


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers" / "sha256"
        self.tmp = root / "tmp"
        self.index_path = root / "index.json"
        self._lock = threading.Lock()
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
        tmp = self.tmp / f"index.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.index_path)

    # ---- blobs and layers --------------------------------------------------------------------------------
    def put_blob(self, data: bytes, expect: str | None = None) -> str:
        digest = f"sha256:{sha256_hex(data)}"
        if expect and expect != digest:
            raise ImageError(f"blob digest mismatch: expected {expect}, got {digest}")
        path = self.blobs / digest.split(":")[1]
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        return digest

    def get_blob(self, digest: str) -> bytes:
        try:
            return (self.blobs / digest.split(":", 1)[1]).read_bytes()
        except (FileNotFoundError, IndexError):
            raise NotFound(f"blob {digest} is not in the store") from None

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers / diff_id.split(":", 1)[1]

    def add_layer(self, compressed: bytes, diff_id: str) -> Path:
        """Unpacks a (possibly gzip-compressed) layer unless its diff-id is already unpacked."""
        final = self.layer_dir(diff_id)
        if final.exists():
            return final
        work = Path(tempfile.mkdtemp(prefix="layer-", dir=self.tmp))
        try:
            raw: BinaryIO
            if compressed[:2] == b"\x1f\x8b":
                raw = gzip.GzipFile(fileobj=_bytes_io(compressed))
            elif compressed[:4] == b"\x28\xb5\x2f\xfd":
                raise ImageError("zstd-compressed layers are not supported yet")
            else:
                raw = _bytes_io(compressed)
            hasher = _HashingReader(raw)
            try:
                unpack_layer(hasher, work / "root")  # type: ignore[arg-type]
                while hasher.read(1 << 20):  # tar padding past the end-of-archive marker
                    pass
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise ImageError(f"layer {diff_id[:19]} cannot be read: {e}") from None
            got = f"sha256:{hasher.h.hexdigest()}"
            if got != diff_id:
                raise ImageError(f"layer content does not match its diff-id: expected {diff_id}, got {got}")
            with contextlib.suppress(FileExistsError, OSError):
                (work / "root").rename(final)
            if not final.exists():
                raise ImageError(f"could not store layer {diff_id}")
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ---- images ------------------------------------------------------------------------------------------
    def add_image(self, config_bytes: bytes, layer_blobs: list[bytes], tags: list[str]) -> Image:
        try:
            config = json.loads(config_bytes)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise ImageError("image config is not valid JSON with rootfs.diff_ids") from None
        if len(diff_ids) != len(layer_blobs):
            raise ImageError(f"image config lists {len(diff_ids)} layers but the archive has {len(layer_blobs)}")
        if config.get("os", "linux") != "linux":
            raise ImageError(f"image is for {config.get('os')}, not linux")
        refs = [str(reference.parse(t)) for t in tags]
        (self.root / "blobs").mkdir(exist_ok=True)
        size = 0
        for blob, diff_id in zip(layer_blobs, diff_ids, strict=True):
            self.put_blob(blob)
            self.add_layer(blob, diff_id)
            size += len(blob)
        image_id = self.put_blob(config_bytes)
        with self._lock:
            index = self._load_index()
            index["images"][image_id] = {"diff_ids": diff_ids, "size": size, "created": config.get("created", "")}
            for r in refs:
                index["refs"][r] = image_id
            self._save_index(index)
        return self.get(image_id)

    def get(self, ref_or_id: str) -> Image:
        index = self._load_index()
        image_id = self._resolve(index, ref_or_id)
        meta = index["images"][image_id]
        config = json.loads(self.get_blob(image_id))
        refs = tuple(sorted(r for r, i in index["refs"].items() if i == image_id))
        return Image(image_id, refs, config, tuple(meta["diff_ids"]),
                     tuple(self.layer_dir(d) for d in meta["diff_ids"]), meta["size"], meta["created"])

    def _resolve(self, index: dict, ref_or_id: str) -> str:
        if ref_or_id.startswith("sha256:") and ref_or_id in index["images"]:
            return ref_or_id
        if len(ref_or_id) >= 12 and all(c in "0123456789abcdef" for c in ref_or_id):
            matches = [i for i in index["images"] if i[7:].startswith(ref_or_id)]
            if len(matches) == 1:
                return matches[0]
        try:
            key = str(reference.parse(ref_or_id))
        except ImageError:
            key = ref_or_id
        except Exception:
            raise NotFound(f"no such image: {ref_or_id}") from None
        if key in index["refs"]:
            return index["refs"][key]
        raise NotFound(f"no such image: {ref_or_id} (load it with 'hyperctl load -i FILE')")

    def list(self) -> list[Image]:
        return [self.get(i) for i in self._load_index()["images"]]

    def remove(self, ref_or_id: str) -> list[str]:
        """Untags a reference, or removes an image by id; drops layers no other image uses."""
        with self._lock:
            index = self._load_index()
            image_id = self._resolve(index, ref_or_id)
            removed = []
            by_ref = ref_or_id != image_id and not image_id[7:].startswith(ref_or_id)
            if by_ref:
                key = str(reference.parse(ref_or_id))
                del index["refs"][key]
                removed.append(f"Untagged: {reference.parse(ref_or_id).short}")
            else:
                for r in [r for r, i in index["refs"].items() if i == image_id]:
                    del index["refs"][r]
                    removed.append(f"Untagged: {reference.parse(r).short}")
            if image_id not in index["refs"].values():
                meta = index["images"].pop(image_id)
                removed.append(f"Deleted: {image_id}")
                used = {d for m in index["images"].values() for d in m["diff_ids"]}
                for d in meta["diff_ids"]:
                    if d not in used:
                        shutil.rmtree(self.layer_dir(d), ignore_errors=True)
            self._save_index(index)
            return removed


def _bytes_io(data: bytes) -> BinaryIO:
    import io

    return io.BytesIO(data)
