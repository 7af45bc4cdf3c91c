"""Pulling from a real registry (Debian's docker-registry, images pushed by skopeo): Docker schema2, OCI,
a multi-platform index, token auth; hostile registries; concurrent pulls sharing downloads."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hypercontainer.errors import ImageError, NotFound
from hypercontainer.image.auth import Credentials
from hypercontainer.image.pull import Puller
from hypercontainer.image.registry import AuthError
from hypercontainer.image.store import ImageStore

from .layers import entry, layer
from .registry import PASSWORD, USER, Registry, free_port, write_oci_layout

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                                reason="needs docker-registry and skopeo (make test installs them)")


@pytest.fixture(scope="module")
def registry(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory):
    reg = Registry()
    reg.push(f"docker-archive:{busybox_tar}", "library/busybox:latest")
    reg.push(f"docker-archive:{busybox_tar}", "oci/busybox:1", "--format", "oci")
    layout = tmp_path_factory.mktemp("multi") / "layout"
    base = {"os": "linux", "config": {"Cmd": ["cat", "/arch"]}}
    write_oci_layout(layout, [({**base, "architecture": arch}, [layer(entry("arch", data=arch.encode()))],
                               {"os": "linux", "architecture": arch}) for arch in ("amd64", "arm64")])
    reg.push(f"oci:{layout}:latest", "multi:latest", "--all")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_registry(busybox_tar: Path):
    reg = Registry(token_auth=True)
    reg.push(f"docker-archive:{busybox_tar}", "private/busybox:latest")
    yield reg
    reg.stop()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


async def test_pull_docker_schema2(registry: Registry, store: ImageStore) -> None:
    events: list[dict] = []
    img = await Puller(store).pull(f"{registry.host}/library/busybox", progress=events.append)
    assert img.refs == (f"{registry.host}/library/busybox:latest",)
    assert img.run_config["Cmd"] == ["sh"]
    assert (img.layers[0] / "bin" / "busybox").is_file()
    assert any(e.get("status") == "Pull complete" for e in events)
    assert store.check() == []
    by_digest = f"{registry.host}/library/busybox@{img.repo_digests[0].split('@')[1]}"
    assert store.get(by_digest).id == img.id
    again = await Puller(store).pull(by_digest)
    assert again.id == img.id


async def test_pull_oci_manifest(registry: Registry, store: ImageStore) -> None:
    img = await Puller(store).pull(f"{registry.host}/oci/busybox:1")
    assert (img.layers[0] / "bin" / "busybox").is_file()


@pytest.mark.parametrize("platform", [None, "linux/amd64", "linux/arm64"])
async def test_multi_platform_index(registry: Registry, store: ImageStore, platform: str | None) -> None:
    img = await Puller(store).pull(f"{registry.host}/multi", platform=platform)
    want = (platform or "linux/amd64").split("/")[1]
    assert (img.layers[0] / "arch").read_text() == want
    assert img.config["architecture"] == want


async def test_platform_missing(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(ImageError, match=r"no manifest for linux/s390x \(the index has: linux/amd64, linux/arm64\)"):
        await Puller(store).pull(f"{registry.host}/multi", platform="linux/s390x")


async def test_unknown_repository(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(NotFound, match="manifest unknown"):
        await Puller(store).pull(f"{registry.host}/nothing/here:1")


async def test_token_auth(token_registry: Registry, store: ImageStore) -> None:
    ref = f"{token_registry.host}/private/busybox"
    with pytest.raises(AuthError):
        await Puller(store).pull(ref)
    with pytest.raises(AuthError, match="refused the credentials"):
        await Puller(store).pull(ref, Credentials(USER, "wrong"))
    img = await Puller(store).pull(ref, Credentials(USER, PASSWORD))
    assert (img.layers[0] / "bin" / "busybox").is_file()
    assert token_registry.tokens and any(r["user"] == USER for r in token_registry.tokens.requests)


async def test_concurrent_pulls_download_once(registry: Registry, store: ImageStore) -> None:
    puller = Puller(store)
    fetched: list[str] = []
    orig = puller._download

    async def counting(reg, ref, digest, *rest):
        fetched.append(digest)
        await orig(reg, ref, digest, *rest)

    puller._download = counting  # type: ignore[method-assign]
    a, b = await asyncio.gather(puller.pull(f"{registry.host}/library/busybox"),
                                puller.pull(f"{registry.host}/library/busybox"))
    assert a.id == b.id
    assert len(fetched) == len(set(fetched)) == 2  # config and the one layer, each once
    assert store.check() == []


# ---- hostile registries ------------------------------------------------------------------------------------

class Hostile:
    """A fake registry serving crafted answers for what a real registry never serves."""

    def __init__(self, routes: dict) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        hostile = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                hostile.hits[self.path] = hostile.hits.get(self.path, 0) + 1
                route = hostile.routes.get(self.path, (404, {}, b"{}"))
                status, headers, body = route(hostile.hits[self.path]) if callable(route) else route
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(headers.get("X-Claim-Length", len(body))))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()


def image_routes(layer_blob: bytes, layer_served: bytes | None = None, manifest_extra: bytes = b"") -> dict:
    lay = layer(entry("f", data=b"x"))
    diff_id = "sha256:" + hashlib.sha256(lay).hexdigest()
    config = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers",
                                                                          "diff_ids": [diff_id]}}).encode()
    cd, ld = (hashlib.sha256(x).hexdigest() for x in (config, layer_blob))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"digest": f"sha256:{cd}", "size": len(config)},
                           "layers": [{"digest": f"sha256:{ld}", "size": len(layer_blob)}]}).encode() + manifest_extra
    mt = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    return {"/v2/evil/manifests/latest": (200, mt, manifest), f"/v2/evil/blobs/sha256:{cd}": (200, {}, config),
            f"/v2/evil/blobs/sha256:{ld}": (200, {}, layer_served if layer_served is not None else layer_blob)}


GOOD_LAYER = gzip.compress(layer(entry("f", data=b"x")))


@pytest.mark.parametrize(("routes", "why"), [
    (image_routes(GOOD_LAYER, layer_served=GOOD_LAYER[:-10] + b"0123456789"), "does not match its digest"),
    (image_routes(GOOD_LAYER, layer_served=GOOD_LAYER[: len(GOOD_LAYER) // 2]), "truncated|cannot reach|failed"),
    (image_routes(GOOD_LAYER, manifest_extra=b" " * (5 << 20)), "manifest larger than"),
    (image_routes(gzip.compress(layer(entry("../../x", data=b"x")))), "does not match its diff-id|with '..'"),
    ({"/v2/evil/manifests/latest": (200, {}, b'{"schemaVersion": 1, "fsLayers": []}')}, "schema 1"),
    ({"/v2/evil/manifests/latest": (200, {}, b"not json")}, "not valid JSON"),
    ({"/v2/evil/manifests/latest": (200, {}, b'{"schemaVersion":2,"config":{"digest":"sha256:../../etc",'
                                               b'"size":1},"layers":[]}')}, "invalid digest"),
])
async def test_hostile_registry(routes: dict, why: str, store: ImageStore) -> None:
    h = Hostile(routes)
    try:
        with pytest.raises(ImageError, match=why):
            await Puller(store).pull(f"{h.host}/evil")
    except Exception as e:  # registry errors (truncation) are not ImageErrors
        assert __import__("re").search(why, str(e)), e
    finally:
        h.close()
    assert store.list() == [] and store.check() == []
    assert not any(store.tmp.iterdir())


# ---- through hyperctl and hyperd ---------------------------------------------------------------------------

def test_pull_run_save_load_rmi(hyperd, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/library/busybox:latest"
    r = hyperd.hyperctl("pull", ref)
    assert r.returncode == 0, r.stderr
    assert b"Digest: sha256:" in r.stderr and r.stdout.strip() == ref.encode()
    out = hyperd.hyperctl("run", "--rm", ref, "echo", "pulled and ran")
    assert out.stdout == b"pulled and ran\n"
    listing = hyperd.hyperctl("images", "--digests", check=True).stdout.decode()
    assert f"{registry.host}/library/busybox" in listing and "sha256:" in listing
    hyperd.hyperctl("tag", ref, "mine/box:v1", check=True)
    for fmt, transport in (("docker", "docker-archive"), ("oci", "oci-archive")):
        archive = tmp_path / f"{fmt}.tar"
        hyperd.hyperctl("save", "--format", fmt, "-o", str(archive), "mine/box:v1", check=True)
        info = json.loads(__import__("subprocess").run(["skopeo", "inspect", f"{transport}:{archive}"],
                                                       capture_output=True, check=True).stdout)
        assert info["Os"] == "linux" and len(info["Layers"]) == 1
    assert b"Untagged: mine/box:v1" in hyperd.hyperctl("rmi", "mine/box:v1", check=True).stdout
    hyperd.hyperctl("load", "-i", str(tmp_path / "oci.tar"), check=True)
    assert b"mine/box" in hyperd.hyperctl("images", check=True).stdout
    hyperd.hyperctl("rmi", "mine/box:v1", ref, check=True)
    assert hyperd.hyperctl("image", "check", check=True).stdout == b"image store is consistent\n"
    hyperd.hyperctl("image", "prune", check=True)
    assert hyperd.hyperctl("image", "check", check=True).returncode == 0
    assert b"busybox" in hyperd.hyperctl("images", check=True).stdout  # the loaded busybox:latest stays


def test_login_pull_logout(hyperd, token_registry: Registry, tmp_path: Path) -> None:
    env_file = tmp_path / "auth.json"
    hyperd.env["HYPERCONTAINER_AUTH_FILE"] = str(env_file)
    try:
        ref = f"{token_registry.host}/private/busybox:latest"
        r = hyperd.hyperctl("pull", ref)
        assert r.returncode == 1 and b"denied" in r.stderr and b"hyperctl login" in r.stderr
        bad = hyperd.hyperctl("login", "-u", USER, "--password-stdin", token_registry.host, input=b"nope\n")
        assert bad.returncode == 1 and not env_file.exists()
        ok = hyperd.hyperctl("login", "-u", USER, "--password-stdin", token_registry.host,
                             input=PASSWORD.encode() + b"\n")
        assert ok.stdout == b"Login Succeeded\n", ok.stderr
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert hyperd.hyperctl("pull", "-q", ref).returncode == 0
        hyperd.hyperctl("logout", token_registry.host, check=True)
        assert token_registry.host not in env_file.read_text()
        hyperd.hyperctl("rmi", ref, check=True)
    finally:
        del hyperd.env["HYPERCONTAINER_AUTH_FILE"]


def test_kill_9_during_pull(busybox_tar: Path, tmp_path: Path) -> None:
    """hyperd killed mid-pull: after a restart the same pull succeeds and the store checks out."""
    import os
    import subprocess
    import time

    from .conftest import Daemon
    from .layers import docker_archive

    big = [gzip.compress(layer(entry(f"blob{i}", data=os.urandom(12 << 20))), compresslevel=1) for i in range(3)]
    archive = tmp_path / "big.tar"
    raw = [gzip.decompress(b) for b in big]
    archive.write_bytes(docker_archive(raw, tag="big:1", compress=True))
    reg = Registry()
    try:
        reg.push(f"docker-archive:{archive}", "big:1")
        d = Daemon(tmp_path / "d")
        (tmp_path / "d").mkdir()
        d.start()
        try:
            ref = f"{reg.host}/big:1"
            p = d.popen("pull", ref, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert p.stderr
            for line in p.stderr:
                if b"Downloading" in line:
                    break
            time.sleep(0.1)
            assert d.proc
            d.proc.kill()
            d.proc.wait()
            p.wait(30)
            assert p.returncode != 0
            d.start()
            assert d.hyperctl("image", "check", check=True).returncode == 0
            r = d.hyperctl("pull", "-q", ref, timeout=300)
            assert r.returncode == 0, r.stderr
            assert d.hyperctl("image", "check", check=True).returncode == 0
            assert b"big" in d.hyperctl("images", check=True).stdout
        finally:
            d.stop()
    finally:
        reg.stop()


async def test_blob_redirect_and_retries(store: ImageStore) -> None:
    """Blobs behind a redirect (as registries on object storage do), and transient 503s retried."""
    routes = image_routes(GOOD_LAYER)
    h = Hostile(routes)
    try:
        layer_path = next(p for p in routes if p.endswith(hashlib.sha256(GOOD_LAYER).hexdigest()))
        served = routes[layer_path]
        routes["/storage/layer"] = served
        routes[layer_path] = (307, {"Location": f"http://{h.host}/storage/layer"}, b"")
        config_path = next(p for p in routes if "/blobs/" in p and p != layer_path)
        config = routes[config_path]
        routes[config_path] = lambda hit: (503, {}, b"busy") if hit <= 2 else config
        img = await Puller(store).pull(f"{h.host}/evil")
        assert (img.layers[0] / "f").read_bytes() == b"x"
        assert h.hits[config_path] == 3 and h.hits["/storage/layer"] == 1
    finally:
        h.close()
