"""The streaming server: one listener, one-time URLs, both upgrades.

The CRI's Exec, Attach and PortForward return a URL (`http://HOST:PORT/exec/TOKEN`); the client (the kubelet, crictl,
critest) upgrades a request to it, to SPDY/3.1 or to a WebSocket as it chooses, so one URL, hence one listener,
serves both: our own small HTTP/1.1 front reads the request head and dispatches on its Upgrade header.

Tokens: random, single-use (consumed by the first request, whatever becomes of it), expiring after 60 s, at most
1000 in flight, as the kubelet's request cache. Unknown or expired: 404. Not an upgrade we speak: 400; no stream
protocol in common: 403 (SPDY, with X-Accepted-Stream-Protocol-Versions) or 400 (WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import NegotiationError
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ...errors import InvalidArgument
from ..errors import CriError
from . import remotecommand
from .backend import Backend
from .portforward import PortForwardRequest, SpdyPortForward, serve_channels
from .remotecommand import AttachRequest, ExecRequest, Streams, Timing
from .session import SpdySession, SpdyStream
from .transport import Activity, ByteTransport, TcpTransport
from .websocket import MAX_MESSAGE, ChannelConn, WsConn, WsTunnel

if TYPE_CHECKING:
    from ..api import pb

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0
MAX_IN_FLIGHT = 1000
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0

# what the kubelet serves (k8s.io/kubelet cri/streaming): SPDY exec/attach v4 down to v1, port-forward v1
SPDY_REMOTECOMMAND = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
SPDY_PORTFORWARD = ("portforward.k8s.io",)
WS_REMOTECOMMAND = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io",
                    "base64.channel.k8s.io")
WS_PORTFORWARD = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")
TUNNEL = "SPDY/3.1+"  # a WebSocket subprotocol SPDY/3.1+<p>: SPDY speaking <p>, in binary messages
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")

Request = ExecRequest | AttachRequest | PortForwardRequest
KIND = {ExecRequest: "exec", AttachRequest: "attach", PortForwardRequest: "portforward"}


@dataclass(frozen=True)
class _Head:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str:
        return ", ".join(v for k, v in self.headers if k.lower() == name.lower())

    def values(self, name: str) -> list[str]:
        return [p.strip() for v in (v for k, v in self.headers if k.lower() == name.lower())
                for p in v.split(",") if p.strip()]


class _Tokens:
    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl, self.limit = ttl, limit
        self._entries: dict[str, tuple[float, Request]] = {}

    def insert(self, req: Request) -> str:
        now = asyncio.get_running_loop().time()
        for token, (deadline, _) in list(self._entries.items()):
            if deadline <= now:
                del self._entries[token]
        if len(self._entries) >= self.limit:
            raise CriError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"maximum number of in-flight streaming requests ({self.limit}) exceeded")
        token = secrets.token_urlsafe(18)
        self._entries[token] = (now + self.ttl, req)
        return token

    def consume(self, token: str) -> Request | None:
        entry = self._entries.pop(token, None)
        if entry is None or entry[0] <= asyncio.get_running_loop().time():
            return None
        return entry[1]


class StreamingServer:
    """The CRI streaming server (exec, attach, port-forward over SPDY/3.1 and WebSockets) on address:port."""

    def __init__(self, backend: Backend, address: str = "127.0.0.1", port: int = 0, *,
                 url_host: str | None = None, token_ttl: float = TOKEN_TTL, max_in_flight: int = MAX_IN_FLIGHT,
                 timing: Timing | None = None) -> None:
        self.backend = backend
        self.address, self._port = address, port
        self.url_host = url_host
        self.timing = timing or Timing()
        self._tokens = _Tokens(token_ttl, max_in_flight)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.address, self._port, limit=MAX_HEAD)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("CRI streaming server on %s", self.base_url)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        host = self.url_host or self.address
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            if ip.is_unspecified:  # listening everywhere: the kubelet connects from this node
                host = "127.0.0.1" if ip.version == 4 else "::1"
            if ip.version == 6:
                host = f"[{host}]"
        return f"http://{host}:{self._port}"

    # ---- URLs (called by the CRI RuntimeService) ----------------------------------------------------------------
    def url_for_exec(self, req: pb.ExecRequest) -> str:
        _check_stdio(req.container_id, req.tty, req.stdin, req.stdout, req.stderr)
        return self._url(ExecRequest(req.container_id, tuple(req.cmd), req.tty, req.stdin, req.stdout, req.stderr))

    def url_for_attach(self, req: pb.AttachRequest) -> str:
        _check_stdio(req.container_id, req.tty, req.stdin, req.stdout, req.stderr)
        return self._url(AttachRequest(req.container_id, req.tty, req.stdin, req.stdout, req.stderr))

    def url_for_port_forward(self, req: pb.PortForwardRequest) -> str:
        if not req.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        for p in req.port:
            if not 1 <= p <= 65535:
                raise InvalidArgument(f"port {p} out of range")
        return self._url(PortForwardRequest(req.pod_sandbox_id, tuple(req.port)))

    async def url(self, kind: str, request: Any) -> str:
        """RuntimeService's Streaming protocol: the URL for an Exec, Attach or PortForward request."""
        if kind == "exec":
            return self.url_for_exec(request)
        if kind == "attach":
            return self.url_for_attach(request)
        if kind == "portforward":
            return self.url_for_port_forward(request)
        raise ValueError(f"no streaming kind {kind!r}")

    def _url(self, req: Request) -> str:
        if self._server is None:
            raise CriError(grpc.StatusCode.UNAVAILABLE, "the streaming server is not running")
        return f"{self.base_url}/{KIND[type(req)]}/{self._tokens.insert(req)}"

    # ---- connections --------------------------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        activity = Activity()
        idle = asyncio.create_task(activity.idle(self.timing.idle))
        idle.add_done_callback(lambda t: None if t.cancelled() else _close_idle(writer))
        try:
            await self._serve(reader, writer, activity)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            log.debug("streaming connection: %s", e)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            idle.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._conns.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: Activity) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            return await _respond(writer, 431, "Request Header Fields Too Large", "request head over 64 KiB\n")
        except (asyncio.IncompleteReadError, TimeoutError):
            return None
        head = _parse_head(raw)
        if head is None:
            return await _respond(writer, 400, "Bad Request", "malformed HTTP request\n")
        parts = head.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            return await _respond(writer, 404, "Not Found", f"no such streaming endpoint: {head.path}\n")
        if head.method not in ("GET", "POST"):
            return await _respond(writer, 405, "Method Not Allowed", f"{head.method} is not allowed here\n",
                                  [("Allow", "GET, POST")])
        req = self._tokens.consume(parts[1])
        if req is None or KIND[type(req)] != parts[0]:
            return await _respond(writer, 404, "Not Found",
                                  f"unknown or expired {parts[0]} token (a streaming URL is valid once, for "
                                  f"{self._tokens.ttl:.0f} s after the CRI call that returned it)\n")
        upgrade = head.get("Upgrade").lower()
        if "upgrade" not in head.get("Connection").lower() or not upgrade:
            return await _respond(writer, 400, "Bad Request",
                                  "unable to upgrade: this URL needs an HTTP upgrade to SPDY/3.1 or websocket "
                                  f"(Connection: {head.get('Connection')!r}, Upgrade: {head.get('Upgrade')!r})\n")
        if "spdy/3.1" in upgrade:
            return await self._serve_spdy(head, req, reader, writer, activity)
        if upgrade == "websocket":
            return await self._serve_ws(head, req, reader, writer, activity)
        return await _respond(writer, 400, "Bad Request",
                              f"unable to upgrade: unsupported upgrade {head.get('Upgrade')!r} (this server speaks "
                              "SPDY/3.1 and websocket)\n")

    async def _serve_spdy(self, head: _Head, req: Request, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, activity: Activity) -> None:
        supported = SPDY_PORTFORWARD if isinstance(req, PortForwardRequest) else SPDY_REMOTECOMMAND
        offered = head.values("X-Stream-Protocol-Version")
        if not offered:
            return await _respond(writer, 400, "Bad Request",
                                  "unable to upgrade: header X-Stream-Protocol-Version is missing\n")
        protocol = next((p for p in offered if p in supported), None)
        if protocol is None:
            return await _respond(writer, 403, "Forbidden",
                                  f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                                  f"server accepts {list(supported)}\n",
                                  [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     b"X-Stream-Protocol-Version: " + protocol.encode() + b"\r\n\r\n")
        await writer.drain()
        await self._run_spdy(TcpTransport(reader, writer, activity), req, protocol)

    async def _run_spdy(self, transport: ByteTransport, req: Request, protocol: str) -> None:
        """One SPDY connection (over TCP, or tunnelled in a WebSocket), speaking `protocol`."""
        if isinstance(req, PortForwardRequest):
            pf = SpdyPortForward(self.backend, req, self.timing.creation)
            session = SpdySession(transport, pf.on_stream, name=f"portforward {req.sandbox_id}")
            try:
                await session.run()  # the forwards run until the client hangs up
            finally:
                await pf.close()
                await transport.close()
            return
        wanted = {"error"} | {t for t, on in (("stdin", req.stdin), ("stdout", req.stdout),
                                              ("stderr", req.stderr)) if on}
        if req.tty and protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            wanted.add("resize")
        opened: dict[str, SpdyStream] = {}
        ready = asyncio.Event()

        def on_stream(stream: SpdyStream) -> bool:
            kind = stream.header("streamtype")
            if kind not in STREAM_TYPES or kind in opened or ready.is_set():
                log.info("%s: refusing a stream of type %r", KIND[type(req)], kind)  # nobody would read it
                return False
            opened[kind] = stream
            if wanted <= opened.keys():
                ready.set()
            return True

        session = SpdySession(transport, on_stream, name=f"{KIND[type(req)]} {req.container_id}")
        reading = asyncio.create_task(session.run())
        try:
            if not await _wait_ready(ready, session.gone, self.timing.creation):
                log.info("%s %s: the client opened %s, not %s, within %g s", KIND[type(req)], req.container_id,
                         sorted(opened), sorted(wanted), self.timing.creation)
                return
            streams = Streams(error=opened["error"], stdin=opened.get("stdin"), stdout=opened.get("stdout"),
                              stderr=opened.get("stderr"), resize=opened.get("resize"))
            await remotecommand.serve(self.backend, req, streams, v4=protocol == "v4.channel.k8s.io",
                                      gone=session.gone, timing=self.timing)
            await session.finish(self.timing.linger)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await transport.close()

    async def _serve_ws(self, head: _Head, req: Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, activity: Activity) -> None:
        channels: tuple[str, ...]
        spdy_protocols: tuple[str, ...]
        if isinstance(req, PortForwardRequest):
            channels, spdy_protocols = WS_PORTFORWARD, SPDY_PORTFORWARD
        else:
            channels, spdy_protocols = WS_REMOTECOMMAND, SPDY_REMOTECOMMAND
        supported = (*channels, *(TUNNEL + p for p in spdy_protocols))

        def select(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            if not offered:
                return None  # no subprotocol: the binary channel protocol with v1 semantics, as the kubelet does
            for p in offered:
                if p in supported:
                    return p
            raise NegotiationError(f"unable to negotiate protocol: client supports {list(offered)}, server "
                                   f"accepts {list(supported)}")

        proto = _WsProtocol(select_subprotocol=select, max_size=MAX_MESSAGE, logger=log.getChild("websocket"))
        proto.receive_data(head.raw)  # its parser takes the request (then reads frames)
        request = next((e for e in proto.events_received() if isinstance(e, WsRequest)), None)
        if request is None:
            return await _respond(writer, 400, "Bad Request", "malformed websocket handshake request\n")
        response = proto.accept(request)
        proto.send_response(response)
        for chunk in proto.data_to_send():
            if chunk:
                writer.write(chunk)
        await writer.drain()
        if response.status_code != 101:
            return
        ws = WsConn(proto, reader, writer, activity)
        ws.start()
        try:
            if ws.subprotocol.startswith(TUNNEL):
                await self._run_spdy(WsTunnel(ws, self.timing.linger), req, ws.subprotocol[len(TUNNEL):])
            elif isinstance(req, PortForwardRequest):
                ports = req.ports or tuple(_query_ports(head.query))
                if not ports:
                    await ws.close(self.timing.linger, 1008, "no port: the request names none, nor ?port=")
                    return
                await serve_channels(self.backend, PortForwardRequest(req.sandbox_id, ports), ws,
                                     self.timing.linger)
            else:
                await self._run_channels(ws, req)
        finally:
            await ws.close(self.timing.linger)

    async def _run_channels(self, ws: WsConn, req: ExecRequest | AttachRequest) -> None:
        conn = ChannelConn(ws, readable={0, 4})
        reading = asyncio.create_task(conn.run())
        try:
            # the kubelet's first message: an empty one on the lowest channel we write, "connection established"
            await conn.send(1 if req.stdout else 2 if req.stderr else 3, b"")
            streams = Streams(error=conn.out(3), stdin=conn.inbound[0] if req.stdin else None,
                              stdout=conn.out(1) if req.stdout else None,
                              stderr=conn.out(2) if req.stderr else None,
                              resize=conn.inbound[4] if req.tty else None)
            if not req.stdin:
                conn.inbound[0].discard()
            if not req.tty:
                conn.inbound[4].discard()
            await remotecommand.serve(self.backend, req, streams,
                                      v4=ws.subprotocol in ("v5.channel.k8s.io", "v4.channel.k8s.io",
                                                            "v4.base64.channel.k8s.io"),
                                      gone=ws.gone, timing=self.timing)
        finally:
            await ws.close(self.timing.linger)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


# ---- helpers ------------------------------------------------------------------------------------------------------
class _WsProtocol(ServerProtocol):
    """websockets' server protocol, reading Sec-WebSocket-Protocol as a plain comma-separated list: client-go's
    `SPDY/3.1+portforward.k8s.io` has a "/", which the library's RFC 7230 token parser refuses."""

    def process_subprotocol(self, headers: WsHeaders) -> Subprotocol | None:
        offered = [Subprotocol(p.strip()) for value in headers.get_all("Sec-WebSocket-Protocol")
                   for p in value.split(",") if p.strip()]
        return self.select_subprotocol(offered)


def _check_stdio(container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    """The kubelet's validateExecRequest / validateAttachRequest."""
    if not container_id:
        raise InvalidArgument("missing required container_id")
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


async def _wait_ready(ready: asyncio.Event, gone: asyncio.Event, timeout: float) -> bool:
    waits = [asyncio.create_task(ready.wait()), asyncio.create_task(gone.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waits:
            t.cancel()
    return ready.is_set()


def _close_idle(writer: asyncio.StreamWriter) -> None:
    log.info("closing a streaming connection idle for too long")
    writer.close()


def _query_ports(query: dict[str, list[str]]) -> list[int]:
    out = []
    for value in query.get("port", []):
        for p in value.split(","):
            if p.isdigit() and 1 <= int(p) <= 65535:
                out.append(int(p))
    return out


def _parse_head(raw: bytes) -> _Head | None:
    try:
        lines = raw.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        if not version.startswith("HTTP/1."):
            return None
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return None
            headers.append((name, value.strip()))
    except ValueError:
        return None
    url = urllib.parse.urlsplit(target)
    return _Head(method, url.path, urllib.parse.parse_qs(url.query), headers, raw)


async def _respond(writer: asyncio.StreamWriter, code: int, reason: str, body: str,
                   headers: Sequence[tuple[str, str]] = ()) -> None:
    data = body.encode()
    lines = [f"HTTP/1.1 {code} {reason}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(data)}", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
