"""image/registry.py and pull.py: a whole pull from a hostile registry (an httpx mock transport in place of the
network) into a fresh image store: the WWW-Authenticate challenge and the token server's answer, manifests and
indexes with any media type, configs and layers.

The input is parts split at SEP: challenge, token body, content type, manifest, then blobs. The tag's manifest is
the manifest part; a manifest or blob asked for by digest is whichever part has that digest (else 404); the token
server (the challenge's realm, anything outside /v2/) answers the token part. Allowed: HCError (ImageError,
RegistryError, AuthError, NotFound, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import atheris
import httpx

with atheris.instrument_imports(include=["hypercontainer.image", "hypercontainer.errors"]):
    from hypercontainer.errors import HCError
    from hypercontainer.image import registry
    from hypercontainer.image.pull import Puller
    from hypercontainer.image.store import ImageStore

SEP = b"\n----\n"
BASE = Path(tempfile.mkdtemp(prefix="hc-fuzz-registry-"))
LOOP = asyncio.new_event_loop()
logging.disable(logging.CRITICAL)


def _ok(body: bytes, ctype: bytes) -> httpx.Response:
    # a stream, as from the network (content= would be read at once, and aiter_raw refuses a read response)
    return httpx.Response(200, headers={b"content-type": ctype}, stream=httpx.ByteStream(body))


def _transport(parts: list[bytes]) -> httpx.MockTransport:
    challenge, token, ctype, manifest = (parts + [b""] * 4)[:4]
    by_digest = {"sha256:" + hashlib.sha256(p).hexdigest(): p for p in parts[3:]}

    def handle(req: httpx.Request) -> httpx.Response:
        path = req.url.path
        if not path.startswith("/v2/"):
            return _ok(token, b"application/json")
        if challenge and "authorization" not in req.headers:
            return httpx.Response(401, headers={b"www-authenticate": challenge})
        kind, _, target = path[len("/v2/"):].rpartition("/")
        if kind.endswith("/manifests") and not target.startswith("sha256:"):
            return _ok(manifest, ctype)
        body = by_digest.get(target)
        if body is None:
            return httpx.Response(404)
        return _ok(body, ctype)

    return httpx.MockTransport(handle)


async def _pull(data: bytes, root: Path) -> None:
    parts = data.split(SEP)
    if any(b"\r" in p or b"\n" in p for p in parts[:3]):  # header values: httpx refuses them itself
        return
    transport = _transport(parts)
    real = registry.new_client
    registry.new_client = lambda **kw: httpx.AsyncClient(transport=transport)
    try:
        puller = Puller(ImageStore(root), parallel=2)
        with contextlib.suppress(HCError):
            await puller.pull("registry.test/fuzz/image:tag")
    finally:
        registry.new_client = real


def test_one(data: bytes) -> None:
    root = Path(tempfile.mkdtemp(dir=BASE))
    try:
        LOOP.run_until_complete(_pull(data, root))
    finally:
        shutil.rmtree(root)
