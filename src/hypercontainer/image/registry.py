"""A client for the Docker Registry HTTP API v2 / OCI distribution: manifests and blobs, with auth.

HTTPS by default; plain HTTP for loopback registries and those named insecure. Bearer tokens come from the
realm a 401 names (with basic credentials when given); plain basic auth too. Transient failures are retried.
A mirror (mirrors.py) is a Registry too: its own scheme, API root and TLS settings, and a query (`ns=`) naming the
registry it stands in for.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from ..errors import HCError, ImageError, NotFound
from .auth import Credentials, parse_challenge
from .reference import Reference

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST = 4 << 20
RETRIES = 4
DOCKER_HUB = "registry-1.docker.io"


class Tee(Protocol):
    """A second consumer of a blob while it downloads (the puller unpacks layers on the fly)."""

    async def chunk(self, data: bytes) -> None: ...
    async def abandon(self) -> None: ...


class RegistryError(HCError):
    code = "registry"
    status = 502


class AuthError(RegistryError):
    code = "auth"
    status = 401


class Unreachable(RegistryError):
    """No usable answer at all (connection refused, no such host, timeouts), retries included."""


def new_client(*, verify: bool | ssl.SSLContext = True, headers: list[tuple[str, str]] | None = None,
               connect_timeout: float | None = None, proxy: str | None = None) -> httpx.AsyncClient:
    """The HTTP client a Registry uses: follows redirects (blobs often live elsewhere), generous read timeouts."""
    timeout = httpx.Timeout(30.0, read=120.0, connect=30.0 if connect_timeout is None else connect_timeout)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=True, verify=verify, headers=headers, proxy=proxy)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Registry:
    """One registry host; one token per repository scope.

    `scheme` overrides the choice `insecure` and loopback make; `root` is the API root ("/v2", or a mirror's own
    path); `params` go with every manifest and blob request; `retries` counts attempts at transient failures."""

    def __init__(self, host: str, creds: Credentials | None = None, insecure: bool = False,
                 client: httpx.AsyncClient | None = None, *, scheme: str | None = None, root: str = "/v2",
                 params: dict[str, str] | None = None, retries: int = RETRIES) -> None:
        self.host = DOCKER_HUB if host == "docker.io" else host
        self.scheme = scheme or ("http" if insecure or is_loopback(self.host) else "https")
        self.root = root.rstrip("/")
        self.params = params or {}
        self.retries = max(1, retries)
        self.creds = creds
        self._tokens: dict[str, str] = {}
        self.client = client or new_client()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{self.root}/{path}"

    async def _token(self, challenge_header: str, scope: str) -> str:
        ch = parse_challenge(challenge_header)
        if ch is None:
            raise AuthError(f"{self.host} asks for authentication without saying how")
        if ch.scheme == "basic":
            if not self.creds:
                raise AuthError(f"{self.host} needs a login: run 'hyperctl login {self.host}'")
            return self.creds.basic()
        if ch.scheme != "bearer" or "realm" not in ch.params:
            raise AuthError(f"{self.host}: unsupported authentication scheme {ch.scheme}")
        # a challenge may name several scopes (a cross-repository mount): each goes as a parameter of its own
        params = {"service": ch.params.get("service", ""), "scope": ch.params.get("scope", scope).split()}
        headers = {"Authorization": self.creds.basic()} if self.creds else {}
        realm = ch.params["realm"]
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise AuthError(f"{self.host}: the token realm {realm!r} is not an http(s) URL")
        try:
            r = await self.client.get(url, params=params, headers=headers)
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach the token server {url.host}: {e or type(e).__name__}") from None
        if r.status_code in (401, 403):
            raise AuthError(f"{self.host}: the token server refused "
                            f"{'the credentials' if self.creds else 'anonymous access'} ({r.status_code})")
        if r.status_code >= 400:
            raise RegistryError(f"{self.host}: token server answered {r.status_code}")
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise AuthError(f"{self.host}: the token server sent no token")
        return f"Bearer {token}"

    async def _send(self, method: str, path: str, scope: str, headers: dict | None = None,
                    stream: bool = False, *, url: str | None = None, content: bytes | None = None,
                    params: dict[str, str] | None = None) -> httpx.Response:
        """A request with auth and retries; the caller closes a streamed response. `url`: an absolute address
        (an upload's Location) rather than `path`; `content`: the body (pushes); `params`: the query."""
        refreshed, attempt = False, 0
        while True:
            h = dict(headers or {})
            if scope in self._tokens:
                h["Authorization"] = self._tokens[scope]
            try:
                if url is not None:  # its own query (an upload's state) stays: `params` are added to it
                    target, query = httpx.URL(url).copy_merge_params(params or {}), None
                else:
                    target, query = httpx.URL(self.url(path)), params if params is not None else \
                        self.params if path else None
                r = await self.client.send(self.client.build_request(method, target, headers=h, params=query,
                                                                     content=content), stream=stream)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.TimeoutException) as e:
                attempt += 1
                if attempt >= self.retries:
                    raise Unreachable(f"cannot reach {self.host}: {e or type(e).__name__}") from None
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if r.status_code == 401 and not refreshed:  # a first or an expired token: fetch one, once
                refreshed = True
                header = r.headers.get("www-authenticate", "")
                await r.aclose()
                self._tokens[scope] = await self._token(header, scope)
                continue
            if r.status_code in (429, 500, 502, 503, 504) and attempt < self.retries - 1:
                attempt += 1
                await r.aclose()
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            return r

    async def manifest(self, ref: Reference, digest: str | None = None) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest by tag or digest, size-capped and digest-checked."""
        target = digest or ref.digest or ref.tag or "latest"
        scope = f"repository:{ref.repository}:pull"
        r = await self._send("GET", f"{ref.repository}/manifests/{target}", scope,
                             {"Accept": ", ".join(MANIFEST_TYPES)}, stream=True)
        try:
            if r.status_code == 404:
                raise NotFound(f"{ref.short}: manifest unknown to {self.host}")
            if r.status_code in (401, 403):
                hint = "check the credentials" if self.creds else f"log in with 'hyperctl login {self.host}'"
                raise AuthError(f"{self.host}: access to {ref.repository} denied ({r.status_code}); {hint}")
            if r.status_code >= 400:
                raise RegistryError(f"{self.host}: manifest request answered {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST:
                    raise ImageError(f"{ref.short}: manifest larger than {MAX_MANIFEST} bytes refused")
        finally:
            await r.aclose()
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        if target.startswith("sha256:") and got != target:
            raise ImageError(f"{ref.short}: manifest does not match its digest {target}")
        media = r.headers.get("content-type", "").split(";")[0].strip()
        return bytes(body), media, got

    async def blob(self, ref: Reference, digest: str, size: int | None, dest: Path,
                   progress: Callable[[int], None] | None = None, tee: Tee | None = None) -> None:
        """Streams a blob into `dest`, checking size and digest as it goes. Retries from scratch; `tee` sees
        each chunk of the first attempt (and is told when that attempt is abandoned)."""
        scope = f"repository:{ref.repository}:pull"
        for attempt in range(self.retries):
            try:
                await self._blob_once(ref, digest, size, dest, scope, progress, tee if attempt == 0 else None)
                return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.TimeoutException) as e:
                if tee and attempt == 0:
                    await tee.abandon()
                if attempt == self.retries - 1:
                    raise RegistryError(f"{digest[:19]}: download failed: {e or type(e).__name__}") from None
                await asyncio.sleep(0.2 * 2**attempt)

    async def _blob_once(self, ref: Reference, digest: str, size: int | None, dest: Path, scope: str,
                         progress: Callable[[int], None] | None, tee: Tee | None) -> None:
        r = await self._send("GET", f"{ref.repository}/blobs/{digest}", scope, stream=True)
        try:
            if r.status_code == 404:
                raise NotFound(f"{ref.short}: blob {digest[:19]} unknown to {self.host}")
            if r.status_code >= 400:
                raise RegistryError(f"{self.host}: blob {digest[:19]} answered {r.status_code}")
            h = hashlib.sha256()
            n = 0
            with open(dest, "wb") as f:
                async for chunk in r.aiter_raw(1 << 20):
                    n += len(chunk)
                    if size is not None and n > size:
                        raise ImageError(f"blob {digest[:19]} is larger than its manifest says ({size} bytes)")
                    h.update(chunk)
                    f.write(chunk)
                    if tee:
                        await tee.chunk(chunk)
                    if progress:
                        progress(n)
        finally:
            await r.aclose()
        if size is not None and n != size:
            raise ImageError(f"blob {digest[:19]} is truncated: {n} of {size} bytes")
        if "sha256:" + h.hexdigest() != digest:
            raise ImageError(f"blob {digest[:19]} does not match its digest")

    async def ping(self) -> None:
        """Checks the credentials against the registry (hyperctl login)."""
        r = await self._send("GET", "", "registry:catalog:*")
        await r.aclose()
        if r.status_code in (401, 403):
            raise AuthError(f"{self.host}: login failed ({r.status_code})")
        if r.status_code >= 400 and r.status_code != 404:
            raise RegistryError(f"{self.host}: answered {r.status_code}")

    async def close(self) -> None:
        await self.client.aclose()
