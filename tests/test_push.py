"""Pushing to a real registry (Debian's docker-registry), with token auth: blobs checked, mounted across
repositories, uploaded whole or in chunks; the manifest a pulled image came with is pushed as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hypercontainer.image import archive, push
from hypercontainer.image.auth import Credentials
from hypercontainer.image.pull import Puller
from hypercontainer.image.push import Pusher
from hypercontainer.image.registry import AuthError
from hypercontainer.image.store import ImageStore

from .registry import PASSWORD, USER, Registry

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                                reason="needs docker-registry and skopeo (make test installs them)")
CREDS = Credentials(USER, PASSWORD)


@pytest.fixture(scope="module")
def registry():
    reg = Registry(token_auth=True)
    yield reg
    reg.stop()


@pytest.fixture
def store(tmp_path: Path, busybox_tar: Path) -> ImageStore:
    s = ImageStore(tmp_path / "store")
    archive.load(busybox_tar, s)
    return s


async def test_push_then_pull(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    img = store.get("busybox")
    events: list[dict] = []
    ref = f"{registry.host}/team/box:1"
    pushed = await Pusher(store).push(img, ref, CREDS, events.append)
    assert pushed.ref == ref
    assert [e["status"] for e in events if e.get("id") == img.blobs[0][7:19]][-1] == "Pushed"
    assert store.get(img.id).repo_digests == (f"{registry.host}/team/box@{pushed.digest}",)
    other = ImageStore(tmp_path / "other")
    pulled = await Puller(other).pull(ref, CREDS)
    assert pulled.id == img.id
    assert pulled.repo_digests == (f"{registry.host}/team/box@{pushed.digest}",)
    assert other.check() == []
    # again: every blob is there already, the manifest (kept since the first push) is the same
    events.clear()
    again = await Pusher(store).push(img, ref, CREDS, events.append)
    assert again.digest == pushed.digest
    assert {e["status"] for e in events if e.get("id")} == {"Preparing", "Layer already exists"}


async def test_pushed_pulled_image_keeps_its_manifest_and_mounts(registry: Registry, store: ImageStore,
                                                                 tmp_path: Path) -> None:
    first = await Pusher(store).push(store.get("busybox"), f"{registry.host}/a/box:1", CREDS)
    other = ImageStore(tmp_path / "other")
    pulled = await Puller(other).pull(f"{registry.host}/a/box:1", CREDS)
    events: list[dict] = []
    moved = await Pusher(other).push(pulled, f"{registry.host}/b/box:2", CREDS, events.append)
    assert moved.digest == first.digest  # the very manifest bytes the image was pulled with
    statuses = {e["status"] for e in events if e.get("id")}
    assert "Pushed" not in statuses
    assert statuses == {"Preparing", "Mounted from a/box"}


async def test_chunked_upload(registry: Registry, store: ImageStore, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push, "CHUNK", 64 << 10)
    img = store.get("busybox")
    events: list[dict] = []
    pushed = await Pusher(store).push(img, f"{registry.host}/chunked/box:1", CREDS, events.append)
    layer = img.blobs[0][7:19]
    size = store.blob_path(img.blobs[0]).stat().st_size
    assert size > 2 * push.CHUNK
    pushing = [e["current"] for e in events if e.get("id") == layer and e["status"] == "Pushing"]
    assert len(pushing) == -(-size // push.CHUNK) and pushing[-1] == size
    pulled = await Puller(ImageStore(tmp_path / "other")).pull(f"{registry.host}/chunked/box:1", CREDS)
    assert pulled.id == img.id and pulled.repo_digests[0].endswith(pushed.digest)


async def test_push_needs_credentials(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(AuthError):
        await Pusher(store).push(store.get("busybox"), f"{registry.host}/anon/box:1")
    with pytest.raises(AuthError):
        await Pusher(store).push(store.get("busybox"), f"{registry.host}/anon/box:1", Credentials(USER, "wrong"))
