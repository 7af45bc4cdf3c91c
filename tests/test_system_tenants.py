"""Push and system df for tenants (the world of test_tenants.py: hyperd's real API, no VM): a tenant pushes only
an image it named, with the credentials it sends; its df counts only its own things; prune is the
administrator's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable

import httpx
import pytest

from . import test_tenants
from .registry import PASSWORD, USER, Registry
from .test_tenants import World

make_world = test_tenants.make_world  # the fixture

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")


def events(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    return [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="needs docker-registry")
def test_tenant_pushes_only_its_own_names(make_world: Callable[..., World]) -> None:
    w = make_world()
    reg = Registry(token_auth=True)
    try:
        name = f"{reg.host}/t/box:1"
        auth = {"username": USER, "password": PASSWORD}
        assert w.as_("a", "POST", "/v1/images/tag", json={"source": "busybox", "target": name}).status_code == 200
        done = events(w.as_("a", "POST", "/v1/images/push", json={"ref": name, "auth": auth}))[-1]
        assert done["status"] == "done" and done["push"]["ref"] == name, done
        assert done["push"]["digest"].startswith("sha256:")
        # another tenant: not its name, whatever it knows of the image
        image_id = done["push"]["image"]
        for ref in (name, "busybox", image_id):
            r = w.as_("b", "POST", "/v1/images/push", json={"ref": ref, "auth": auth})
            assert r.status_code == 404 and r.json()["code"] == "not_found", (ref, r.text)
        # an id is no name to push as, for the tenant that has the image too
        assert w.as_("a", "POST", "/v1/images/push", json={"ref": image_id}).status_code == 404
        # without credentials: the registry refuses (nothing of a's was kept)
        last = events(w.as_("a", "POST", "/v1/images/push", json={"ref": name}))[-1]
        assert last["error"]["code"] == "auth", last
        # the image a pushed keeps the administrator's view consistent
        assert w.admin.get("/v1/images/check").json() == {"problems": []}
    finally:
        reg.stop()


def test_df_of_a_tenant_and_prune_is_the_administrators(make_world: Callable[..., World]) -> None:
    w = make_world()
    a = w.as_("a", "GET", "/v1/system/df").json()
    assert a["images"]["total"] == 1 and a["pods"]["total"] == 0 and "layers" not in a and "templates" not in a
    w.pod("a", {"name": "web", "containers": [{"name": "main", "image": "busybox"}]})
    assert w.as_("a", "GET", "/v1/system/df").json()["pods"]["total"] == 1
    b = w.as_("b", "GET", "/v1/system/df").json()
    assert (b["images"]["total"], b["pods"]["total"]) == (0, 0)
    admin = w.admin.get("/v1/system/df").json()
    assert admin["images"]["total"] == 1 and admin["pods"]["total"] == 1 and admin["layers"]["total"] == 1
    assert w.as_("a", "POST", "/v1/system/prune", json={}).status_code == 403
    r = w.admin.post("/v1/system/prune", json={})
    assert r.status_code == 200 and r.json()["pods"] == []  # a created pod is not a stopped one
