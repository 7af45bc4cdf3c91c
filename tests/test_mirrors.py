"""Registry mirrors (image/mirrors.py): containerd's hosts.toml directory read once, pulls that go to mirrors first
and fall through to the next host, names and credentials that stay with the registry asked for. Against the real
registry the other image tests use (Debian's docker-registry), names that resolve nowhere
(registry.example.test), and a real hyperd driven by hyperctl."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner

from hypercontainer.daemon.config import ENVVARS, build, command
from hypercontainer.errors import NotFound
from hypercontainer.image import mirrors
from hypercontainer.image.auth import Credentials
from hypercontainer.image.mirrors import DEFAULT_DIR, Host, RegistryConfigError, RegistryHosts
from hypercontainer.image.pull import Puller
from hypercontainer.image.registry import RegistryError
from hypercontainer.image.store import ImageStore

from .registry import PASSWORD, USER, Registry, free_port

NAME = "registry.example.test"  # resolves nowhere: only a mirror can serve it
needs_registry = pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                                    reason="needs docker-registry and skopeo (make test installs them)")


def hosts_dir(root: Path, files: dict[str, str]) -> Path:
    """A certs.d directory: {namespace: hosts.toml text}."""
    for ns, text in files.items():
        (root / ns).mkdir(parents=True, exist_ok=True)
        (root / ns / "hosts.toml").write_text(text)
    return root


def mirror(url: str, caps: str = '["pull", "resolve"]', extra: str = "") -> str:
    return f'[host."{url}"]\n  capabilities = {caps}\n{extra}'


# ---- the configuration ----------------------------------------------------------------------------------------

def test_no_directory_means_no_mirrors(tmp_path: Path) -> None:
    hosts = mirrors.load(tmp_path / "absent")
    assert hosts == RegistryHosts(tmp_path / "absent")
    assert hosts.hosts("registry.k8s.io") == [Host("registry.k8s.io")]
    assert RegistryHosts().root == DEFAULT_DIR == Path("/etc/hypercontainer/certs.d")


def test_hosts_toml_as_containerd_reads_it(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    hosts = mirrors.load(hosts_dir(tmp_path / "certs", {
        "registry.k8s.io": 'server = "https://registry.k8s.io"\n'
                           + mirror("http://127.0.0.1:5000")
                           + mirror("mirror.example:8443/cache/k8s", '["pull"]', "  override_path = true\n")
                           + mirror("https://other.example/base", "[]",
                                    '  dial_timeout = "1m30s"\n  [host."https://other.example/base".header]\n'
                                    '    x-a = "1"\n    x-b = ["2", "3"]\n'),
        "_default": 'server = "http://10.0.0.9:5000"\n',
        "reg.example_5000_": mirror("http://127.0.0.1:6000"),
        "reg.example:5000": mirror("http://127.0.0.1:7000"),
    }))
    assert hosts.warnings == ()
    k8s = hosts.hosts("registry.k8s.io")
    assert [(h.scheme, h.host, h.path, sorted(h.capabilities)) for h in k8s] == [
        ("http", "127.0.0.1:5000", "/v2", ["pull", "resolve"]),
        (None, "mirror.example:8443", "/cache/k8s", ["pull"]),  # override_path: the path is the API root
        ("https", "other.example", "/base/v2", ["pull", "push", "resolve"]),  # no capabilities: all
        ("https", "registry.k8s.io", "/v2", ["pull", "push", "resolve"]),  # the server, last
    ]
    assert k8s[2].dial_timeout == 90 and k8s[2].header == (("x-a", "1"), ("x-b", "2"), ("x-b", "3"))
    # host_port_ before host:port before _default; _default's server stands in for any other registry
    assert [h.host for h in hosts.hosts("reg.example:5000")] == ["127.0.0.1:6000", "reg.example:5000"]
    assert [h.url() for h in hosts.hosts("quay.io")] == ["http://10.0.0.9:5000/v2"]
    # the same directory is what containerd's registry config_path points at (tools/critest writes this one)
    assert hosts.namespace("registry.k8s.io").source == str(tmp_path / "certs/registry.k8s.io/hosts.toml")


def test_docker_hub_and_scheme_defaults(tmp_path: Path) -> None:
    hosts = mirrors.load(hosts_dir(tmp_path, {"docker.io": mirror("127.0.0.1:5000") + mirror("mirror.example")}))
    dh = hosts.hosts("docker.io")
    assert [h.url() for h in dh] == ["http://127.0.0.1:5000/v2", "https://mirror.example/v2",
                                     "https://registry-1.docker.io/v2"]
    assert dh[1].url({"mirror.example"}) == "http://mirror.example/v2"  # --insecure-registry names it


def test_unknown_keys_are_warnings_not_errors(tmp_path: Path) -> None:
    hosts = mirrors.load(hosts_dir(tmp_path, {NAME: 'colour = "blue"\n'
                                              + mirror("http://127.0.0.1:5000", extra="  capabilites = 1\n")}))
    assert [h.host for h in hosts.hosts(NAME)] == ["127.0.0.1:5000", NAME]
    where = tmp_path / NAME / "hosts.toml"
    assert hosts.warnings == (f'{where}: [host."http://127.0.0.1:5000"]: unknown key \'capabilites\' ignored',
                              f"{where}: top level: unknown key 'colour' ignored")


def test_docker_certificate_files_without_hosts_toml(tmp_path: Path) -> None:
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.exists():
        pytest.skip("needs a PEM bundle to stand in for a CA")
    d = tmp_path / "certs" / "reg.example:5000"
    d.mkdir(parents=True)
    shutil.copy(bundle, d / "ca.crt")
    hosts = mirrors.load(tmp_path / "certs")
    (server,) = hosts.hosts("reg.example:5000")
    assert server.host == "reg.example:5000" and server.ca == (str(d / "ca.crt"),)


@pytest.mark.parametrize(("text", "problem"), [
    ('server = "https://x\n', "not valid TOML: "),
    ('[host."http://127.0.0.1:5000"]\ncapabilities = ["pull", "fetch"]\n', "unknown capability 'fetch'"),
    ('[host."ftp://mirror.example"]\n', "the scheme must be http or https"),
    ('[host."https://user:pw@mirror.example"]\n', "no credentials"),
    ('[host."https://mirror.example/?x=1"]\n', "no query"),
    ('[host."https://mirror example"]\n', "is not HOST[:PORT]"),
    ('[host."https://mirror.example"]\ncapabilities = "pull"\n', "'capabilities' must be a list of strings"),
    ('[host."https://mirror.example"]\nskip_verify = "yes"\n', "'skip_verify' must be true or false"),
    ('[host."https://mirror.example"]\nca = "missing.pem"\n', "CA certificate"),
    ('[host."https://mirror.example"]\ndial_timeout = "fast"\n', "'dial_timeout' 'fast' is not a duration"),
    ('[host."https://mirror.example"]\nproxy = "socks5://p:1080"\n', "http:// or https:// proxies"),
    ('server = 5000\n', "'server' must be a string"),
    ('host = "http://127.0.0.1:5000"\n', "'host' must hold tables"),
])
def test_a_malformed_file_is_an_error_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    hosts_dir(tmp_path, {NAME: text})
    with pytest.raises(RegistryConfigError) as e:
        mirrors.load(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / NAME / 'hosts.toml'}: ") and problem in str(e.value), e.value


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "hosts.toml").write_text("")
    with pytest.raises(RegistryConfigError, match=r"hosts.toml is not a directory .*containerd's certs.d"):
        mirrors.load(tmp_path / "hosts.toml")


# ---- hyperd's option ---------------------------------------------------------------------------------------

def test_hyperd_option_and_variable(tmp_path: Path) -> None:
    hosts_dir(tmp_path, {NAME: mirror("http://127.0.0.1:5000")})
    clear = dict.fromkeys(ENVVARS.values())
    for args, env in (([f"--registry-config={tmp_path}"], {}), ([], {"HYPERCONTAINER_REGISTRY_CONFIG": str(tmp_path)})):
        got: list = []
        r = CliRunner().invoke(command(got.append), args, env={**clear, **env})
        assert r.exit_code == 0, r.output
        assert got[0].registry_hosts == mirrors.load(tmp_path) and got[0].registry_hosts.namespaces
    if not DEFAULT_DIR.exists():
        assert build().registry_hosts == RegistryHosts()


def test_hyperd_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    hosts_dir(tmp_path, {NAME: mirror("http://127.0.0.1:5000", '["pull", "fetch"]')})
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ENVVARS.values()}
    r = subprocess.run([str(bin_dir / "hyperd"), "--registry-config", str(tmp_path)], env=env, capture_output=True,
                       timeout=60)
    err = " ".join(r.stderr.decode().split())
    assert r.returncode == 2, err
    assert f"Invalid value for '--registry-config': {tmp_path / NAME / 'hosts.toml'}: " in err
    assert "unknown capability 'fetch' (pull, resolve, push)" in err
    r = subprocess.run([str(bin_dir / "hyperd")], env={**env, "HYPERCONTAINER_REGISTRY_CONFIG": str(tmp_path)},
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"(env var: 'HYPERCONTAINER_REGISTRY_CONFIG')" in r.stderr, r.stderr


def test_the_config_reaches_the_puller(tmp_path: Path) -> None:
    from hypercontainer.daemon.main import assemble
    from hypercontainer.guest import assets as guest_assets
    from hypercontainer.vm import accel

    certs = hosts_dir(tmp_path / "certs", {NAME: mirror("http://127.0.0.1:5000")})
    (tmp_path / "vmlinux").write_bytes(b"")
    (tmp_path / "initrd.cpio").write_bytes(b"")
    cfg = build(root=tmp_path / "state", run=tmp_path / "run", network="none", registry_config=certs)
    cfg.paths.ensure()
    a = guest_assets.Assets(tmp_path / "vmlinux", tmp_path / "initrd.cpio", "6.1-test", "agent", "digest")
    parts = assemble(cfg, a, accel.Accel("tcg", "test"))
    try:
        assert parts.puller.hosts is cfg.registry_hosts
        assert [h.host for h in parts.puller.hosts.hosts(NAME)] == ["127.0.0.1:5000", NAME]
    finally:
        parts.db.close()


# ---- pulls through mirrors -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(busybox_tar: Path):
    """The only place the images exist."""
    reg = Registry()
    reg.push(f"docker-archive:{busybox_tar}", "x/y:tag")
    reg.push(f"docker-archive:{busybox_tar}", "library/busybox:latest")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def empty():
    """A registry that has none of them."""
    reg = Registry()
    yield reg
    reg.stop()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def puller(store: ImageStore, certs: Path) -> Puller:
    return Puller(store, hosts=mirrors.load(certs))


class Recorder:
    """An HTTP server that records each request (path with query, Authorization) and answers from `routes`
    (path without query -> (status, headers, body)), else 404; `prefix` (strip, add) makes it a reverse proxy to
    `upstream` for paths under `strip`."""

    def __init__(self, routes: dict | None = None, upstream: str | None = None,
                 prefix: tuple[str, str] = ("", "")) -> None:
        self.routes = routes or {}
        self.seen: list[tuple[str, str | None]] = []
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                rec.seen.append((self.path, self.headers.get("Authorization")))
                path = self.path.split("?")[0]
                strip, add = prefix
                if upstream and path.startswith(strip + "/"):
                    r = httpx.get(f"http://{upstream}{add}{path[len(strip):]}",
                                  headers={"Accept": self.headers.get("Accept", "*/*")})
                    route = (r.status_code, {"Content-Type": r.headers.get("content-type", "")}, r.content)
                else:
                    route = rec.routes.get(path, (404, {"Content-Type": "application/json"}, b'{"errors": []}'))
                status, headers, body = route
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


def check_image(img, store: ImageStore, name: str) -> None:
    assert img.refs == (name,)
    assert img.repo_digests[0].startswith(name.rsplit(":", 1)[0] + "@sha256:")
    assert store.get(name).id == img.id
    assert (img.layers[0] / "bin" / "busybox").is_file()
    assert store.check() == [] and not any(store.tmp.iterdir())


@needs_registry
async def test_a_name_that_resolves_nowhere_is_pulled_from_its_mirror(source: Registry, store: ImageStore,
                                                                       tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hypercontainer")
    certs = hosts_dir(tmp_path / "certs", {NAME: mirror(f"http://{source.host}")})
    img = await puller(store, certs).pull(f"{NAME}/x/y:tag")
    check_image(img, store, f"{NAME}/x/y:tag")
    assert f"from mirror http://{source.host}/v2" in caplog.text
    # and by digest (a `pull` capability is enough for that)
    again = await puller(ImageStore(tmp_path / "s2"), certs).pull(img.repo_digests[0])
    assert again.id == img.id


@needs_registry
async def test_first_mirror_down_the_second_serves(source: Registry, store: ImageStore, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    closed = free_port()
    certs = hosts_dir(tmp_path / "certs", {NAME: mirror(f"http://127.0.0.1:{closed}") + mirror(f"http://{source.host}")})
    t0 = time.monotonic()
    img = await puller(store, certs).pull(f"{NAME}/x/y:tag")
    assert time.monotonic() - t0 < 10
    check_image(img, store, f"{NAME}/x/y:tag")
    falls = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(falls) == 1, falls  # an unreachable mirror is left out for the rest of the pull
    assert f"mirror http://127.0.0.1:{closed}/v2 failed: cannot reach" in falls[0]
    assert f"trying mirror http://{source.host}/v2" in falls[0]


@needs_registry
async def test_a_mirror_without_the_image_falls_through(source: Registry, empty: Registry, store: ImageStore,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hypercontainer")
    certs = hosts_dir(tmp_path / "certs", {NAME: mirror(f"http://{empty.host}") + mirror(f"http://{source.host}")})
    img = await puller(store, certs).pull(f"{NAME}/x/y:tag")
    check_image(img, store, f"{NAME}/x/y:tag")
    assert f"manifest unknown to {empty.host}" in caplog.text
    # ... and, after the mirrors, to the registry itself (no `server`: the name's own host)
    host, port = source.host.split(":")
    certs2 = hosts_dir(tmp_path / "certs2", {f"{host}_{port}_": mirror(f"http://{empty.host}")})
    store2 = ImageStore(tmp_path / "s2")
    check_image(await puller(store2, certs2).pull(f"{source.host}/x/y:tag"), store2, f"{source.host}/x/y:tag")


@needs_registry
async def test_when_every_host_fails_the_error_names_each(empty: Registry, store: ImageStore, tmp_path: Path) -> None:
    certs = hosts_dir(tmp_path / "certs", {NAME: mirror(f"http://{empty.host}")})
    with pytest.raises(RegistryError) as e:
        await puller(store, certs).pull(f"{NAME}/x/y:tag")
    msg = str(e.value)
    assert msg.startswith(f"{NAME}/x/y:tag: manifest tag: no host could serve it: ")
    assert f"mirror http://{empty.host}/v2: manifest unknown to {empty.host}" in msg
    assert f"https://{NAME}/v2: cannot reach {NAME}" in msg
    # only mirrors, none has it: not found
    certs2 = hosts_dir(tmp_path / "certs2", {NAME: f'server = "http://{empty.host}"\n' + mirror(f"http://{empty.host}")})
    with pytest.raises(NotFound, match="no host could serve it"):
        await puller(store, certs2).pull(f"{NAME}/x/y:tag")
    assert store.list() == [] and store.check() == []


@needs_registry
async def test_server_replaces_the_registry(source: Registry, store: ImageStore, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    certs = hosts_dir(tmp_path / "certs", {"_default": f'server = "http://{source.host}"\n'})
    img = await puller(store, certs).pull(f"{NAME}/x/y:tag")
    check_image(img, store, f"{NAME}/x/y:tag")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # registry.example.test never tried


@needs_registry
async def test_a_pull_only_mirror_never_resolves_tags(source: Registry, store: ImageStore, tmp_path: Path) -> None:
    """containerd's trust model: a `pull` mirror serves content by digest; only `resolve` hosts map tags."""
    closed = free_port()
    certs = hosts_dir(tmp_path / "certs", {NAME: f'server = "http://127.0.0.1:{closed}"\n'
                                                 + mirror(f"http://{source.host}", '["pull"]')})
    with pytest.raises(RegistryError, match=f"cannot reach 127.0.0.1:{closed}"):
        await puller(store, certs).pull(f"{NAME}/x/y:tag")
    digest = (await Puller(ImageStore(tmp_path / "s2")).pull(f"{source.host}/x/y:tag")).repo_digests[0].split("@")[1]
    img = await puller(store, certs).pull(f"{NAME}/x/y@{digest}")
    assert img.repo_digests == (f"{NAME}/x/y@{digest}",) and img.refs == ()


@needs_registry
async def test_docker_hub_names_through_a_mirror(source: Registry, store: ImageStore, tmp_path: Path) -> None:
    rec = Recorder(upstream=source.host, prefix=("/v2", "/v2"))
    try:
        certs = hosts_dir(tmp_path / "certs", {"docker.io": mirror(f"http://{rec.host}")})
        img = await puller(store, certs).pull("busybox")
        check_image(img, store, "docker.io/library/busybox:latest")
        assert rec.seen[0][0] == "/v2/library/busybox/manifests/latest?ns=docker.io"
    finally:
        rec.close()


@needs_registry
@pytest.mark.parametrize(("url", "extra", "strip", "add"), [
    ("/cache/k8s", "  override_path = true\n", "/cache/k8s", "/v2"),  # the URL's path is the API root
    ("/cache", "", "/cache/v2", "/v2"),  # /v2 appended to the path
])
async def test_a_mirror_under_a_path(source: Registry, store: ImageStore, tmp_path: Path, url: str, extra: str,
                                     strip: str, add: str) -> None:
    rec = Recorder(upstream=source.host, prefix=(strip, add))
    try:
        certs = hosts_dir(tmp_path / "certs", {NAME: mirror(f"http://{rec.host}{url}", extra=extra)})
        check_image(await puller(store, certs).pull(f"{NAME}/x/y:tag"), store, f"{NAME}/x/y:tag")
        assert rec.seen[0][0] == f"{strip}/x/y/manifests/tag?ns={NAME}"
    finally:
        rec.close()


@needs_registry
async def test_credentials_stay_with_the_registry(busybox_tar: Path, store: ImageStore, tmp_path: Path) -> None:
    """Credentials sent for a registry go to it (and its token server) only; a mirror gets what its own [header]
    table says, or nothing."""
    reg = Registry(token_auth=True)
    plain, with_header = Recorder(), Recorder()
    try:
        reg.push(f"docker-archive:{busybox_tar}", "private/busybox:latest")
        host, port = reg.host.split(":")
        mine = "Basic " + base64.b64encode(b"mirror-user:mirror-pw").decode()
        certs = hosts_dir(tmp_path / "certs", {f"{host}_{port}_": mirror(f"http://{plain.host}") + mirror(
            f"http://{with_header.host}", extra=f'  [host."http://{with_header.host}".header]\n'
                                                f'    authorization = "{mine}"\n')})
        img = await puller(store, certs).pull(f"{reg.host}/private/busybox", Credentials(USER, PASSWORD))
        check_image(img, store, f"{reg.host}/private/busybox:latest")
        assert plain.seen and all(authz is None for _, authz in plain.seen)
        assert with_header.seen and all(authz == mine for _, authz in with_header.seen)
        assert all(p.endswith(f"?ns={quote(reg.host, safe='')}") for p, _ in plain.seen + with_header.seen)
        assert reg.tokens and any(r["user"] == USER for r in reg.tokens.requests)
    finally:
        plain.close()
        with_header.close()
        reg.stop()


def registry_routes(source: Registry, repo: str, tag: str, damage: str) -> dict:
    """What `source` serves for repo:tag, with the layer damaged: corrupt (same size) or cut short."""
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    m = httpx.get(f"http://{source.host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    manifest = m.json()
    digest = "sha256:" + hashlib.sha256(m.content).hexdigest()
    base = f"/v2/{repo}"
    mt = {"Content-Type": m.headers["content-type"]}
    routes = {f"{base}/manifests/{tag}": (200, mt, m.content), f"{base}/manifests/{digest}": (200, mt, m.content)}
    for i, d in enumerate([manifest["config"], *manifest["layers"]]):
        blob = httpx.get(f"http://{source.host}{base}/blobs/{d['digest']}").content
        if i == 0:
            routes[f"{base}/blobs/{d['digest']}"] = (200, {}, blob)
        elif damage == "corrupt":
            mid = len(blob) // 2
            routes[f"{base}/blobs/{d['digest']}"] = (200, {}, blob[:mid] + bytes(b ^ 0xFF for b in blob[mid:]))
        else:
            routes[f"{base}/blobs/{d['digest']}"] = (200, {"X-Claim-Length": len(blob)}, blob[: len(blob) // 2])
    return routes


@needs_registry
@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
async def test_a_mirror_serving_a_bad_layer_falls_through(source: Registry, store: ImageStore, tmp_path: Path,
                                                          damage: str, caplog: pytest.LogCaptureFixture) -> None:
    """The layer is unpacked as it downloads: what the bad mirror fed the unpack is thrown away and the layer is
    unpacked from the blob the next host served."""
    bad = Recorder(registry_routes(source, "x/y", "tag", damage))
    try:
        certs = hosts_dir(tmp_path / "certs", {NAME: mirror(f"http://{bad.host}") + mirror(f"http://{source.host}")})
        img = await puller(store, certs).pull(f"{NAME}/x/y:tag")
        check_image(img, store, f"{NAME}/x/y:tag")
        assert "does not match its digest" in caplog.text if damage == "corrupt" else "download failed" in caplog.text
    finally:
        bad.close()


@needs_registry
async def test_without_a_config_nothing_changes(source: Registry, store: ImageStore, tmp_path: Path) -> None:
    """No directory, or one without the registry: the registry alone, with today's errors."""
    for hosts in (None, mirrors.load(tmp_path / "none"),
                  mirrors.load(hosts_dir(tmp_path / "certs", {"other.example": mirror("http://127.0.0.1:1")}))):
        p = Puller(store, hosts=hosts)
        check_image(await p.pull(f"{source.host}/x/y:tag"), store, f"{source.host}/x/y:tag")
        with pytest.raises(NotFound, match=rf"^{source.host}/nothing/here:1: manifest unknown to {source.host}$"):
            await p.pull(f"{source.host}/nothing/here:1")
        store.remove(f"{source.host}/x/y:tag")


# ---- through hyperd and hyperctl -------------------------------------------------------------------------------

@needs_registry
def test_hyperctl_pull_through_hyperds_mirrors(source: Registry, busybox_tar: Path) -> None:
    """hyperd started with a registry config: `hyperctl pull` of a name that resolves nowhere stores the image
    under that name, and a pod runs it."""
    from .conftest import Daemon

    if os.geteuid() != 0:
        pytest.skip("hyperd needs root")
    root = Path(tempfile.mkdtemp(prefix="hc-mirrors-"))
    closed = free_port()
    certs = hosts_dir(root / "certs", {
        "registry.k8s.io": mirror(f"http://127.0.0.1:{closed}") + mirror(f"http://{source.host}"),
    })
    d = Daemon(root, HYPERCONTAINER_REGISTRY_CONFIG=str(certs))
    try:
        d.start()
        ref = "registry.k8s.io/x/y:tag"
        r = d.hyperctl("pull", ref)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == ref.encode() and b"Digest: sha256:" in r.stderr
        listing = d.hyperctl("images", "--digests", check=True).stdout.decode()
        assert "registry.k8s.io/x/y" in listing and source.host not in listing
        info = json.loads(d.hyperctl("image", "inspect", ref, check=True).stdout)
        assert info["refs"] == [ref] and info["digests"][0].startswith("registry.k8s.io/x/y@sha256:")
        out = d.hyperctl("run", "--rm", ref, "echo", "from the mirror")
        assert out.stdout == b"from the mirror\n", out.stderr
        log = d.log.read_text()
        assert f"registry mirrors: registry.k8s.io: http://127.0.0.1:{closed}/v2 -> http://{source.host}/v2" in log
        assert f"trying mirror http://{source.host}/v2" in log
        missing = d.hyperctl("pull", "registry.k8s.io/not/there:1")
        assert missing.returncode == 1 and b"no host could serve it" in missing.stderr, missing.stderr
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
