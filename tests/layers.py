"""Building layer tars and image archives for tests, including hostile ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644,
          **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname, ti.size = kind, mode, link, len(data) if kind == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti, data


def header_only(name: str, size: int) -> bytes:
    """A tar header that claims `size` bytes of content (none follow): a huge sparse file, a bomb."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    return ti.tobuf(tarfile.PAX_FORMAT)


def layer(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def docker_archive(layers: list[bytes], tag: str = "test:latest", cmd: list[str] | None = None,
                   compress: bool = False, diff_ids: list[str] | None = None, config: dict | None = None) -> bytes:
    ids = diff_ids or ["sha256:" + hashlib.sha256(lay).hexdigest() for lay in layers]
    config_bytes = json.dumps(config or {"architecture": "amd64", "os": "linux", "config": {"Cmd": cmd} if cmd else {},
                                         "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    blobs = [gzip.compress(lay) if compress else lay for lay in layers]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [tag],
                            "Layers": [f"l{i}/layer.tar" for i in range(len(blobs))]}]).encode()
    files = [("config.json", config_bytes), ("manifest.json", manifest)] + \
        [(f"l{i}/layer.tar", b) for i, b in enumerate(blobs)]
    return layer(*(entry(n, data=d) for n, d in files))


def oci_archive(layer_blob: bytes, ref_name: str = "latest") -> bytes:
    diff_id = "sha256:" + hashlib.sha256(layer_blob).hexdigest()
    gz = gzip.compress(layer_blob)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()

    def desc(media: str, data: bytes, **extra: object) -> dict:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data),
                **extra}

    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": desc("application/vnd.oci.image.config.v1+json", config),
                           "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", gz)]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [desc(
        "application/vnd.oci.image.manifest.v1+json", manifest,
        annotations={"org.opencontainers.image.ref.name": ref_name},
        platform={"os": "linux", "architecture": "amd64"})]}).encode()
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    for data in (config, manifest, gz):
        files.append((f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data))
    return layer(*(entry(n, data=d) for n, d in files))
