"""Tenants: tokens, scoping, quotas, the audit log (issue 16's tenancy half).

hyperd's real API over its real parts (daemon.main.assemble: pod manager, image store, state database) in this
process; a remote request is one that comes through `remote()`, the wrapper the TCP listener puts around the app
(`scope["hc.remote"] = True`); the unix socket's have nothing, as with hyperd. No VM boots here: a tenant's pods
are made by the manager's create with the tenant's admission (what POST /v1/pods does before it starts the VM).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
import uvicorn
from click.testing import CliRunner
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

with warnings.catch_warnings():  # starlette's TestClient would rather have httpx2, which is not installed here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse

from hypercontainer.daemon.admission import TenantAdmission
from hypercontainer.daemon.api import DaemonInfo, create_app
from hypercontainer.daemon.audit import AuditLog
from hypercontainer.daemon.config import build
from hypercontainer.daemon.main import Parts, assemble
from hypercontainer.daemon.tenant_images import TenantImages, namespaced, shown
from hypercontainer.daemon.tenants import Tenants, parse_expires
from hypercontainer.guest import assets as guest_assets
from hypercontainer.pod.pod import Pod
from hypercontainer.vm import accel

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

POD = {"name": "web", "containers": [{"name": "main", "image": "busybox"}]}


def remote(app: Any) -> Any:
    """What the TCP listener does to the app (daemon/listen.py's mark_remote)."""
    async def marked(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["hc.remote"] = True
        await app(scope, receive, send)

    return marked


@dataclass
class World:
    parts: Parts
    app: Any
    portal: anyio.from_thread.BlockingPortal
    admin: TestClient  # hyperd's unix socket
    net: TestClient  # its TCP listener
    tenants: Tenants
    audit: Path
    tokens: dict[str, str]
    busybox: Path

    def load(self, who: str) -> None:
        assert self.as_(who, "POST", "/v1/images/load", content=self.busybox.read_bytes()).status_code == 200

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return self.net.request(method, path, headers=headers, **kw)

    def as_(self, who: str, method: str, path: str, **kw: Any) -> Any:
        return self.call(method, path, self.tokens[who], **kw)

    def ws(self, path: str, token: str | None, first: dict) -> tuple[int, dict | None]:
        """A websocket: (401, body) if its handshake is refused, else (101, the first JSON frame after `first`)."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            with self.net.websocket_connect(path, headers=headers) as ws:
                ws.send_json(first)
                return 101, ws.receive_json()
        except WebSocketDenialResponse as e:
            return e.status_code, e.json()
        except WebSocketDisconnect as e:
            return e.code, None

    def pod(self, tenant: str, spec: dict) -> Pod:
        """A pod of `tenant`, as POST /v1/pods makes it before it starts its VM."""
        m, images = self.parts.manager, self.parts.images
        adm = TenantAdmission(self.tenants.get(tenant), m, TenantImages(images, tenant))
        return self.portal.call(lambda: m.create(spec, {"tenant": tenant}, admission=adm))

    def audit_lines(self) -> list[dict]:
        return [json.loads(ln) for ln in self.audit.read_text().splitlines()] if self.audit.exists() else []


def hyperd_parts(root: Path, **settings: Any) -> tuple[Parts, Any]:
    """hyperd's parts and app, with a guest that never boots (no VM starts in these tests)."""
    root.mkdir(parents=True)
    (root / "vmlinux").write_bytes(b"")
    (root / "initrd.cpio").write_bytes(b"")
    cfg = build(root=root / "state", run=root / "run", network="none")
    cfg.paths.ensure()
    a = guest_assets.Assets(root / "vmlinux", root / "initrd.cpio", "6.1-test", "agent", "digest")
    parts = assemble(cfg, a, accel.Accel("tcg", "test"))
    info = DaemonInfo("tcg", "test", str(a.kernel), "6.1-test", str(a.initrd), "agent", str(root / "state"))
    app = create_app(parts.manager, parts.images, parts.puller, info, audit_log=root / "audit.log",
                     **{"rate": 1000.0, "burst": 1000, "recheck": 0.3, **settings})
    return parts, app


@pytest.fixture
def make_world(tmp_path: Path, busybox_tar: Path) -> Iterator[Callable[..., World]]:
    made: list[tuple[Parts, Any]] = []

    def make(**settings: Any) -> World:
        root = tmp_path / f"w{len(made)}"
        parts, app = hyperd_parts(root, **settings)
        cm = anyio.from_thread.start_blocking_portal()
        portal = cm.__enter__()
        made.append((parts, cm))
        admin, net = TestClient(app), TestClient(remote(app))
        admin.portal = net.portal = portal
        w = World(parts, app, portal, admin, net, Tenants(parts.db), root / "audit.log", {}, busybox_tar)
        for name in ("a", "b"):
            assert admin.post("/v1/tenants", json={"name": name}).status_code == 201
            w.tokens[name] = admin.post("/v1/tokens", json={"tenant": name}).json()["token"]
        w.tokens["revoked"] = admin.post("/v1/tokens", json={"tenant": "a"}).json()["token"]
        assert admin.delete(f"/v1/tokens/{w.tokens['revoked'].split('_')[1]}").status_code == 200
        w.tokens["expired"] = w.tenants.issue("a", time.time() - 1)[1]
        w.load("a")
        return w

    yield make
    for parts, cm in made:
        cm.__exit__(None, None, None)
        parts.db.close()


# ---- every route, every caller ---------------------------------------------------------------------------------

ADMIN, POD_REF, IMAGE_REF, VOLUME_REF, OPEN = "admin", "pod", "image", "volume", "open"

# (method, route) -> (what it is, how to call it: path, and request keywords). POD_REF routes are called on tenant
# a's pod `web` (and by its id), IMAGE_REF routes on a's image `busybox`: tenant b must get "not found", exactly as
# for something that does not exist. WEBSOCKET routes: the first frame the client sends.
TABLE: dict[tuple[str, str], tuple[str, str, dict]] = {
    ("GET", "/openapi.json"): (OPEN, "/openapi.json", {}),
    ("GET", "/docs"): (OPEN, "/docs", {}),
    ("GET", "/docs/oauth2-redirect"): (OPEN, "/docs/oauth2-redirect", {}),
    ("GET", "/redoc"): (OPEN, "/redoc", {}),
    ("GET", "/v1/version"): (OPEN, "/v1/version", {}),
    ("GET", "/v1/info"): (OPEN, "/v1/info", {}),  # a tenant's is its own: test_info_of_a_tenant
    ("POST", "/v1/tenants"): (ADMIN, "/v1/tenants", {"json": {"name": "c"}}),
    ("GET", "/v1/tenants"): (ADMIN, "/v1/tenants", {}),
    ("DELETE", "/v1/tenants/{name}"): (ADMIN, "/v1/tenants/b", {"params": {"force": True}}),
    ("POST", "/v1/tokens"): (ADMIN, "/v1/tokens", {"json": {"tenant": "b"}}),
    ("GET", "/v1/tokens"): (ADMIN, "/v1/tokens", {}),
    ("DELETE", "/v1/tokens/{token_id}"): (ADMIN, "/v1/tokens/000000000000", {}),
    ("GET", "/v1/pods"): (OPEN, "/v1/pods", {}),  # scoped: test_pods_are_per_tenant
    ("POST", "/v1/pods"): (IMAGE_REF, "/v1/pods", {"json": {"spec": {**POD, "name": "other"}}}),
    ("GET", "/v1/pods/{ref}"): (POD_REF, "/v1/pods/{ref}", {}),
    ("DELETE", "/v1/pods/{ref}"): (POD_REF, "/v1/pods/{ref}", {"params": {"force": True}}),
    ("POST", "/v1/pods/{ref}/containers"): (POD_REF, "/v1/pods/{ref}/containers",
                                            {"json": {"container": {"name": "side", "image": "busybox"}}}),
    ("DELETE", "/v1/pods/{ref}/containers/{name}"): (POD_REF, "/v1/pods/{ref}/containers/main", {}),
    ("GET", "/v1/pods/{ref}/agent"): (POD_REF, "/v1/pods/{ref}/agent", {}),
    ("POST", "/v1/pods/{ref}/stop"): (POD_REF, "/v1/pods/{ref}/stop", {}),
    ("POST", "/v1/pods/{ref}/kill"): (POD_REF, "/v1/pods/{ref}/kill", {"json": {"signal": 9}}),
    ("GET", "/v1/pods/{ref}/logs"): (POD_REF, "/v1/pods/{ref}/logs", {}),
    ("POST", "/v1/pods/{ref}/pause"): (POD_REF, "/v1/pods/{ref}/pause", {}),
    ("POST", "/v1/pods/{ref}/unpause"): (POD_REF, "/v1/pods/{ref}/unpause", {}),
    ("POST", "/v1/pods/{ref}/wait"): (POD_REF, "/v1/pods/{ref}/wait", {}),
    ("GET", "/v1/pods/{ref}/stats"): (POD_REF, "/v1/pods/{ref}/stats", {}),
    ("GET", "/v1/stats"): (OPEN, "/v1/stats", {}),  # scoped: test_stats.py
    ("GET", "/v1/pods/{ref}/archive/stat"): (POD_REF, "/v1/pods/{ref}/archive/stat", {"params": {"path": "/"}}),
    ("GET", "/v1/pods/{ref}/archive"): (POD_REF, "/v1/pods/{ref}/archive", {"params": {"path": "/etc"}}),
    ("PUT", "/v1/pods/{ref}/archive"): (POD_REF, "/v1/pods/{ref}/archive", {"params": {"path": "/tmp"}}),
    ("GET", "/v1/pods/{ref}/top"): (POD_REF, "/v1/pods/{ref}/top", {}),
    ("GET", "/v1/debug/counts"): (ADMIN, "/v1/debug/counts", {}),
    ("POST", "/v1/pods/{ref}/start"): (POD_REF, "/v1/pods/{ref}/start", {}),
    ("POST", "/v1/pods/{ref}/restart"): (POD_REF, "/v1/pods/{ref}/restart", {"params": {"timeout": 0}}),
    ("POST", "/v1/pods/{ref}/rename"): (POD_REF, "/v1/pods/{ref}/rename", {"json": {"name": "renamed"}}),
    ("POST", "/v1/pods/{ref}/execs"): (POD_REF, "/v1/pods/{ref}/execs", {"json": {"command": ["true"]}}),
    ("GET", "/v1/events"): (OPEN, "/v1/events", {"params": {"since": 0, "until": 1}}),  # scoped: test_events_...
    ("WEBSOCKET", "/v1/pods/{ref}/attach"): (POD_REF, "/v1/pods/{ref}/attach", {"first": {}}),
    ("WEBSOCKET", "/v1/pods/run"): (IMAGE_REF, "/v1/pods/run", {"first": {"spec": {**POD, "name": "other"}}}),
    ("WEBSOCKET", "/v1/pods/{ref}/exec"): (POD_REF, "/v1/pods/{ref}/exec", {"first": {"command": ["true"]}}),
    # networks need hyperd's bridge (none here: 400 for everyone); scoped: test_tenant_networks_are_isolated
    ("GET", "/v1/networks"): (OPEN, "/v1/networks", {}),
    ("POST", "/v1/networks"): (OPEN, "/v1/networks", {"json": {"name": "n1"}}),
    ("DELETE", "/v1/networks/{name}"): (OPEN, "/v1/networks/n1", {}),
    ("GET", "/v1/volumes"): (OPEN, "/v1/volumes", {}),  # scoped: test_volumes_are_per_tenant
    ("POST", "/v1/volumes"): (OPEN, "/v1/volumes", {"json": {"name": "v1", "size": "32M"}}),
    ("GET", "/v1/volumes/{name}"): (VOLUME_REF, "/v1/volumes/data", {}),
    ("DELETE", "/v1/volumes/{name}"): (VOLUME_REF, "/v1/volumes/data", {}),
    ("GET", "/v1/images"): (OPEN, "/v1/images", {}),  # scoped: test_images_are_per_tenant
    ("POST", "/v1/images/pull"): (OPEN, "/v1/images/pull", {"json": {"ref": "127.0.0.1:9/none"}}),
    ("POST", "/v1/images/load"): (OPEN, "/v1/images/load", {"content": b""}),
    ("GET", "/v1/images/save"): (IMAGE_REF, "/v1/images/save", {"params": {"ref": "busybox"}}),
    ("POST", "/v1/images/tag"): (IMAGE_REF, "/v1/images/tag", {"json": {"source": "busybox", "target": "x:1"}}),
    ("POST", "/v1/images/prune"): (ADMIN, "/v1/images/prune", {}),
    ("POST", "/v1/images/push"): (IMAGE_REF, "/v1/images/push", {"json": {"ref": "busybox"}}),
    ("GET", "/v1/system/df"): (OPEN, "/v1/system/df", {}),  # scoped: test_system_tenants.py
    ("POST", "/v1/system/prune"): (ADMIN, "/v1/system/prune", {"json": {}}),
    ("GET", "/v1/images/check"): (ADMIN, "/v1/images/check", {}),
    ("POST", "/v1/auth"): (OPEN, "/v1/auth", {"json": {"registry": "127.0.0.1:9", "username": "u",
                                                        "password": "p"}}),
    ("GET", "/v1/images/{ref:path}"): (IMAGE_REF, "/v1/images/busybox", {}),
    ("DELETE", "/v1/images/{ref:path}"): (IMAGE_REF, "/v1/images/busybox", {}),
}
MISSING_IMAGE = "no such image: busybox (pull it with 'hyperctl pull busybox' or load it with 'hyperctl load -i FILE')"


def routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) the app serves: the OpenAPI schema's, and the routes it leaves out (websockets, docs)."""
    found = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    for r in app.routes:
        if isinstance(r, WebSocketRoute) or type(r).__name__ == "APIWebSocketRoute":
            found.add(("WEBSOCKET", r.path))
        elif isinstance(r, Route):
            found |= {(m, r.path) for m in r.methods or () if m != "HEAD"}
    return {(m, p.replace("{ref}", "{ref:path}") if p.startswith("/v1/images/{ref}") else p) for m, p in found}


def test_every_route_has_an_entry(make_world: Callable[..., World]) -> None:
    w = make_world()
    assert routes(w.app) == set(TABLE), "a route without an entry in TABLE (or an entry for no route)"


def _call(w: World, key: tuple[str, str], token: str | None, ref: str = "web") -> tuple[int, dict | None]:
    _, path, kw = TABLE[key]
    path = path.replace("{ref}", ref)
    if key[0] == "WEBSOCKET":
        return w.ws(path, token, kw["first"])
    r = w.call(key[0], path, token, **kw)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def test_every_route_refuses_whoever_may_not(make_world: Callable[..., World]) -> None:
    w = make_world()
    pod = w.pod("a", POD)
    assert w.as_("a", "POST", "/v1/volumes", json={"name": "data", "size": "32M"}).status_code == 201
    for key, (kind, _, _) in TABLE.items():
        for token, why in ((None, "no token"), (w.tokens["revoked"], "revoked"), (w.tokens["expired"], "expired"),
                           ("hct_" + "0" * 12 + "_" + "x" * 43, "unknown"), ("not-a-token", "malformed")):
            status, body = _call(w, key, token)
            assert status == 401, (key, why, status, body)
            assert body and body["code"] == "unauthenticated", (key, why, body)
        if kind == ADMIN:
            for who in ("a", "b"):
                status, body = _call(w, key, w.tokens[who])
                assert (status, body and body["code"]) == (403, "forbidden"), (key, who, status, body)
        elif kind == POD_REF:
            for ref in ("web", pod.id, pod.id[:12]):
                status, body = _call(w, key, w.tokens["b"], ref)
                if key[0] == "WEBSOCKET":
                    status, body = (404, body) if body and body.get("code") == "not_found" else (status, body)
                    body = {k: v for k, v in (body or {}).items() if k != "type"}
                assert (status, body) == (404, {"code": "not_found", "message": f"no such pod: {ref}"}), \
                    (key, ref, status, body)
        elif kind == VOLUME_REF:
            status, body = _call(w, key, w.tokens["b"])
            assert (status, body) == (404, {"code": "not_found", "message": "no such volume: data"}), \
                (key, status, body)
        elif kind == IMAGE_REF:
            status, body = _call(w, key, w.tokens["b"])
            if key[0] == "WEBSOCKET":
                status, body = (404, body) if body and body.get("code") == "not_found" else (status, body)
                body = {k: v for k, v in (body or {}).items() if k != "type"}
            assert (status, body) == (404, {"code": "not_found", "message": MISSING_IMAGE}), (key, status, body)
    # tenant a's pod and image are untouched, and b made nothing
    assert {p.name for p in w.parts.manager.pods.values()} == {"web"}
    assert w.as_("a", "GET", "/v1/images/busybox").status_code == 200
    assert w.as_("a", "GET", "/v1/volumes/data").status_code == 200


def test_a_token_in_the_url_is_refused(make_world: Callable[..., World]) -> None:
    w = make_world()
    for params in ({"token": w.tokens["a"]}, {"access_token": w.tokens["a"]}, {"ref": w.tokens["a"]}):
        r = w.call("GET", "/v1/pods", w.tokens["a"], params=params)
        assert r.status_code == 400 and "never in the URL" in r.json()["message"], r.text
    status, body = w.ws("/v1/pods/web/exec?token=" + w.tokens["a"], None, {"command": ["true"]})
    assert status == 400 and body and "never in the URL" in body["message"]


def test_the_unix_socket_is_the_administrator(make_world: Callable[..., World]) -> None:
    w = make_world()
    w.load("b")
    pa = w.pod("a", POD)
    pb = w.pod("b", POD)  # the same name: names are per tenant
    pods = {p["id"]: p for p in w.admin.get("/v1/pods").json()}
    assert {pa.id, pb.id} <= set(pods) and pods[pa.id]["meta"] == {"tenant": "a"}
    r = w.admin.get("/v1/pods/web")  # two tenants' pods answer to it: the administrator gives the id
    assert r.status_code == 400 and "several tenants" in r.json()["message"]
    assert w.admin.get(f"/v1/pods/{pb.id[:12]}").json()["id"] == pb.id
    assert "runtime" in pods[pa.id]
    assert "root" in w.admin.get("/v1/info").json()


# ---- scoping ---------------------------------------------------------------------------------------------------

def test_pods_are_per_tenant(make_world: Callable[..., World]) -> None:
    w = make_world()
    w.load("b")
    pa = w.pod("a", POD)
    assert w.as_("b", "GET", "/v1/pods").json() == []
    listed = w.as_("a", "GET", "/v1/pods").json()
    assert [p["id"] for p in listed] == [pa.id]
    assert "runtime" not in listed[0] and "pid" not in listed[0]["vm"]  # the host's side of it is not theirs
    assert w.as_("a", "GET", "/v1/pods/web").json()["id"] == pa.id
    pb = w.pod("b", POD)  # tenant b's `web` is its own; neither learns of the other's
    assert pb.id != pa.id and w.as_("b", "GET", "/v1/pods/web").json()["id"] == pb.id
    with pytest.raises(Exception, match=r"^the name web is already in use by another pod"):
        w.pod("b", POD)
    r = w.as_("b", "DELETE", f"/v1/pods/{pb.id}")
    assert r.status_code == 200 and w.as_("a", "GET", "/v1/pods/web").json()["id"] == pa.id


def test_events_are_per_tenant(make_world: Callable[..., World]) -> None:
    w = make_world()
    w.load("b")
    since = time.time() - 1
    pa, pb = w.pod("a", POD), w.pod("b", {**POD, "name": "db"})
    until = time.time() + 0.5

    def seen(who: str) -> set[str]:
        r = w.as_(who, "GET", "/v1/events", params={"since": since, "until": until})
        return {json.loads(ln)["id"] for ln in r.text.splitlines()}

    assert seen("a") == {pa.id} and seen("b") == {pb.id}
    r = w.admin.get("/v1/events", params={"since": since, "until": until})
    assert {json.loads(ln)["id"] for ln in r.text.splitlines()} == {pa.id, pb.id}


def test_info_of_a_tenant(make_world: Callable[..., World]) -> None:
    w = make_world()
    w.pod("a", POD)
    info = w.as_("a", "GET", "/v1/info").json()
    assert info["tenant"]["name"] == "a" and info["tenant"]["usage"] == {"pods": 1, "vcpus": 1, "memory": 256}
    assert (info["pods"]["total"], info["images"]) == (1, 1)
    text = json.dumps(info)
    assert str(w.parts.manager.poddir.parent) not in text and "kernel" not in text and "cri" not in text
    assert w.as_("b", "GET", "/v1/info").json()["pods"]["total"] == 0


def test_images_are_per_tenant(make_world: Callable[..., World], tmp_path: Path) -> None:
    w = make_world()
    a_list = w.as_("a", "GET", "/v1/images").json()
    assert [i["refs"] for i in a_list] == [["busybox:latest"]]
    assert w.as_("b", "GET", "/v1/images").json() == []
    # the daemon's own `busybox` is not tenant a's: the administrator has none, and sees a's under its namespace
    assert w.admin.get("/v1/images/busybox").status_code == 404
    assert [i["refs"] for i in w.admin.get("/v1/images").json()] == [["tenant:a/docker.io/library/busybox:latest"]]
    assert w.as_("a", "POST", "/v1/images/tag", json={"source": "busybox", "target": "mine:1"}).status_code == 200
    assert w.as_("b", "GET", "/v1/images/mine:1").status_code == 404
    assert sorted(w.as_("a", "GET", f"/v1/images/{a_list[0]['id']}").json()["refs"]) == ["busybox:latest",
                                                                                         "mine:1"]
    # b loads the same image: one copy of its content, two names, each tenant sees only its own
    with (tmp_path / "bb.tar").open("wb") as f:
        f.write(w.as_("a", "GET", "/v1/images/save", params={"ref": "busybox"}).content)
    with tarfile.open(tmp_path / "bb.tar") as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["busybox:latest"]  # no namespace, no one else's name in the archive
    assert w.as_("b", "POST", "/v1/images/load", content=(tmp_path / "bb.tar").read_bytes()).status_code == 200
    assert [i["refs"] for i in w.as_("b", "GET", "/v1/images").json()] == [["busybox:latest"]]
    assert len(w.admin.get("/v1/images").json()) == 1
    # a's pod holds the image; a's rmi drops a's names, the image stays while b names it
    w.pod("a", POD)
    assert w.as_("a", "DELETE", "/v1/images/busybox").json()["removed"] == ["Untagged: busybox:latest"]
    r = w.as_("a", "DELETE", "/v1/images/mine:1")
    assert r.json()["removed"] == ["Untagged: mine:1"]
    assert w.as_("a", "GET", "/v1/images").json() == []
    assert w.as_("b", "GET", "/v1/images/busybox").status_code == 200
    assert w.as_("b", "DELETE", "/v1/images/busybox").status_code == 400  # the last name of an image in use
    w.portal.call(w.parts.manager.remove, w.parts.manager.resolve("web", "a"))
    removed = w.as_("b", "DELETE", "/v1/images/busybox").json()["removed"]
    assert removed[0] == "Untagged: busybox:latest" and removed[1].startswith("Deleted: sha256:")


@pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                    reason="needs docker-registry and skopeo (make test installs them)")
def test_a_tenants_pull_is_its_own(make_world: Callable[..., World], busybox_tar: Path) -> None:
    """A pull names the image in the tenant's namespace only; the credentials it brings serve that pull alone."""
    from tests.registry import PASSWORD, USER, Registry

    reg = Registry(token_auth=True)
    try:
        reg.push(f"docker-archive:{busybox_tar}", "team/app:1")
        w = make_world()
        ref = f"{reg.host}/team/app:1"

        def pull(who: str, what: str, creds: bool) -> dict:
            auth = {"username": USER, "password": PASSWORD} if creds else None
            r = w.as_(who, "POST", "/v1/images/pull", json={"ref": what, "auth": auth})
            return json.loads(r.text.splitlines()[-1])

        done = pull("b", ref, True)
        assert done["status"] == "done" and done["image"]["refs"] == [ref], done
        digest = done["image"]["digests"][0]
        assert digest.startswith(f"{reg.host}/team/app@sha256:")
        assert w.as_("b", "GET", f"/v1/images/{ref}").status_code == 200
        assert w.as_("a", "GET", f"/v1/images/{ref}").status_code == 404
        assert w.as_("a", "GET", f"/v1/images/{digest}").status_code == 404
        assert w.admin.get(f"/v1/images/{ref}").status_code == 404  # no name of the daemon's own
        assert "error" in pull("a", ref, False)  # b's credentials stayed with b's pull
        done = pull("a", digest, True)  # by digest: a's own name for it (the same content as a's busybox)
        assert done["status"] == "done" and done["image"]["digests"] == [digest], done
        assert done["image"]["refs"] == ["busybox:latest"]
        assert w.as_("a", "GET", f"/v1/images/{digest}").json()["id"] == done["image"]["id"]
        assert w.as_("a", "POST", "/v1/pods", json={"spec": {**POD, "containers": [
            {"name": "main", "image": digest, "privileged": True}]}}).status_code == 403  # its image: admitted
        assert w.as_("a", "DELETE", f"/v1/images/{digest}").json()["removed"] == [f"Untagged: {digest}"]
        assert w.as_("a", "GET", f"/v1/images/{digest}").status_code == 404
        assert w.as_("a", "GET", "/v1/images/busybox").json()["digests"] == []
        assert w.as_("b", "GET", f"/v1/images/{ref}").status_code == 200
    finally:
        reg.stop()


def test_namespaced_names() -> None:
    for text in ("busybox", "localhost:5000/team/app:1.2", "reg.example/x@sha256:" + "ab" * 32):
        stored = namespaced("acme", text)
        assert stored.startswith("tenant:acme/") and shown("acme", stored) is not None
        assert shown("other", stored) is None
    assert shown("acme", namespaced("acme", "localhost:5000/team/app:1.2")) == "localhost:5000/team/app:1.2"
    assert shown("acme", namespaced("acme", "busybox@sha256:" + "ab" * 32)) == "busybox@sha256:" + "ab" * 32


# ---- what tenants may not do -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    ({"volumes": [{"name": "h", "host_path": "/etc"}]}, "volume h: host paths are for the administrator"),
    ({"volumes": [{"name": "d", "block": "/dev/sda"}]}, "volume d: host paths are for the administrator"),
    ({"network": {"namespace": "/proc/1/ns/net"}}, "network namespaces (--net ns:PATH) are for the administrator"),
    ({"containers": [{"name": "main", "image": "busybox", "privileged": True}]},
     "container main: privileged containers are for the administrator"),
    ({"containers": [{"name": "main", "image": "busybox", "capabilities": {"add": ["SYS_MODULE"]}}]},
     "container main: capabilities SYS_MODULE are for the administrator"),
    ({"network": "bridge", "ports": [{"container_port": 80, "host_port": 80}]},
     "host port 80: ports below 1024 are for the administrator"),
])
def test_what_is_the_administrators(make_world: Callable[..., World], change: dict, message: str) -> None:
    w = make_world()
    r = w.as_("a", "POST", "/v1/pods", json={"spec": {**POD, **change}})
    assert r.status_code == 403 and r.json() == {"code": "forbidden", "message": message}, r.text
    assert not w.parts.manager.pods


def test_a_kubernetes_manifest_with_a_host_path(make_world: Callable[..., World]) -> None:
    w = make_world()
    kube = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "k"},
            "spec": {"volumes": [{"name": "h", "hostPath": {"path": "/root"}}],
                     "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "h",
                                                                                       "mountPath": "/h"}]}]}}
    r = w.as_("a", "POST", "/v1/pods", json={"spec": kube})
    assert r.status_code == 403 and "host paths are for the administrator" in r.json()["message"]
    r = w.as_("a", "POST", "/v1/pods/web/containers", json={"container": {"name": "p", "image": "busybox",
                                                                           "privileged": True}})
    assert r.status_code == 404  # a has no pod web yet
    w.pod("a", POD)
    r = w.as_("a", "POST", "/v1/pods/web/containers", json={"container": {"name": "p", "image": "busybox",
                                                                           "privileged": True}})
    assert r.status_code == 403 and r.json()["message"] == "container p: privileged containers are for the " \
                                                          "administrator"


# ---- quotas ----------------------------------------------------------------------------------------------------

def _nothing_more(w: World, before: tuple[set[str], int, set[str]]) -> None:
    """No pod, no record, no directory (and so no VM) came of a refused create."""
    m = w.parts.manager
    assert (set(m.pods), len(w.parts.db.all()), {p.name for p in m.poddir.iterdir()}) == before


def _state(w: World) -> tuple[set[str], int, set[str]]:
    m = w.parts.manager
    return set(m.pods), len(w.parts.db.all()), {p.name for p in m.poddir.iterdir()}


@pytest.mark.parametrize(("quota", "specs", "last", "message"), [
    ({"max_pods": 2}, [{}, {}], {}, "tenant q: the pods quota would be exceeded: 2 in use + 1 asked > 2 allowed"),
    ({"max_vcpus": 3}, [{"resources": {"vcpu": 2}}], {"resources": {"vcpu": 2}},
     "tenant q: the vcpus quota would be exceeded: 2 in use + 2 asked > 3 allowed"),
    ({"max_memory": 1024}, [{"resources": {"memory": 512}}, {"resources": {"memory": 256}}],
     {"resources": {"memory": 512}},
     "tenant q: the memory quota would be exceeded: 768 MiB in use + 512 MiB asked > 1024 MiB allowed"),
])
def test_quotas(make_world: Callable[..., World], quota: dict, specs: list[dict], last: dict, message: str) -> None:
    w = make_world()
    assert w.admin.post("/v1/tenants", json={"name": "q", **quota}).status_code == 201
    token = w.admin.post("/v1/tokens", json={"tenant": "q"}).json()["token"]
    assert w.call("POST", "/v1/images/load", token, content=w.busybox.read_bytes()).status_code == 200
    for i, s in enumerate(specs):
        w.pod("q", {**POD, "name": f"p{i}", **s})
    before = _state(w)
    r = w.call("POST", "/v1/pods", token, json={"spec": {**POD, "name": "over", **last}})
    assert r.status_code == 403 and r.json() == {"code": "forbidden", "message": message}, r.text
    _nothing_more(w, before)
    status, body = w.ws("/v1/pods/run", token, {"spec": {**POD, "name": "over", **last}})
    assert (status, body) == (101, {"type": "error", "code": "forbidden", "message": message})
    _nothing_more(w, before)
    usage = next(t for t in w.admin.get("/v1/tenants").json() if t["name"] == "q")["usage"]
    assert usage["pods"] == len(specs)


# ---- tokens ----------------------------------------------------------------------------------------------------

def test_tokens_are_kept_hashed_and_shown_once(make_world: Callable[..., World]) -> None:
    w = make_world()
    r = w.admin.post("/v1/tokens", json={"tenant": "a", "expires": "12h"})
    tok = r.json()
    assert tok["token"].startswith(f"hct_{tok['id']}_") and abs(tok["expires"] - time.time() - 43200) < 60
    listed = w.admin.get("/v1/tokens", params={"tenant": "a"}).json()
    assert all("token" not in t for t in listed) and tok["id"] in {t["id"] for t in listed}
    secret = tok["token"].split("_", 2)[2]
    rows = w.parts.db.query("SELECT salt, hash FROM tokens WHERE id = ?", (tok["id"],))
    assert secret.encode() not in rows[0][0] + rows[0][1]
    assert w.call("GET", "/v1/pods", tok["token"]).status_code == 200
    assert w.call("GET", "/v1/pods", tok["token"][:-1] + ("A" if tok["token"][-1] != "A" else "B")).status_code == 401
    assert w.admin.post("/v1/tokens", json={"tenant": "a", "expires": "soon"}).status_code == 400
    assert w.admin.post("/v1/tokens", json={"tenant": "nobody"}).status_code == 404
    assert parse_expires("never") is None


def _stream_in_thread(w: World, path: str, token: str, **kw: Any) -> tuple[threading.Thread, dict]:
    out: dict[str, Any] = {}

    def read() -> None:
        with w.net.stream("GET", path, headers={"authorization": f"Bearer {token}"}, **kw) as r:
            out["status"] = r.status_code
            out["lines"] = list(r.iter_lines())
        out["ended"] = time.monotonic()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, out


def test_revoking_a_token_cuts_its_open_log_stream(make_world: Callable[..., World]) -> None:
    w = make_world()
    pod = w.pod("a", POD)
    c = pod.containers[0]
    c.log_path.parent.mkdir(parents=True)
    c.log_path.write_text(json.dumps({"time": "2026-01-01T00:00:00+00:00", "stream": "stdout", "log": "hi\n"}) + "\n")
    token = w.admin.post("/v1/tokens", json={"tenant": "a"}).json()
    t, out = _stream_in_thread(w, "/v1/pods/web/logs", token["token"], params={"follow": True})
    time.sleep(1.0)
    assert t.is_alive(), out  # following: the container has not ended
    revoked = time.monotonic()
    assert w.admin.delete(f"/v1/tokens/{token['id']}").json()["cut"] == 1
    t.join(5)
    assert not t.is_alive() and out["ended"] - revoked < 3, out
    assert out["status"] == 200 and len(out["lines"]) == 2
    assert json.loads(out["lines"][1])["error"]["code"] == "unauthenticated"  # the stream says why it ends
    assert w.call("GET", "/v1/pods", token["token"]).status_code == 401  # and the next request is refused
    line = next(a for a in w.audit_lines() if a["action"] == "GET /v1/pods/{ref}/logs")
    assert (line["status"], line["cut"], line["token"]) == (401, True, token["id"])


def test_a_token_revoked_elsewhere_or_expiring_ends_its_streams(make_world: Callable[..., World]) -> None:
    """Not through this API (another hyperd process on the same state; the clock): the periodic check."""
    w = make_world()
    for how in ("revoke", "expire"):
        tok, text = w.tenants.issue("a", time.time() + (2 if how == "expire" else 3600))
        t, _ = _stream_in_thread(w, "/v1/events", text)
        time.sleep(0.5)
        assert t.is_alive()
        if how == "revoke":
            w.tenants.revoke(tok.id)
        t.join(5)
        assert not t.is_alive(), how


def test_removing_a_tenant(make_world: Callable[..., World]) -> None:
    w = make_world()
    pod = w.pod("a", POD)
    r = w.admin.delete("/v1/tenants/a")
    assert r.status_code == 409 and "has 1 pods" in r.json()["message"]
    assert w.admin.delete("/v1/tenants/a", params={"force": True}).json() == {"name": "a", "pods": [pod.id]}
    assert not w.parts.manager.pods and w.as_("a", "GET", "/v1/pods").status_code == 401
    assert w.admin.get("/v1/images").json() == []  # its names went, and with them the image no one else named
    assert [t["name"] for t in w.admin.get("/v1/tenants").json()] == ["b"]
    assert w.admin.post("/v1/tenants", json={"name": "Bad_Name"}).status_code == 400
    assert w.admin.post("/v1/tenants", json={"name": "b"}).status_code == 409


# ---- rate limit, audit -----------------------------------------------------------------------------------------

def test_rate_limit(make_world: Callable[..., World]) -> None:
    w = make_world(rate=0.5, burst=3)
    w.tokens["c"] = w.tenants.issue("b", None)[1]
    got = [w.as_("c", "GET", "/v1/version") for _ in range(4)]
    assert [r.status_code for r in got] == [200, 200, 200, 429]
    assert got[3].json()["code"] == "rate_limited" and int(got[3].headers["retry-after"]) >= 1
    assert w.as_("b", "GET", "/v1/version").status_code == 200  # per token
    assert w.admin.get("/v1/version").status_code == 200  # the administrator is not limited
    assert any(a["status"] == 429 and a["action"] == "GET /v1/version" for a in w.audit_lines())


def test_audit_log(make_world: Callable[..., World]) -> None:
    w = make_world()
    w.pod("a", POD)
    a_id, b_id = (w.tokens[x].split("_")[1] for x in ("a", "b"))
    w.as_("a", "POST", "/v1/pods/web/pause")
    w.as_("b", "GET", "/v1/pods/web")
    w.as_("b", "GET", "/v1/tenants")
    w.call("GET", "/v1/pods")
    w.as_("a", "GET", "/v1/pods")  # neither mutating nor refused: not audited
    lines = w.audit_lines()
    assert all(set(a) >= {"time", "tenant", "token", "action", "object", "status"} for a in lines)
    want = [(None, None, "POST /v1/tenants", None, 201),
            (None, None, "DELETE /v1/tokens/{token_id}", None, 200),
            ("a", a_id, "POST /v1/images/load", None, 200),
            ("a", a_id, "POST /v1/pods/{ref}/pause", "web", 409),
            ("b", b_id, "GET /v1/pods/{ref}", "web", 404),
            ("b", b_id, "GET /v1/tenants", None, 403),
            (None, None, "GET /v1/pods", None, 401)]
    got = [(a["tenant"], a["token"], a["action"], a["object"], a["status"]) for a in lines]
    for entry in want:
        assert any(g == entry or (entry[3] is None and g[:3] == entry[:3] and g[4] == entry[4]) for g in got), \
            (entry, got)
    assert not any(g[2] == "GET /v1/pods" and g[0] == "a" for g in got)
    assert w.audit.stat().st_mode & 0o777 == 0o600


def test_audit_log_rotates(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", max_bytes=300, keep=2)
    for i in range(40):
        log.record("a", "t", "POST /v1/pods", f"p{i}", 201)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())
    assert json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])["object"] == "p39"


# ---- over real sockets: uvicorn, hyperctl's client and its tenant/token commands ----------------------------------

@contextlib.contextmanager
def served(app: Any, admin_sock: Path, net_sock: Path) -> Iterator[None]:
    """The app on two unix sockets, as hyperd serves it: `admin_sock` as its own, `net_sock` as its TCP listener
    (marked remote; TLS is the transport's business, not tenancy's)."""
    servers = [uvicorn.Server(uvicorn.Config(a, uds=str(p), log_level="warning", lifespan="off",
                                             ws_ping_interval=None))
               for a, p in ((app, admin_sock), (remote(app), net_sock))]

    async def both() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    t = threading.Thread(target=asyncio.run, args=(both(),), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not all(s.started for s in servers):
        assert time.monotonic() < deadline and t.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        for s in servers:
            s.should_exit = True
        t.join(10)


def test_over_sockets_with_hyperctl(tmp_path: Path, busybox_tar: Path) -> None:
    from hypercontainer.cli.client import Client
    from hypercontainer.cli.context import Endpoint
    from hypercontainer.cli.hyperctl.tenants import tenant, token
    from hypercontainer.errors import Forbidden, HCError, NotFound, Unauthenticated

    parts, app = hyperd_parts(tmp_path / "hyperd", recheck=5.0)
    admin_sock, net_sock = tmp_path / "hyperd.sock", tmp_path / "net.sock"
    env = {"HYPERCONTAINER_SOCKET": str(admin_sock), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "HYPERCONTAINER_HOST": None, "HYPERCONTAINER_TOKEN": None}
    cli = CliRunner()

    def hyperctl(group: Any, *args: str) -> str:
        r = cli.invoke(group, list(args), env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.stdout

    try:
        with served(app, admin_sock, net_sock):
            assert hyperctl(tenant, "create", "acme", "--max-pods", "1", "--max-memory", "512") == "acme\n"
            text = hyperctl(token, "create", "--tenant", "acme", "--expires", "1d").strip()
            assert text.startswith("hct_") and "\n" not in text
            token_id = text.split("_")[1]
            assert "acme" in hyperctl(tenant, "ls") and "0/1" in hyperctl(tenant, "ls")
            assert token_id in hyperctl(token, "ls") and text not in hyperctl(token, "ls")

            acme = Client(Endpoint(socket=net_sock, token=text))
            assert acme.request("GET", "/v1/pods") == []
            assert acme.upload("/v1/images/load", busybox_tar)["loaded"][0]["refs"] == ["busybox:latest"]
            with pytest.raises(Forbidden, match="for the administrator"):
                acme.request("GET", "/v1/tokens")
            with pytest.raises(Unauthenticated, match="a token is needed"):
                Client(Endpoint(socket=net_sock)).request("GET", "/v1/pods")
            with pytest.raises(Unauthenticated, match="a token is needed"):  # a websocket's handshake: 401
                Client(Endpoint(socket=net_sock)).websocket("/v1/pods/web/exec")
            with acme.websocket("/v1/pods/web/exec") as ws:
                ws.send(json.dumps({"command": ["true"]}))
                assert json.loads(ws.recv(10)) == {"type": "error", "code": "not_found", "message": "no such pod: web"}
            with pytest.raises(NotFound):
                Client(Endpoint(socket=admin_sock)).request("GET", "/v1/images/busybox")

            # an event stream of the token's, cut when the administrator revokes it (recheck is 5 s: the cut is
            # the revocation's own, not the periodic check)
            out: dict[str, Any] = {}

            def follow() -> None:
                try:
                    out["lines"] = list(acme.stream_lines("/v1/events"))
                except HCError as e:
                    out["error"] = e.message
                out["ended"] = time.monotonic()

            t = threading.Thread(target=follow, daemon=True)
            t.start()
            time.sleep(0.5)
            assert t.is_alive()
            revoked = time.monotonic()
            assert hyperctl(token, "revoke", token_id) == f"{token_id}\n"
            t.join(5)
            assert not t.is_alive() and out["ended"] - revoked < 2, out
            assert [json.loads(ln) for ln in out["lines"]] == [{"error": {  # cut, not ended: its last line says so
                "code": "unauthenticated", "message": "the token is no longer valid (revoked, expired, or its tenant "
                "removed)"}}], out
            with pytest.raises(Unauthenticated, match="revoked"):
                acme.request("GET", "/v1/pods")
            assert "revoked" in hyperctl(token, "ls")
            assert hyperctl(tenant, "rm", "acme") == "acme\n"
            assert hyperctl(tenant, "ls", "-q") == ""
    finally:
        parts.db.close()


# ---- a real hyperd, its TLS listener and VMs ------------------------------------------------------------------

@pytest.mark.vm
def test_a_tenant_on_a_real_hyperd(busybox_tar: Path) -> None:
    """A tenant runs a pod (a VM) over hyperd's TLS listener within its quota; a pod past it leaves nothing; revoking
    the token cuts its `logs -f` and its exec websocket; removing the tenant removes its pods."""
    from websockets.exceptions import ConnectionClosed

    from hypercontainer.cli.client import Client
    from hypercontainer.cli.context import Endpoint
    from hypercontainer.errors import Forbidden, HCError

    from .conftest import BIN, Daemon
    from .registry import free_port

    if os.geteuid() != 0:
        pytest.skip("hyperd needs root")
    root = Path(tempfile.mkdtemp(prefix="hc-tenants-"))
    r = subprocess.run([str(BIN / "hyperd"), "tls", "init", str(root / "tls")], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    port = free_port()
    d = Daemon(root, HYPERCONTAINER_LISTEN=f"tcp://127.0.0.1:{port}", HYPERCONTAINER_TLS_DIR=str(root / "tls"),
               HYPERCONTAINER_BOOT="cold")
    d.start()
    try:
        admin = Client(Endpoint(socket=d.rundir / "hyperd.sock"))
        admin.request("POST", "/v1/tenants", json={"name": "t", "max_vcpus": 2})
        tok = admin.request("POST", "/v1/tokens", json={"tenant": "t"})
        t = Client(Endpoint(host="127.0.0.1", port=port, ca_file=root / "tls" / "ca.pem", token=tok["token"]),
                   timeout=None)
        t.upload("/v1/images/load", busybox_tar)
        spec = {"name": "ticker", "containers": [{"name": "main", "image": "busybox", "command": [
            "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]}]}
        t.request("POST", "/v1/pods", json={"spec": spec})
        with pytest.raises(Forbidden, match=r"vcpus quota would be exceeded: 1 in use \+ 2 asked > 2 allowed"):
            t.request("POST", "/v1/pods", json={"spec": {**spec, "name": "big", "resources": {"vcpu": 2}}})
        assert [p["name"] for p in admin.request("GET", "/v1/pods")] == ["ticker"]
        assert [p["name"] for p in t.request("GET", "/v1/pods")] == ["ticker"]

        out: dict[str, Any] = {"lines": []}

        def follow() -> None:
            try:
                for line in t.stream_lines("/v1/pods/ticker/logs", follow=True):
                    out["lines"].append(json.loads(line))
            except HCError as e:
                out["error"] = e.message
            out["ended"] = time.monotonic()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        with t.websocket("/v1/pods/ticker/exec") as ws:
            ws.send(json.dumps({"command": ["sleep", "600"]}))
            deadline = time.monotonic() + 60
            while not any("tick" in ln.get("log", "") for ln in out["lines"]):
                assert time.monotonic() < deadline and reader.is_alive(), out
                time.sleep(0.1)
            revoked = time.monotonic()
            admin.request("DELETE", f"/v1/tokens/{tok['id']}")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        reader.join(5)
        assert not reader.is_alive() and out["ended"] - revoked < 3, out
        assert out["lines"][-1]["error"]["code"] == "unauthenticated", out
        with pytest.raises(HCError, match="revoked"):
            t.request("GET", "/v1/pods")
        admin.request("DELETE", "/v1/tenants/t", params={"force": True})
        assert admin.request("GET", "/v1/pods") == []
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---- named volumes (the VM side: test_a_tenants_network_and_volume_on_real_vms) ------------------------------

def test_volumes_are_per_tenant_counted_and_kept_while_used(make_world: Callable[..., World]) -> None:
    w = make_world()
    w.load("b")
    assert w.as_("a", "POST", "/v1/volumes", json={"name": "data", "size": "64M"}).json()["size"] == 64 << 20
    assert w.as_("b", "GET", "/v1/volumes").json() == []
    assert w.as_("b", "POST", "/v1/volumes", json={"name": "data", "size": "32M"}).status_code == 201  # its own
    r = w.as_("a", "POST", "/v1/volumes", json={"name": "data", "size": "32M"})
    assert r.status_code == 409 and r.json()["message"] == "volume data exists"
    # a pod names a volume: its owner's, attached as a block volume; another tenant's name is not found
    spec = {**POD, "volumes": [{"name": "d", "named": "data"}],
            "containers": [{"name": "main", "image": "busybox", "volumes": [{"name": "d", "path": "/data"}]}]}
    pod = w.pod("a", spec)
    mine = w.parts.manager.volumes.get("a", "data")  # type: ignore[union-attr]
    assert [str(v.block) for v in pod.spec.volumes] == [str(mine.path)]
    with pytest.raises(Exception, match="no such volume: elsewhere"):
        w.pod("a", {**spec, "name": "other", "volumes": [{"name": "d", "named": "elsewhere"}]})
    forged = {**spec, "name": "forged", "volumes": [{"name": "d", "named": "data", "block": "/etc/shadow"}]}
    with pytest.raises(Exception, match="host paths are for the administrator"):
        w.pod("a", forged)  # a block path given with the name is refused, never used
    r = w.as_("a", "DELETE", "/v1/volumes/data")
    assert r.status_code == 409 and "in use by a pod" in r.json()["message"]
    assert w.as_("a", "GET", "/v1/volumes/data").json()["in_use"] is True
    assert w.as_("a", "DELETE", "/v1/pods/web", params={"force": True}).status_code == 200
    assert w.as_("a", "DELETE", "/v1/volumes/data").status_code == 200 and not mine.path.exists()
    # the quota: max_volume_gib
    assert w.admin.post("/v1/tenants", json={"name": "small", "max_volume_gib": 1}).status_code == 201
    tok = w.admin.post("/v1/tokens", json={"tenant": "small"}).json()["token"]
    assert w.call("POST", "/v1/volumes", tok, json={"name": "one", "size": "1G"}).status_code == 201
    r = w.call("POST", "/v1/volumes", tok, json={"name": "two", "size": "32M"})
    assert r.status_code == 403 and r.json()["message"] == ("tenant small: the volume quota would be exceeded: "
                                                             "1024 MiB in use + 32 MiB asked > 1024 MiB allowed")
    assert [v["name"] for v in w.call("GET", "/v1/volumes", tok).json()] == ["one"]
    assert w.admin.delete("/v1/tenants/small").status_code == 200  # its volumes go with it
    assert w.parts.manager.volumes.all("small") == []  # type: ignore[union-attr]
