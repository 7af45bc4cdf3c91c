"""Loading image archives: docker-archive (`docker save`) and OCI image layout tarballs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from ..errors import ImageError
from .store import Image, ImageStore, sha256_hex

MAX_METADATA = 4 << 20  # manifest.json, index.json, configs


def _read(tf: tarfile.TarFile, name: str, limit: int | None = None) -> bytes:
    name = name.removeprefix("./")
    try:
        member = tf.getmember(name)
    except KeyError:
        try:
            member = tf.getmember("./" + name)
        except KeyError:
            raise ImageError(f"archive lacks {name}") from None
    if not member.isreg():
        raise ImageError(f"archive entry {name} is not a regular file")
    if limit is not None and member.size > limit:
        raise ImageError(f"archive entry {name} is larger than {limit} bytes")
    f = tf.extractfile(member)
    assert f is not None
    return f.read()


def _json(tf: tarfile.TarFile, name: str) -> object:
    try:
        return json.loads(_read(tf, name, MAX_METADATA))
    except ValueError:
        raise ImageError(f"archive entry {name} is not valid JSON") from None


def _load_docker(tf: tarfile.TarFile, store: ImageStore) -> list[Image]:
    manifest = _json(tf, "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError("manifest.json must be a non-empty list")
    images = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError("manifest.json entry lacks Config or Layers")
        config = _read(tf, entry["Config"], MAX_METADATA)
        layers = [_read(tf, str(name)) for name in entry["Layers"]]
        tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
        images.append(store.add_image(config, layers, tags))
    return images


def _pick_manifest(tf: tarfile.TarFile, index: dict) -> tuple[dict, str | None]:
    for desc in index.get("manifests") or []:
        media = desc.get("mediaType", "")
        blob = json.loads(_blob(tf, desc))
        if "index" in media or "manifest.list" in media:
            inner, _ = _pick_manifest(tf, blob)
            return inner, (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        platform = desc.get("platform") or {}
        if platform and (platform.get("os"), platform.get("architecture")) != ("linux", "amd64"):
            continue
        return blob, (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name")
    raise ImageError("OCI index has no linux/amd64 manifest")


def _blob(tf: tarfile.TarFile, desc: dict) -> bytes:
    digest = str(desc.get("digest", ""))
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise ImageError(f"unsupported or invalid digest {digest!r}")
    data = _read(tf, f"blobs/sha256/{hexd}")
    if sha256_hex(data) != hexd:
        raise ImageError(f"blob {digest} does not match its digest")
    return data


def _load_oci(tf: tarfile.TarFile, store: ImageStore, name_hint: str | None) -> list[Image]:
    index = _json(tf, "index.json")
    if not isinstance(index, dict):
        raise ImageError("index.json is not an object")
    manifest, ref_name = _pick_manifest(tf, index)
    config = _blob(tf, manifest.get("config") or {})
    layers = [_blob(tf, d) for d in manifest.get("layers") or []]
    tags = []
    if ref_name:
        tags.append(ref_name if (":" in ref_name or "/" in ref_name or not name_hint) else f"{name_hint}:{ref_name}")
    return [store.add_image(config, layers, tags)]


def load(path: Path, store: ImageStore, name_hint: str | None = None) -> list[Image]:
    """Loads every image in the archive; returns them. Raises ImageError for anything malformed."""
    try:
        tf = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ImageError(f"{path} is not a tar archive ({e})") from None
    with tf:
        try:
            names = {n.removeprefix("./") for n in tf.getnames()}
            if "manifest.json" in names:
                return _load_docker(tf, store)
            if "index.json" in names and "oci-layout" in names:
                return _load_oci(tf, store, name_hint)
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, ImageError):
                raise
            raise ImageError(f"{path}: damaged archive ({e})") from None
    raise ImageError(f"{path} is neither a docker-archive (manifest.json) nor an OCI layout (index.json)")
