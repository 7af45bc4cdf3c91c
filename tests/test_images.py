"""The image store and archive loading: docker-archive, OCI layout, digests, atomicity, removal."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from hypercontainer.errors import ImageError, InvalidArgument, NotFound
from hypercontainer.image import archive, reference
from hypercontainer.image.store import ImageStore

from .layers import docker_archive, entry, layer, oci_archive

F, S = tarfile.REGTYPE, tarfile.SYMTYPE


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def store_is_clean(store: ImageStore) -> bool:
    return not any(store.tmp.iterdir())


def test_busybox_archive_loads(tmp_path: Path, busybox_tar: Path) -> None:
    store = ImageStore(tmp_path / "store")
    (img,) = archive.load(busybox_tar, store)
    assert img.refs == ("docker.io/library/busybox:latest",)
    assert store.get("busybox").id == img.id == store.get(img.id[7:19]).id
    assert (img.layers[0] / "bin" / "busybox").is_file()
    assert img.run_config["Cmd"] == ["sh"]
    again = archive.load(busybox_tar, store)[0]
    assert again.id == img.id and store_is_clean(store)


def test_layers_stack_and_are_shared(tmp_path: Path) -> None:
    base = layer(entry("etc/a", F, b"1"))
    top = layer(entry("etc/.wh.a"), entry("etc/b", F, b"2"))
    store = ImageStore(tmp_path / "store")
    (one,) = archive.load(write(tmp_path, "one.tar", docker_archive([base, top], tag="one", compress=True)), store)
    (two,) = archive.load(write(tmp_path, "two.tar", docker_archive([base], tag="two")), store)
    assert one.layers[0] == two.layers[0]
    store.remove("one")
    assert two.layers[0].exists() and not one.layers[1].exists()
    with pytest.raises(NotFound):
        store.get("one")


def test_oci_archive_loads(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    (img,) = archive.load(write(tmp_path, "oci.tar", oci_archive(layer(entry("hello", F, b"hi")), "1.0")), store,
                          name_hint="hello")
    assert img.refs == ("docker.io/library/hello:1.0",)
    assert (img.layers[0] / "hello").read_bytes() == b"hi"


@pytest.mark.parametrize(("data", "why"), [
    (b"this is not a tar file at all" * 40, "not a tar archive"),
    (layer(entry("hello.txt", F, b"hi")), "neither a docker-archive"),
    (layer(entry("manifest.json", F, b"{not json")), "not valid JSON"),
    (layer(entry("manifest.json", F, b'[{"Config": "c.json", "Layers": ["x.tar"]}]')), "lacks c.json"),
])
def test_malformed_archives(tmp_path: Path, data: bytes, why: str) -> None:
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match=why):
        archive.load(write(tmp_path, "bad.tar", data), store)
    assert store.list() == [] and store_is_clean(store)


def test_hostile_layer_in_archive_leaves_store_clean(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    evil = layer(entry("ok", F, b"fine"), entry("lnk", S, link="/"), entry("lnk/tmp/pwned", F, b"x"))
    with pytest.raises(ImageError, match="through the symlink"):
        archive.load(write(tmp_path, "evil.tar", docker_archive([evil])), store)
    assert not Path("/tmp/pwned").exists()
    assert store.list() == [] and store_is_clean(store) and not any(store.layers.iterdir())


def test_diff_id_mismatch(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    lay = layer(entry("a", F, b"1"))
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ImageError, match="does not match its diff-id"):
        archive.load(write(tmp_path, "m.tar", docker_archive([lay], diff_ids=[wrong])), store)
    assert store_is_clean(store) and not any(store.layers.iterdir())


def test_oci_blob_digest_checked(tmp_path: Path) -> None:
    data = oci_archive(layer(entry("x", F, b"1")))
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
    index = json.loads(next(d for m, d in members if m.name == "index.json"))
    digest = index["manifests"][0]["digest"].split(":")[1]
    tampered = [(m.name, d if not m.name.endswith(digest) else d.replace(b"schemaVersion", b"schemaVersioN"))
                for m, d in members]
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="does not match its digest"):
        archive.load(write(tmp_path, "t.tar", layer(*(entry(n, data=d) for n, d in tampered))), store)


def test_gzip_layer(tmp_path: Path) -> None:
    lay = layer(entry("z", F, b"zip"))
    assert gzip.decompress(gzip.compress(lay)) == lay
    store = ImageStore(tmp_path / "store")
    (img,) = archive.load(write(tmp_path, "g.tar", docker_archive([lay], compress=True)), store)
    assert (img.layers[0] / "z").read_bytes() == b"zip"


@pytest.mark.parametrize(("text", "full", "short"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("me/app", "docker.io/me/app:latest", "me/app:latest"),
    ("localhost:5000/app:v1", "localhost:5000/app:v1", "localhost:5000/app:v1"),
    ("reg.example/a/b@sha256:" + "0" * 64, "reg.example/a/b@sha256:" + "0" * 64, None),
])
def test_references(text: str, full: str, short: str | None) -> None:
    ref = reference.parse(text)
    assert str(ref) == full
    if short:
        assert ref.short == short


@pytest.mark.parametrize("bad", ["", "UPPER", "a b", "x:bad tag!", "x@sha256:12", " busybox"])
def test_bad_references(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        reference.parse(bad)


def test_zstd_layer(tmp_path: Path) -> None:
    import zstandard

    lay = layer(entry("z", F, b"zstd!"))
    store = ImageStore(tmp_path / "store")
    blob = zstandard.ZstdCompressor().compress(lay)
    diff_id = "sha256:" + hashlib.sha256(lay).hexdigest()
    path = store.add_layer(store.put_blob(blob), diff_id)
    assert (path / "z").read_bytes() == b"zstd!"


def test_user_xattrs_kept(tmp_path: Path) -> None:
    lay = layer(entry("x", F, b"1", pax_headers={"SCHILY.xattr.user.origin": "layer"}))
    store = ImageStore(tmp_path / "store")
    path = store.add_layer(store.put_blob(lay), "sha256:" + hashlib.sha256(lay).hexdigest())
    import os

    assert os.getxattr(path / "x", "user.origin") == b"layer"


def test_gzip_bomb_refused(tmp_path: Path) -> None:
    """300 MiB of zeros in a few hundred KiB of gzip: refused while decompressing, nothing left behind."""
    import zlib

    from .layers import header_only

    size = 300 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(header_only("zeros", size))]
    chunk = b"\0" * (1 << 20)
    h = hashlib.sha256(header_only("zeros", size))
    for _ in range(size >> 20):
        parts.append(comp.compress(chunk))
        h.update(chunk)
    parts.append(comp.compress(b"\0" * 1024) + comp.flush())
    blob = b"".join(parts)
    assert len(blob) < 1 << 20
    store = ImageStore(tmp_path / "store")
    digest = store.put_blob(blob)
    with pytest.raises(ImageError, match="decompression bomb"):
        store.add_layer(digest, "sha256:" + h.hexdigest())
    assert not any(store.layers.iterdir()) and store_is_clean(store)
