"""hyperd's TCP listener (`--listen tcp://ADDR:PORT`): the API over TLS, for clients on other hosts.

The app is the unix socket's, wrapped by `mark_remote`: every HTTP and websocket request that came over TCP has
`scope["hc.remote"] = True` (requests on the unix socket never do), which is how the API tells a remote caller.
It speaks TLS only: a client whose first bytes are not a TLS handshake (plain HTTP) gets a plain-text 400 that
says so, and is disconnected. It is hardened against clients that hold it up: a connection is closed that has not
begun its TLS handshake within HANDSHAKE_TIMEOUT seconds, or finished it within HANDSHAKE_TIMEOUT more, or not sent
its request's headers within HEADER_TIMEOUT of the handshake (or of its previous response); request headers over
MAX_HEADER_BYTES get a 431 and the connection is closed; past MAX_CONCURRENCY connections or requests at once, new
requests and websockets get a 503."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from asyncio import sslproto
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import HCError

log = logging.getLogger("hyperd")

MAX_HEADER_BYTES = 16 << 10
HANDSHAKE_TIMEOUT = 10  # seconds (an int: typeshed's SSLProtocol wants one)
HEADER_TIMEOUT = 10.0
MAX_CONCURRENCY = 256
BACKLOG = 128
SHUTDOWN_GRACE = 10  # seconds remote requests (a log follow, an exec) may run on once hyperd is stopping

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def mark_remote(app: ASGIApp) -> ASGIApp:
    """`app` with `scope["hc.remote"] = True` on its HTTP and websocket requests."""

    async def remote(scope: Scope, receive: Callable[[], Awaitable[Any]],
                     send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["hc.remote"] = True
        await app(scope, receive, send)

    return remote


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not all in within HEADER_TIMEOUT
    (uvicorn itself only times out idle keep-alive connections, and their clock stops at the first byte), and
    answering 431 to request headers over MAX_HEADER_BYTES (h11's own limit spares headers that arrive whole)."""

    _deadline: asyncio.TimerHandle | None = None
    _head: bytearray  # the request headers received so far (while waiting for them)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:  # waiting for a request's headers
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if (end if end >= 0 else len(self._head)) > MAX_HEADER_BYTES:
                log.info("refusing a request of %s: headers over %d bytes", self._peer(), MAX_HEADER_BYTES)
                self._disarm()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
                                     b"content-length: 0\r\n\r\n")
                self.transport.close()
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request's headers are in (or the connection is done)
            self._disarm()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """uvicorn's concurrency limit spares websockets: here they count too."""
        if len(self.connections) >= MAX_CONCURRENCY or len(self.tasks) >= MAX_CONCURRENCY:
            log.warning("refusing a websocket of %s: %d connections open", self._peer(), len(self.connections))
            for event_ in (h11.Response(status_code=503, reason=b"Service Unavailable",
                                        headers=[(b"connection", b"close"), (b"content-length", b"0")]),
                           h11.EndOfMessage()):
                self.transport.write(self.conn.send(event_) or b"")
            self.transport.close()
            return
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head = bytearray()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closing the connection of %s: no request within %g s", self._peer(), HEADER_TIMEOUT)
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


_NOT_TLS = b"this port speaks TLS only (https://; hyperctl --host tcp://HOST:PORT --tls-ca CA)\n"
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(_NOT_TLS), _NOT_TLS))
_TLS_HANDSHAKE = 0x16  # the content type of a TLS record that carries a handshake (the ClientHello)


class TLSOnly(asyncio.Protocol):
    """A connection's protocol until its first bytes: a TLS handshake goes on over TLS (asyncio's SSLProtocol,
    with HANDSHAKE_TIMEOUT) to a HeaderDeadline; anything else gets PLAIN_HTTP_ANSWER. A client that sends nothing
    within HANDSHAKE_TIMEOUT is dropped. Subclassed by config() with the listener's context."""

    context: ssl.SSLContext

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.inner = (config, server_state, app_state, _loop)
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.deadline = self.loop.call_later(HANDSHAKE_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline:
            self.deadline.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.deadline:
            self.deadline.cancel()
        if data[0] != _TLS_HANDSHAKE:
            self.transport.write(PLAIN_HTTP_ANSWER)
            self.transport.close()
            return
        config, server_state, app_state, loop = self.inner
        http = HeaderDeadline(config=config, server_state=server_state, app_state=app_state, _loop=loop)
        tls = sslproto.SSLProtocol(self.loop, http, self.context, None,  # type: ignore[arg-type]  # no waiter
                                   server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        self.transport.set_protocol(tls)  # as loop.start_tls() does, but handing TLS the bytes already read
        tls.connection_made(self.transport)
        view = memoryview(data)
        while view:
            buf = tls.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` names (a name may have IPv4 and IPv6 ones); they listen once their
    server starts (until then, connections are refused rather than left waiting)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise HCError(f"--listen tcp://{host}:{port}: {e.strerror}") from None
    out: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, kind, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.setblocking(False)
    except OSError as e:
        for s in out:
            s.close()
        raise HCError(f"--listen tcp://{host}:{port}: {e.strerror or e}") from None
    return out


def config(app: ASGIApp, ctx: ssl.SSLContext) -> uvicorn.Config:
    """The TCP server's uvicorn config: `app` marked remote, over TLS with `ctx` (TLSOnly does it: uvicorn's own
    TLS is not asked for), hardened as above. Forwarded headers are not believed: the client address is the
    connection's. When hyperd stops, remote requests still running are cut after SHUTDOWN_GRACE."""
    protocol = type("TLSOnlyWithContext", (TLSOnly,), {"context": ctx})
    return uvicorn.Config(mark_remote(app), http=protocol, log_level="warning", lifespan="off",
                          ws_ping_interval=None, proxy_headers=False, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          limit_concurrency=MAX_CONCURRENCY, backlog=BACKLOG, server_header=False,
                          timeout_graceful_shutdown=SHUTDOWN_GRACE)
