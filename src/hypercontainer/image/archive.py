"""Image archives: load and save docker-archive (`docker save`) and OCI image layout tarballs."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ImageError
from . import reference
from .store import Image, ImageStore, check_digest

MAX_METADATA = 4 << 20  # manifest.json, index.json, configs, manifests
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
Names = Callable[[list[str]], list[str]]  # the names an archive gives an image -> those it is recorded under


def _member(tf: tarfile.TarFile, name: str, limit: int | None = None) -> tarfile.TarInfo:
    name = name.removeprefix("./")
    for candidate in (name, "./" + name):
        try:
            member = tf.getmember(candidate)
            break
        except KeyError:
            continue
    else:
        raise ImageError(f"archive lacks {name}")
    if not member.isreg():
        raise ImageError(f"archive entry {name} is not a regular file")
    if limit is not None and member.size > limit:
        raise ImageError(f"archive entry {name} is larger than {limit} bytes")
    return member


def _read(tf: tarfile.TarFile, name: str, limit: int = MAX_METADATA) -> bytes:
    f = tf.extractfile(_member(tf, name, limit))
    assert f is not None
    return f.read()


def _ingest(tf: tarfile.TarFile, store: ImageStore, name: str, expect: str | None = None) -> str:
    f = tf.extractfile(_member(tf, name))
    assert f is not None
    return store.ingest(f, expect)  # type: ignore[arg-type]


def _json(tf: tarfile.TarFile, name: str) -> object:
    try:
        return json.loads(_read(tf, name))
    except ValueError:
        raise ImageError(f"archive entry {name} is not valid JSON") from None


def _load_docker(tf: tarfile.TarFile, store: ImageStore, names: Names) -> list[Image]:
    manifest = _json(tf, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError("manifest.json must be a non-empty list")
    images = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError("manifest.json entry lacks Config or Layers")
        tags = names([t for t in entry.get("RepoTags") or [] if isinstance(t, str)])
        config = store.put_blob(_read(tf, entry["Config"]))
        layers = [_ingest(tf, store, str(name)) for name in entry["Layers"]]
        images.append(store.add_image(config, layers, tags))
    return images


def _oci_blob(tf: tarfile.TarFile, desc: dict, store: ImageStore | None = None) -> bytes | str:
    """A descriptor's blob: read (metadata) or ingested into the store (layers), digest verified."""
    digest = str(desc.get("digest", ""))
    name = f"blobs/sha256/{check_digest(digest)}"
    if store is not None:
        try:
            return _ingest(tf, store, name, digest)
        except ImageError as e:
            raise ImageError(str(e).replace("blob digest mismatch", f"blob {digest} does not match its digest")) \
                from None
    data = _read(tf, name)
    import hashlib

    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageError(f"blob {digest} does not match its digest")
    return data


def _pick_manifest(tf: tarfile.TarFile, index: dict, platform: tuple[str, str]) -> tuple[dict, str | None]:
    for desc in index.get("manifests") or []:
        media = desc.get("mediaType", "")
        blob = json.loads(_oci_blob(tf, desc))
        ref_name = (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if "index" in media or "manifest.list" in media:
            inner, _ = _pick_manifest(tf, blob, platform)
            return inner, ref_name
        plat = desc.get("platform") or {}
        if plat and (plat.get("os"), plat.get("architecture")) != platform:
            continue
        return blob, ref_name
    raise ImageError(f"OCI index has no {platform[0]}/{platform[1]} manifest")


def _load_oci(tf: tarfile.TarFile, store: ImageStore, name_hint: str | None, names: Names) -> list[Image]:
    index = _json(tf, "index.json")
    if not isinstance(index, dict):
        raise ImageError("index.json is not an object")
    manifest, ref_name = _pick_manifest(tf, index, ("linux", "amd64"))
    config = store.put_blob(_oci_blob(tf, manifest.get("config") or {}))  # type: ignore[arg-type]
    layers = [str(_oci_blob(tf, d, store)) for d in manifest.get("layers") or []]
    tags = []
    if ref_name:
        tags.append(ref_name if (":" in ref_name or "/" in ref_name or not name_hint) else f"{name_hint}:{ref_name}")
    return [store.add_image(config, layers, names(tags))]


def load(path: Path, store: ImageStore, name_hint: str | None = None, names: Names | None = None) -> list[Image]:
    """Loads every image in the archive; returns them. Raises ImageError for anything malformed. `names`: what
    each image is recorded as, from the names the archive gives it (a tenant's namespace; it may refuse)."""
    try:
        tf = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ImageError(f"{path} is not a tar archive ({e})") from None
    with tf:
        try:
            members = {n.removeprefix("./") for n in tf.getnames()}
            if "manifest.json" in members:
                return _load_docker(tf, store, names or list)
            if "index.json" in members and "oci-layout" in members:
                return _load_oci(tf, store, name_hint, names or list)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ImageError(f"{path}: damaged archive ({e})") from None
    raise ImageError(f"{path} is neither a docker-archive (manifest.json) nor an OCI layout (index.json)")


# ---- save ------------------------------------------------------------------------------------------------

def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), 0o644
    tf.addfile(ti, io.BytesIO(data))


def _layer_media(store: ImageStore, digest: str) -> str:
    with open(store.blob_path(digest), "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return OCI_LAYER_GZIP
    return OCI_LAYER_ZSTD if head == b"\x28\xb5\x2f\xfd" else OCI_LAYER


def save(images: list[tuple[Image, str | None]], store: ImageStore, out: Path, fmt: str = "docker") -> None:
    """Writes images (each with the reference it was asked by) as a docker-archive or an OCI layout."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as tf:
            if fmt == "docker":
                _save_docker(tf, images, store)
            elif fmt == "oci":
                _save_oci(tf, images, store)
            else:
                raise ImageError(f"unknown archive format {fmt!r} (docker or oci)")
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)


def _save_docker(tf: tarfile.TarFile, images: list[tuple[Image, str | None]], store: ImageStore) -> None:
    manifest, written = [], set()
    for img, asked in images:
        config_name = f"{img.id[7:]}.json"
        if config_name not in written:
            _add_bytes(tf, config_name, store.get_blob(img.id))
            written.add(config_name)
        layers = []
        for blob in img.blobs:
            name = f"{blob[7:]}/layer.tar"
            if name not in written:
                tf.add(store.blob_path(blob), arcname=name)
                written.add(name)
            layers.append(name)
        tags = [reference.parse(asked).short] if asked and "@" not in asked and not _is_id(asked, img) \
            else [reference.parse(r).short for r in img.refs]
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": layers})
    _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())


def _is_id(asked: str, img: Image) -> bool:
    return asked == img.id or img.id[7:].startswith(asked)


def _save_oci(tf: tarfile.TarFile, images: list[tuple[Image, str | None]], store: ImageStore) -> None:
    import hashlib

    written: set[str] = set()

    def blob(data: bytes | None = None, digest: str | None = None) -> dict:
        if data is not None:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert digest
        name = f"blobs/sha256/{digest[7:]}"
        if name not in written:
            if data is not None:
                _add_bytes(tf, name, data)
            else:
                tf.add(store.blob_path(digest), arcname=name)
            written.add(name)
        size = len(data) if data is not None else store.blob_path(digest).stat().st_size
        return {"digest": digest, "size": size}

    index = []
    for img, asked in images:
        config = {"mediaType": OCI_CONFIG, **blob(store.get_blob(img.id))}
        layers = [{"mediaType": _layer_media(store, b), **blob(digest=b)} for b in img.blobs]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                               "layers": layers}).encode()
        desc = {"mediaType": OCI_MANIFEST, **blob(manifest), "platform": {"os": "linux", "architecture": "amd64"}}
        ref = asked if asked and not _is_id(asked, img) else (img.refs[0] if img.refs else None)
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": reference.parse(ref).short}
        index.append(desc)
    _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    _add_bytes(tf, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                             "manifests": index}).encode())
