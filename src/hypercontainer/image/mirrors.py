"""Registry mirrors: the hosts a pull may fetch from, per registry, read once when hyperd starts from a directory
laid out as containerd's registry `config_path` (`/etc/containerd/certs.d`), so one directory can serve both:

    <dir>/registry.k8s.io/hosts.toml          one per registry host (host:port as `host_port_` or `host:port`)
    <dir>/_default/hosts.toml                 for every registry without a directory of its own

    server = "https://registry.k8s.io"        # tried last; absent: the registry the image names
    [host."http://127.0.0.1:5000"]            # tried first, in the order written
      capabilities = ["pull", "resolve"]      # resolve: may turn a tag into a digest; pull: serves by digest

Each `[host."URL"]` (and the top level, for the server) takes containerd's keys: `capabilities`, `skip_verify`,
`ca`, `client`, `header`, `override_path`, `dial_timeout`, `proxy`. A directory without hosts.toml holds Docker's
certificate files (`*.crt` CAs, `*.cert`/`*.key` client pairs) for the registry itself. A URL without a scheme
is https (http for loopback hosts and those given to --insecure-registry); plain HTTP is used only where written.

A pull (Sources) tries the hosts that may do each step in order: a host that fails (unreachable, 404, 5xx, a
refused login, content that does not match its digest) hands over to the next one, with a log line. The image is
stored under the name asked for; digests are checked as for any registry. Credentials sent with a pull belong to
the registry the image names and go only to that registry (or its `server` when that is the same host), never to
a mirror: a mirror is pulled from anonymously, or with what its own `header` table says.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import re
import ssl
import tomllib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from ..errors import ImageError, InvalidArgument, NotFound
from .auth import Credentials
from .reference import DEFAULT_REGISTRY, Reference
from .registry import DOCKER_HUB, RETRIES, AuthError, Registry, RegistryError, Tee, Unreachable, is_loopback, new_client

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DIR = Path("/etc/hypercontainer/certs.d")
DEFAULT_NAMESPACE = "_default"
CAPABILITIES = frozenset({"pull", "resolve", "push"})
MIRROR_RETRIES = 2  # attempts at a host that has another behind it: a failing mirror is left quickly
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_KEYS = ("capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout", "proxy")
# What a host that fails hands over to the next one: anything the host answered or failed to answer. Local
# failures (disk, cancellation) are not among them.
FALLTHROUGH = (RegistryError, NotFound, ImageError)


class RegistryConfigError(InvalidArgument):
    """The registry configuration directory cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Host:
    """One place to fetch from: a `[host."URL"]` entry, or a namespace's server."""

    host: str = ""  # host[:port]; "": the registry the image names (a server left unset)
    scheme: str | None = None  # None: https, or http for loopback and --insecure-registry hosts
    path: str = "/v2"  # the API root
    capabilities: frozenset[str] = CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()  # (certificate, key: "" when the certificate file holds it)
    header: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None  # seconds
    proxy: str | None = None

    def url(self, insecure: Collection[str] = ()) -> str:
        host = DOCKER_HUB if self.host == DEFAULT_REGISTRY else self.host
        return f"{self.scheme_for(insecure)}://{host}{self.path}"

    def scheme_for(self, insecure: Collection[str]) -> str:
        if self.scheme:
            return self.scheme
        return "http" if self.host in insecure or is_loopback(self.host) else "https"

    @property
    def custom_client(self) -> bool:
        return bool(self.skip_verify or self.ca or self.client or self.header or self.dial_timeout or self.proxy)


@dataclass(frozen=True)
class Namespace:
    """One registry's directory: its mirrors in order, then its server."""

    source: str  # the hosts.toml (or the directory of certificate files) it was read from
    mirrors: tuple[Host, ...] = ()
    server: Host = Host()


@dataclass(frozen=True)
class RegistryHosts:
    """The whole configuration directory, read once (load()); no directory means no mirrors."""

    root: Path = DEFAULT_DIR
    namespaces: tuple[tuple[str, Namespace], ...] = ()
    warnings: tuple[str, ...] = ()  # keys hyperd does not know (containerd's later additions, typos): ignored

    def namespace(self, registry: str) -> Namespace | None:
        """containerd's lookup order: `host_port_`, `host:port`, then `_default`."""
        by_name = dict(self.namespaces)
        names = [registry, DEFAULT_NAMESPACE]
        host, sep, port = registry.rpartition(":")
        if sep and host and not registry.endswith("]"):
            names.insert(0, f"{host}_{port}_")
        return next((by_name[n] for n in names if n in by_name), None)

    def hosts(self, registry: str) -> list[Host]:
        """Where to fetch `registry`'s images from, in order (the registry itself alone without a config)."""
        ns = self.namespace(registry)
        if ns is None:
            return [Host(registry)]
        server = ns.server if ns.server.host else replace(ns.server, host=registry)
        return [*ns.mirrors, server]

    def describe(self) -> list[str]:
        """One line per configured registry, for hyperd's log."""
        out = []
        for name, ns in self.namespaces:
            chain = [h.url() for h in ns.mirrors] + [h.url() if h.host else "(the registry)" for h in (ns.server,)]
            out.append(f"{name}: {' -> '.join(chain)} ({ns.source})")
        return out


# ---- reading the directory ---------------------------------------------------------------------------------

def load(root: Path) -> RegistryHosts:
    """Reads every `<root>/<namespace>/hosts.toml` once; a missing root is no configuration. Raises
    RegistryConfigError naming the file and what is wrong with it."""
    root = Path(root)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return RegistryHosts(root)
    except NotADirectoryError:
        raise RegistryConfigError(f"{root} is not a directory (expected <registry host>/hosts.toml files, laid out "
                                  "as containerd's certs.d)") from None
    except OSError as e:
        raise RegistryConfigError(f"{root}: {e.strerror or e}") from None
    namespaces, warnings = [], []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        ns, warned = _namespace(Path(entry.path))
        namespaces.append((entry.name, ns))
        warnings += warned
    return RegistryHosts(root, tuple(namespaces), tuple(warnings))


def _namespace(d: Path) -> tuple[Namespace, list[str]]:
    f = d / "hosts.toml"
    try:
        data = f.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as e:
        raise RegistryConfigError(f"{f}: {e.strerror or e}") from None
    if not data:  # as containerd: Docker's certificate files for the registry itself
        return Namespace(str(d), (), _check_tls(f, _cert_files(d))), []
    try:
        doc = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise RegistryConfigError(f"{f}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise RegistryConfigError(f"{f}: not valid TOML: {e}") from None
    p = _Parser(f)
    server = doc.pop("server", "")
    if not isinstance(server, str):
        raise p.error("top level", "'server' must be a string (a URL)")
    hosts = doc.pop("host", {})
    if not isinstance(hosts, dict) or not all(isinstance(v, dict) for v in hosts.values()):
        raise p.error("top level", '\'host\' must hold tables: [host."https://mirror.example"]')
    mirrors = tuple(p.host(url, table, f'[host."{url}"]') for url, table in hosts.items())
    ns = Namespace(str(f), mirrors, p.host(server, doc, "top level"))
    return ns, p.warnings


def _cert_files(d: Path) -> Host:
    ca, client = [], []
    for name in sorted(os.listdir(d)):
        if (d / name).is_dir():
            continue
        if name.endswith(".crt"):
            ca.append(str(d / name))
        elif name.endswith(".cert"):
            key = d / (name[: -len(".cert")] + ".key")
            client.append((str(d / name), str(key) if key.exists() else ""))
    return Host(ca=tuple(ca), client=tuple(client))


class _Parser:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.warnings: list[str] = []

    def error(self, where: str, problem: str) -> RegistryConfigError:
        return RegistryConfigError(f"{self.file}: {where}: {problem}")

    def path(self, p: str) -> str:
        return p if os.path.isabs(p) else str(self.file.parent / p)

    def strings(self, where: str, key: str, v: Any, one: bool = True) -> list[str]:
        items = [v] if one and isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise self.error(where, f"'{key}' must be {'a string or ' if one else ''}a list of strings")
        return items

    def host(self, url: str, table: dict[str, Any], where: str) -> Host:
        for key in table:
            if key not in _KEYS:
                self.warnings.append(f"{self.file}: {where}: unknown key '{key}' ignored")
        override = table.get("override_path", False)
        skip = table.get("skip_verify", False)
        for key, v in (("override_path", override), ("skip_verify", skip)):
            if not isinstance(v, bool):
                raise self.error(where, f"'{key}' must be true or false")
        scheme, host, path = self.url(url, override, where) if url else (None, "", "/v2")
        caps = [c.lower() for c in self.strings(where, "capabilities", table.get("capabilities", []), one=False)]
        unknown = [c for c in caps if c not in CAPABILITIES]
        if unknown:
            raise self.error(where, f"unknown capability {unknown[0]!r} (pull, resolve, push)")
        ca = tuple(self.path(c) for c in self.strings(where, "ca", table.get("ca", [])))
        client = self.client(where, table.get("client", []))
        header = self.header(where, table.get("header", {}))
        timeout = self.duration(where, table["dial_timeout"]) if "dial_timeout" in table else None
        proxy = self.proxy(where, table["proxy"]) if "proxy" in table else None
        h = Host(host, scheme, path, frozenset(caps) or CAPABILITIES, skip, ca, client, header, timeout, proxy)
        return _check_tls(self.file, h, where)

    def url(self, text: str, override: bool, where: str) -> tuple[str | None, str, str]:
        scheme = None
        if "://" in text:
            scheme = text.split("://", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise self.error(where, f"{text!r}: the scheme must be http or https")
            u = urlsplit(text)
        else:
            u = urlsplit("//" + text)
        if u.query or u.fragment or "@" in u.netloc:
            raise self.error(where, f"{text!r} is not [http[s]://]HOST[:PORT][/PATH] (no query, no credentials: a "
                                    "mirror's login goes in its [header] table)")
        if not _HOST.match(u.netloc):
            raise self.error(where, f"{text!r}: {u.netloc!r} is not HOST[:PORT]")
        path = posixpath.normpath(u.path) if u.path.strip("/") else ""
        if not override and not path.endswith("/v2"):
            path += "/v2"
        return scheme, u.netloc, path

    def client(self, where: str, v: Any) -> tuple[tuple[str, str], ...]:
        items = [v] if isinstance(v, str) else v
        out: list[tuple[str, str]] = []
        if isinstance(items, list):
            for item in items:
                if isinstance(item, str):
                    out.append((self.path(item), ""))
                elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
                    out.append((self.path(item[0]), self.path(item[1]) if item[1] else ""))
                else:
                    break
            else:
                return tuple(out)
        raise self.error(where, "'client' must be a path, a list of paths or a list of [certificate, key] pairs")

    def header(self, where: str, v: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(v, dict):
            raise self.error(where, "'header' must be a table of NAME = \"value\" (or a list of values)")
        return tuple((name, value) for name, values in v.items()
                     for value in self.strings(where, f"header.{name}", values))

    def duration(self, where: str, v: Any) -> float:
        """Go's time.ParseDuration, as containerd reads dial_timeout: "500ms", "1m30s"."""
        text = v if isinstance(v, str) else ""
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise self.error(where, f"'dial_timeout' {v!r} is not a duration like \"1s\" or \"500ms\"")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if seconds <= 0:
            raise self.error(where, "'dial_timeout' must be more than 0")
        return seconds

    def proxy(self, where: str, v: Any) -> str:
        if not isinstance(v, str) or urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).netloc:
            raise self.error(where, f"'proxy' {v!r}: hyperd takes http:// or https:// proxies")
        return v


def _check_tls(file: Path, h: Host, where: str = "certificates") -> Host:
    """Loads the host's CA and client files now, so that a bad one stops hyperd at start."""
    if h.ca or h.client:
        try:
            _ssl_context(h)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise RegistryConfigError(f"{file}: {where}: {e}") from None
    return h


@functools.lru_cache(maxsize=64)
def _ssl_context(h: Host) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for ca in h.ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"CA certificate {ca}: {getattr(e, 'strerror', None) or e}") from None
    for cert, key in h.client:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"client certificate {cert}: {getattr(e, 'strerror', None) or e}") from None
    if h.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---- pulling through them ----------------------------------------------------------------------------------

class _WatchedTee:
    """The unpacking tee, told whether a host has fed it: one that did and then failed abandons it, and the
    next host downloads without it (the layer is then unpacked from the stored blob)."""

    def __init__(self, tee: Tee) -> None:
        self.tee = tee
        self.fed = self.abandoned = False

    async def chunk(self, data: bytes) -> None:
        self.fed = True
        await self.tee.chunk(data)

    async def abandon(self) -> None:
        if not self.abandoned:
            self.abandoned = True
            await self.tee.abandon()


class Sources:
    """The hosts one pull fetches from: the image's registry's mirrors in order, then the registry (or the server
    its hosts.toml names). Has a Registry's manifest(), blob() and close(); each request goes to the first host
    able to do it that answers, a host nobody could reach is left out for the rest of the pull."""

    def __init__(self, registry: str, hosts: Sequence[Host], creds: Credentials | None = None,
                 insecure: Collection[str] = ()) -> None:
        if not hosts:
            raise ValueError("no hosts to pull from")
        self.registry = registry
        self.hosts = list(hosts)
        self.creds = creds
        self.insecure = insecure
        self._open: dict[int, Registry] = {}
        self._unreachable: set[int] = set()
        self.ref_short = ""  # the image being pulled, for messages

    def is_registry(self, h: Host) -> bool:
        """The registry the image names itself (its credentials may go there), not a mirror."""
        own = {self.registry, DOCKER_HUB} if self.registry == DEFAULT_REGISTRY else {self.registry}
        return h.host in own

    def _registry(self, i: int) -> Registry:
        reg = self._open.get(i)
        if reg is None:
            h = self.hosts[i]
            own = self.is_registry(h)
            client = None
            if h.custom_client:
                verify: bool | ssl.SSLContext = _ssl_context(h) if h.ca or h.client else not h.skip_verify
                client = new_client(verify=verify, headers=list(h.header) or None, connect_timeout=h.dial_timeout,
                                    proxy=h.proxy)
            reg = Registry(h.host, self.creds if own else None, client=client, scheme=h.scheme_for(self.insecure),
                           root=h.path, params=None if own else {"ns": self.registry},
                           retries=RETRIES if i == len(self.hosts) - 1 else MIRROR_RETRIES)
            self._open[i] = reg
        return reg

    async def _each(self, capability: str, what: str, op: Callable[[Registry], Awaitable[T]]) -> T:
        able = [i for i, h in enumerate(self.hosts) if capability in h.capabilities]
        if not able:
            raise RegistryError(f"{what}: no host configured for {self.registry} may {capability} "
                                f"(capabilities in its hosts.toml)")
        order = [i for i in able if i not in self._unreachable] or able
        failures: list[tuple[int, Exception]] = []
        for n, i in enumerate(order):
            try:
                result = await op(self._registry(i))
            except FALLTHROUGH as e:
                if isinstance(e, Unreachable):
                    self._unreachable.add(i)
                failures.append((i, e))
                if n + 1 < len(order):  # a mirror without the image is ordinary; one that fails is not
                    log.log(logging.INFO if isinstance(e, NotFound) else logging.WARNING, "%s: %s failed: %s; "
                            "trying %s", what, self._name(i), self._reason(e), self._name(order[n + 1]))
                continue
            if failures or (capability == "resolve" and not self.is_registry(self.hosts[i])):
                log.info("%s: from %s", what, self._name(i))
            else:
                log.debug("%s: from %s", what, self._name(i))
            return result
        raise self._combined(what, failures)

    def _name(self, i: int) -> str:
        h = self.hosts[i]
        return f"{'' if self.is_registry(h) else 'mirror '}{h.url(self.insecure)}"

    def _reason(self, e: Exception) -> str:
        """The error without the image's name in front (the log line starts with it)."""
        text, prefix = str(e), f"{self.ref_short}: "
        return text[len(prefix) :] if self.ref_short and text.startswith(prefix) else text

    def _combined(self, what: str, failures: list[tuple[int, Exception]]) -> Exception:
        if len(failures) == 1:
            return failures[0][1]
        errors = [e for _, e in failures]
        text = f"{what}: no host could serve it: " + "; ".join(f"{self._name(i)}: {self._reason(e)}"
                                                                for i, e in failures)
        last = errors[-1]
        if all(isinstance(e, NotFound) for e in errors):
            return NotFound(text)
        for cls in (AuthError, ImageError, RegistryError):
            if isinstance(last, cls):
                return cls(text)
        return RegistryError(text)

    async def manifest(self, ref: Reference, digest: str | None = None) -> tuple[bytes, str, str]:
        """As Registry.manifest; a tag is resolved only by hosts with the `resolve` capability."""
        self.ref_short = ref.short
        capability = "pull" if digest or ref.digest else "resolve"
        target = digest or ref.digest or ref.tag or "latest"
        return await self._each(capability, f"{ref.short}: manifest {target[:19]}",
                                lambda reg: reg.manifest(ref, digest))

    async def blob(self, ref: Reference, digest: str, size: int | None, dest: Path,
                   progress: Callable[[int], None] | None = None, tee: Tee | None = None) -> None:
        self.ref_short = ref.short
        watched = _WatchedTee(tee) if tee else None

        async def one(reg: Registry) -> None:
            t = watched if watched and not (watched.fed or watched.abandoned) else None
            try:
                await reg.blob(ref, digest, size, dest, progress, t)
            except FALLTHROUGH:
                if t and t.fed:
                    await t.abandon()
                raise

        await self._each("pull", f"{ref.short}: blob {digest[:19]}", one)

    async def close(self) -> None:
        for reg in self._open.values():
            with contextlib.suppress(httpx.HTTPError):
                await reg.close()
