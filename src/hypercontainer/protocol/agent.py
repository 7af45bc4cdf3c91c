"""The typed agent interface: what the host asks of a guest agent, one method per request.

Requests are frozen dataclasses whose attributes are the protocol's fields by name (docs/protocol.md), so
`to_fields()` is the wire payload and `from_fields()` reads the dicts hyperd persisted before (a pod's runtime
state keeps a container's process fields and its mount fields as plain dicts). `Agent` wraps an AgentClient,
which keeps the connection, the process streams and the exit events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import errno as errno_mod
import ipaddress
import re
import signal
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import AgentError, CommandNotRunnable, HCError, VMError
from .client import AgentClient, AgentRequestError, ProcessStreams, command_exit_code
from .codec import BY_NAME, Fields, MountFlag, Msg

__all__ = [
    "Agent", "AgentRequestError", "AgentStats", "ContainerRequest", "ContainerStats", "ExecRequest", "Mount", "NetIf",
    "NetRoute", "PodRequest", "PortStream", "PortWriter", "ProcessRequest", "check_net", "check_paths",
    "check_seccomp", "net_if", "net_route",
]

_ALL_MOUNT_FLAGS = MountFlag.READONLY | MountFlag.TMPFS | MountFlag.BLOCK
# The container's own paths and seccomp filter (docs/protocol.md); the agent has the same limits.
PATHS_MAX, PATH_MAX = 256, 4095  # entries of masked_paths / readonly_paths; bytes of one
SECCOMP_MAX_INSNS = 4096  # struct sock_filter entries (the kernel's BPF_MAXINSNS)
SECCOMP_FLAG_LOG, SECCOMP_FLAG_SPEC_ALLOW = 2, 4  # the kernel's SECCOMP_FILTER_FLAG_* the agent passes on
_NO_MOUNT_FLAGS = MountFlag(0)
_T = TypeVar("_T")


def _wire(name: str, value: object) -> int | str | list[int] | list[str]:
    """A field value as the codec takes it (bools as 0/1, sequences as lists), checked against the table."""
    d = BY_NAME[name]
    if d.list != isinstance(value, list | tuple):
        raise ValueError(f"field {name}: {value!r} is {'not ' if d.list else ''}a list")
    out: list[Any] = []
    for v in value if isinstance(value, list | tuple) else [value]:
        if d.kind == "u64" and isinstance(v, int) and 0 <= v < 2**64:
            out.append(int(v))
        elif d.kind == "str" and isinstance(v, str):
            out.append(v)
        else:
            raise ValueError(f"field {name}: {v!r} is not a {d.kind}")
    return out if d.list else out[0]


def _fields_of(obj: object) -> Fields:
    """The dataclass's protocol fields: every attribute named after one, None left out."""
    fields: Fields = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.name in BY_NAME and value is not None:
            fields[f.name] = _wire(f.name, value)
    return fields


def _build(cls: type[_T], fields: Mapping[str, object], **extra: object) -> _T:
    """An instance of the request dataclass `cls` from the protocol fields among `fields` (and `extra`)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, object] = dict(extra)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in BY_NAME or f.name not in fields:
            continue
        value = _wire(f.name, fields[f.name])
        hint = hints[f.name]
        if bool in (hint, *typing.get_args(hint)):
            if value not in (0, 1):
                raise ValueError(f"field {f.name}: {value!r} is not 0 or 1")
            kwargs[f.name] = bool(value)
        else:
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ValueError(f"{cls.__name__}: {e}") from None


def _names(*classes: type) -> frozenset[str]:
    return frozenset(f.name for c in classes for f in dataclasses.fields(c))


@dataclass(frozen=True)
class Mount:
    """One volume of a container: `mount_src`, `mount_dst` and `mount_flags` at one index."""

    src: str  # relative to the pod share; a tmpfs volume's name (TMPFS); SERIAL:FSTYPE (BLOCK)
    dst: str  # absolute, in the container
    flags: MountFlag = _NO_MOUNT_FLAGS


@dataclass(frozen=True)
class ProcessRequest:
    """The process fields of NEW_CONTAINER and EXEC. A capability field or no_new_privs left None is not sent:
    the agent's default for a container (docker's set), the container's own for an EXEC."""

    arg: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    group: tuple[int, ...] = ()
    terminal: bool = False
    stdin: bool = False
    rlimit: tuple[str, ...] = ()  # name:soft:hard, -1 unlimited
    cap_bounding: int | None = None
    cap_effective: int | None = None
    cap_permitted: int | None = None
    cap_inheritable: int | None = None
    cap_ambient: int | None = None
    no_new_privs: bool | None = None
    seccomp: str | None = None  # base64 of a classic BPF program (struct sock_filter[]); EXEC: the container's
    seccomp_flags: int | None = None  # SECCOMP_FLAG_LOG, SECCOMP_FLAG_SPEC_ALLOW; with seccomp only
    rows: int | None = None  # with terminal: the pty's size from its start (no WINSIZE race with the process)
    cols: int | None = None

    def __post_init__(self) -> None:
        if not self.arg:
            raise ValueError("a process needs a command (arg)")
        _fields_of(self)  # every value checked against the field table
        if self.seccomp is not None:
            check_seccomp(self.seccomp)
        if self.seccomp_flags is not None and (self.seccomp is None or self.seccomp_flags & ~(
                SECCOMP_FLAG_LOG | SECCOMP_FLAG_SPEC_ALLOW)):
            raise ValueError(f"seccomp_flags {self.seccomp_flags}: only LOG (2) and SPEC_ALLOW (4), with seccomp")

    def to_fields(self) -> Fields:
        return _fields_of(self)

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> ProcessRequest:
        """The process fields among `fields`; the rest is the caller's to check."""
        return _build(cls, fields)


@dataclass(frozen=True)
class ContainerRequest:
    """NEW_CONTAINER: a container's first process on its root, with its volumes and pod-wide sysctls."""

    id: str
    stream: int  # even, non-zero: stdin/stdout on it, stderr on stream + 1
    process: ProcessRequest
    rootfs: str | None = None  # relative to the pod share
    readonly: bool = False
    mounts: tuple[Mount, ...] = ()
    sysctl: tuple[str, ...] = ()  # name=value
    privileged: bool = False
    shared_pid_ns: bool = False
    pid_ns_of: str | None = None  # start in this running container's PID namespace (a CRI sandbox's)
    memory_limit: int | None = None  # bytes, for its memory cgroup (None or 0: no limit of its own)
    # Paths to mask / make read-only in the container instead of the agent's defaults (runc's); None: the defaults
    # (none if privileged), (): none. An empty list goes on the wire as one empty entry.
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    # True: set up, then wait for START_CONTAINER before the process's own steps and its exec (runc's create, start)
    hold: bool | None = None

    MSG: ClassVar[Msg] = Msg.NEW_CONTAINER
    FIELDS: ClassVar[frozenset[str]] = frozenset()  # set below: the field names it carries

    def __post_init__(self) -> None:
        for m in self.mounts:
            if int(m.flags) & ~int(_ALL_MOUNT_FLAGS) or (m.flags & MountFlag.TMPFS and m.flags & MountFlag.BLOCK):
                raise ValueError(f"mount {m.dst}: invalid flags {int(m.flags)}")
        for name in ("masked_paths", "readonly_paths"):
            paths = getattr(self, name)
            if paths == ("",):  # the wire's empty list
                object.__setattr__(self, name, ())
            elif paths is not None:
                check_paths(name, paths)
        _fields_of(self)

    def to_fields(self) -> Fields:
        mounts: Fields = {"mount_src": [m.src for m in self.mounts], "mount_dst": [m.dst for m in self.mounts],
                          "mount_flags": [int(m.flags) for m in self.mounts]} if self.mounts else {}
        paths: Fields = {name: [""] for name in ("masked_paths", "readonly_paths") if getattr(self, name) == ()}
        return {**_fields_of(self), **self.process.to_fields(), **mounts, **paths}

    @classmethod
    def from_fields(cls, fields: Mapping[str, object], *, id: str | None = None,
                    stream: int | None = None) -> ContainerRequest:
        """From NEW_CONTAINER fields as pod/ and runv build and persist them (a container's process fields with
        its mount fields merged in); `id` and `stream`, when given, instead of the fields'. A name that is not a
        NEW_CONTAINER field is an error."""
        unknown = set(fields) - cls.FIELDS
        if unknown:
            raise ValueError(f"not NEW_CONTAINER fields: {', '.join(sorted(unknown))}")
        srcs, dsts, flags = (fields.get(k, []) for k in ("mount_src", "mount_dst", "mount_flags"))
        if not (isinstance(srcs, list | tuple) and isinstance(dsts, list | tuple) and isinstance(flags, list | tuple)
                and len(srcs) == len(dsts) == len(flags)):
            raise ValueError("mount_src, mount_dst and mount_flags must be lists of one length")
        _wire("mount_src", srcs), _wire("mount_dst", dsts), _wire("mount_flags", flags)
        mounts = tuple(Mount(s, d, MountFlag(f)) for s, d, f in zip(srcs, dsts, flags, strict=True))
        given = {k: v for k, v in (("id", id), ("stream", stream)) if v is not None}
        return _build(cls, {**fields, **given}, process=ProcessRequest.from_fields(fields), mounts=mounts)


@dataclass(frozen=True)
class ExecRequest:
    """EXEC: a process in a running container's namespaces and cgroups."""

    id: str
    stream: int
    process: ProcessRequest
    # True: the process is the agent builtin process.arg[0] names (archive, extract, stat, ps; docs/protocol.md,
    # "Builtins") with process.arg[1:] its arguments, run after the usual EXEC setup instead of a command.
    builtin: bool | None = None

    MSG: ClassVar[Msg] = Msg.EXEC
    FIELDS: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        _fields_of(self)

    def to_fields(self) -> Fields:
        return {**_fields_of(self), **self.process.to_fields()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, object], *, id: str | None = None,
                    stream: int | None = None) -> ExecRequest:
        """As ContainerRequest.from_fields; NEW_CONTAINER's own fields (rootfs, readonly, mounts, sysctl,
        privileged, PID namespace) are dropped, as the agent ignores them in an EXEC: a container's persisted
        fields are the base of its EXECs. `builtin` is EXEC's own."""
        unknown = set(fields) - ContainerRequest.FIELDS - cls.FIELDS
        if unknown:
            raise ValueError(f"not EXEC fields: {', '.join(sorted(unknown))}")
        given = {k: v for k, v in (("id", id), ("stream", stream)) if v is not None}
        return _build(cls, {**fields, **given}, process=ProcessRequest.from_fields(fields))


def check_paths(name: str, paths: Sequence[str]) -> None:
    """masked_paths / readonly_paths: absolute, clean (no empty, "." or ".." component), at most PATHS_MAX of at
    most PATH_MAX bytes."""
    if len(paths) > PATHS_MAX:
        raise ValueError(f"{name}: more than {PATHS_MAX} paths")
    for p in paths:
        parts = p.split("/")
        if (not p.startswith("/") or len(p.encode()) > PATH_MAX or p == "/"
                or any(c in ("", ".", "..") for c in parts[1:])):
            raise ValueError(f"{name}: {p!r} is not a clean absolute path")


def check_seccomp(text: str) -> int:
    """A `seccomp` value: base64 (padded, standard alphabet) of 1 to SECCOMP_MAX_INSNS struct sock_filter (8 bytes
    each). Returns the number of instructions."""
    try:
        raw = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("seccomp: not base64") from None
    if not raw or len(raw) % 8 or len(raw) // 8 > SECCOMP_MAX_INSNS:
        raise ValueError(f"seccomp: {len(raw)} bytes is not 1 to {SECCOMP_MAX_INSNS} instructions of 8 bytes")
    return len(raw) // 8


ContainerRequest.FIELDS = (_names(ProcessRequest, ContainerRequest) - {"process", "mounts"}) | {
    "mount_src", "mount_dst", "mount_flags"}
ExecRequest.FIELDS = _names(ProcessRequest, ExecRequest) - {"process"}


# START_POD's network entries (docs/protocol.md, "Network entries"); the agent has the same limits.
NET_MAX_IFS, NET_MAX_ADDRS, NET_MAX_ROUTES = 16, 16, 64
NET_MIN_MTU, NET_MIN_MTU_IPV6, NET_MAX_MTU = 68, 1280, 65535
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_DIGITS = re.compile(r"[0-9]{1,5}")
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _mac(text: str) -> str:
    """A unicast, non-zero MAC in canonical (lower-case) form."""
    if not _MAC.fullmatch(text) or int(text[:2], 16) & 1 or text.replace(":", "").strip("0") == "":
        raise ValueError(f"invalid MAC {text!r} (want a unicast xx:xx:xx:xx:xx:xx)")
    return text.lower()


def _address(text: str) -> IPAddress:
    if "%" in text:  # an IPv6 scope: the interface is the entry's
        raise ValueError(f"invalid address {text!r}")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid address {text!r}") from None


def _cidr(text: str, route: bool) -> tuple[IPAddress, int]:
    """"addr/len": len digits only, 1 (0 for a route's destination) up to the family's width."""
    addr, slash, plen = text.partition("/")
    if not slash or not _DIGITS.fullmatch(plen):
        raise ValueError(f"invalid {'destination' if route else 'address'} {text!r} (want ADDR/LEN)")
    ip, n = _address(addr), int(plen)
    if not (0 if route else 1) <= n <= ip.max_prefixlen:
        raise ValueError(f"invalid prefix length in {text!r}")
    return ip, n


@dataclass(frozen=True)
class NetIf:
    """One `net_if` entry: "MAC MTU ADDR/LEN ..." (MTU 0: the guest's default)."""

    mac: str
    mtu: int = 0
    addresses: tuple[IPInterface, ...] = ()

    def __str__(self) -> str:
        return " ".join([self.mac, str(self.mtu), *(a.with_prefixlen for a in self.addresses)])

    @classmethod
    def parse(cls, entry: str) -> NetIf:
        mac, *rest = entry.split(" ")
        if not rest or not _DIGITS.fullmatch(rest[0]):
            raise ValueError(f"net_if {entry!r}: want MAC MTU [ADDR/LEN ...]")
        mtu, addresses = int(rest[0]), []
        if mtu and not NET_MIN_MTU <= mtu <= NET_MAX_MTU:
            raise ValueError(f"net_if {entry!r}: MTU {mtu} is not 0 or {NET_MIN_MTU}-{NET_MAX_MTU}")
        try:
            for text in rest[1:]:
                ip, n = _cidr(text, route=False)
                addresses.append(ipaddress.ip_interface((ip, n)))
            if len(addresses) > NET_MAX_ADDRS:
                raise ValueError(f"more than {NET_MAX_ADDRS} addresses")
            if 0 < mtu < NET_MIN_MTU_IPV6 and any(a.version == 6 for a in addresses):
                raise ValueError(f"IPv6 needs an MTU of at least {NET_MIN_MTU_IPV6}")
            return cls(_mac(mac), mtu, tuple(addresses))
        except ValueError as e:
            raise ValueError(f"net_if {entry!r}: {e}") from None


@dataclass(frozen=True)
class NetRoute:
    """One `net_route` entry: "DST VIA MAC" (VIA "-": on the link; MAC: the guest interface, one of net_if's)."""

    dst: IPNetwork
    via: IPAddress | None
    mac: str

    def __str__(self) -> str:
        return f"{self.dst.with_prefixlen} {self.via or '-'} {self.mac}"

    @classmethod
    def parse(cls, entry: str) -> NetRoute:
        parts = entry.split(" ")
        if len(parts) != 3:
            raise ValueError(f"net_route {entry!r}: want DST VIA MAC")
        try:
            ip, n = _cidr(parts[0], route=True)
            dst = ipaddress.ip_network((ip, n))  # host bits set: ValueError
            via = None if parts[1] == "-" else _address(parts[1])
            if via is not None and via.version != dst.version:
                raise ValueError("gateway and destination of different families")
            return cls(dst, via, _mac(parts[2]))
        except ValueError as e:
            raise ValueError(f"net_route {entry!r}: {e}") from None


def net_if(mac: str, addresses: Sequence[str] = (), mtu: int | None = None) -> str:
    """A `net_if` entry, checked."""
    return str(NetIf.parse(" ".join([mac, str(mtu or 0), *addresses])))


def net_route(dst: str, via: str | None, mac: str) -> str:
    """A `net_route` entry, checked."""
    return str(NetRoute.parse(f"{dst} {via or '-'} {mac}"))


def check_net(ifs: Sequence[str], routes: Sequence[str]) -> tuple[list[NetIf], list[NetRoute]]:
    """START_POD's network entries parsed and checked together: limits, no MAC twice, every route's MAC among
    the interfaces'. ValueError names the entry."""
    parsed_ifs, parsed_routes = [NetIf.parse(e) for e in ifs], [NetRoute.parse(e) for e in routes]
    if len(parsed_ifs) > NET_MAX_IFS or len(parsed_routes) > NET_MAX_ROUTES:
        raise ValueError(f"at most {NET_MAX_IFS} net_if and {NET_MAX_ROUTES} net_route entries")
    macs = [i.mac for i in parsed_ifs]
    if len(set(macs)) != len(macs):
        raise ValueError(f"net_if: a MAC is given twice ({', '.join(macs)})")
    for r in parsed_routes:
        if r.mac not in macs:
            raise ValueError(f"net_route {str(r)!r}: no net_if entry has MAC {r.mac}")
    return parsed_ifs, parsed_routes


@dataclass(frozen=True)
class PodRequest:
    """START_POD: everything optional (a pool VM has its share mounted already; no net_if: no network). Each
    `net_if` is an interface ("MAC MTU ADDR/LEN ...", see net_if()), each `net_route` a route ("DST VIA MAC", see
    net_route()), added in order after every interface is configured."""

    hostname: str | None = None
    share: str | None = None  # tag of the pod share device
    sharefs: str | None = None  # virtiofs or 9p
    net_if: tuple[str, ...] = ()
    net_route: tuple[str, ...] = ()
    clock_ns: int | None = None  # a clone's clock
    seed: str | None = None  # hex: a clone's random state

    def __post_init__(self) -> None:
        _fields_of(self)
        check_net(self.net_if, self.net_route)

    def to_fields(self) -> Fields:
        return {k: v for k, v in _fields_of(self).items() if v != []}  # no network: no entries

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> PodRequest:
        unknown = set(fields) - _names(cls)
        if unknown:
            raise ValueError(f"not START_POD fields: {', '.join(sorted(unknown))}")
        return _build(cls, fields)


@dataclass(frozen=True)
class AgentStats:
    """STATS: slots in use in the agent's tables, and its open fds (namespaces and pipes it holds)."""

    containers: int
    processes: int
    fds: int


@dataclass(frozen=True)
class ContainerStats:
    """CONTAINER_STATS: a running container's counters from its cgroups in the guest (v1, read as cAdvisor reads
    them), and when the host got them."""

    cpu_ns: int  # CPU time its processes used, ns (cpuacct.usage)
    mem_usage: int  # bytes charged to its memory cgroup, page cache included (memory.usage_in_bytes)
    mem_working_set: int  # mem_usage less the inactive file cache: the kubelet's working set
    mem_rss: int  # anonymous and swap cache memory (memory.stat total_rss)
    pids: int  # its processes
    memory_limit: int | None = None  # its own limit in bytes; None: none (the VM's size is the limit)
    timestamp: int = 0  # the host's wall clock (ns since the epoch) when the reply arrived; not a protocol field

    @classmethod
    def from_fields(cls, fields: Mapping[str, object], timestamp: int = 0) -> ContainerStats:
        """From the agent's ACK; VMError if a counter is missing (the guest is untrusted: the codec has checked
        kinds, not presence)."""
        counts = {k: fields.get(k) for k in ("cpu_ns", "mem_usage", "mem_working_set", "mem_rss", "pids")}
        limit = fields.get("memory_limit")
        if not all(isinstance(v, int) for v in counts.values()) or not isinstance(limit, int | None):
            raise VMError(f"the agent's CONTAINER_STATS reply lacks a counter: {dict(fields)}")
        return cls(**counts, memory_limit=limit or None, timestamp=timestamp)  # type: ignore[arg-type]


class PortStream:
    """OPEN_PORT: a TCP connection the agent opened inside the guest to the pod's localhost:PORT, its bytes relayed
    on one stream of the agent's stream channel (as a process's stdio: bounded queues, the agent's flow control).

    read(n) -> the next bytes (at most n when n > 0), b"" once the pod's side has closed its end;
    write(data); close_write() (the pod's side reads EOF; reading goes on); close() ends the connection if it has
    not ended and forgets the stream: always call it. `ended` is the relay's end: 0 when both directions closed in
    order, else the errno that ended it (ECONNRESET, ECONNABORTED after close()). read() is asyncio.StreamReader's;
    writer() gives a StreamWriter-like view of the rest.
    """

    def __init__(self, client: AgentClient, streams: ProcessStreams, port: int) -> None:
        self.port = port
        self.stream = streams.stream
        self._client, self._streams = client, streams
        self._pending = b""
        self._eof = False
        self.closed = False

    @property
    def ended(self) -> asyncio.Future[int]:
        return self._streams.exit

    async def read(self, n: int = -1) -> bytes:
        if not self._pending and not self._eof:
            chunk = await self._next()
            if chunk is None:
                self._eof = True
                if self.ended.done() and not self.ended.cancelled() and self.ended.exception():
                    raise VMError(f"port {self.port}: {self.ended.exception()}")
            else:
                self._pending = chunk
        data = self._pending if n < 0 else self._pending[:n]
        self._pending = self._pending[len(data):]
        return data

    async def _next(self) -> bytes | None:
        """The next chunk, None at EOF; VMError if the agent is lost (its queue may have been too full for EOF)."""
        q, lost = self._streams.stdout, self._client.lost
        if q.empty() and not lost.done():
            get = asyncio.ensure_future(q.get())
            either: set[asyncio.Future[Any]] = {get, lost}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                return get.result()
        if not q.empty():
            return q.get_nowait()
        raise VMError(f"port {self.port}: lost the guest agent: {lost.result()}")

    async def write(self, data: bytes) -> None:
        """BrokenPipeError after close_write() or close(), or once the relay has ended."""
        if self._streams.stdin_closed or self.closed or self.ended.done():
            raise BrokenPipeError(errno_mod.EPIPE, f"port {self.port}: the connection is closed for writing")
        if self._client.lost.done():
            raise VMError(f"port {self.port}: lost the guest agent: {self._client.lost.result()}")
        await self._streams.write_stdin(data)

    async def close_write(self) -> None:
        await self._streams.close_stdin()

    async def close(self, timeout: float = 5.0) -> None:
        """Ends the connection: one whose two directions have closed is given `timeout` to end in order, any other
        is ended at once (SIGNAL); waits up to `timeout` for the relay's end, reading on meanwhile so that the
        agent's stream channel never waits on this stream, then forgets the stream. Never raises."""
        if self.closed:
            return
        self.closed = True
        q = self._streams.stdout
        drain = asyncio.ensure_future(self._drain(q))
        try:
            if self._eof and self._streams.stdin_closed and await self._ended_within(timeout):
                return
            if not self.ended.done() and not self._client.lost.done():
                with contextlib.suppress(AgentRequestError, VMError):
                    await self._client.request(Msg.SIGNAL, {"stream": self.stream, "signal": int(signal.SIGKILL)})
            await self._ended_within(timeout)
        finally:
            drain.cancel()
            self._client.unregister(self.stream)
            while not q.empty():
                q.get_nowait()
            self._pending = b""

    async def _ended_within(self, timeout: float) -> bool:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.ended), timeout)
        return self.ended.done()

    @staticmethod
    async def _drain(q: asyncio.Queue[bytes | None]) -> None:
        while True:
            await q.get()

    def writer(self) -> PortWriter:
        return PortWriter(self)


class PortWriter:
    """asyncio.StreamWriter's subset on a PortStream (write and drain, write_eof, close and wait_closed), for code
    written for asyncio streams, such as the CRI streaming server's port-forward."""

    def __init__(self, port: PortStream) -> None:
        self.port = port
        self._buf = bytearray()
        self._tasks: list[asyncio.Future[None]] = []

    def write(self, data: bytes) -> None:
        self._buf += data

    async def drain(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            await self.port.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._eof()))

    async def _eof(self) -> None:
        await self.drain()
        await self.port.close_write()

    def is_closing(self) -> bool:
        return self.port.closed

    def close(self) -> None:
        self._tasks.append(asyncio.ensure_future(self.port.close()))

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def not_runnable(e: AgentError) -> HCError:
    """A failed process start as raised: CommandNotRunnable (docker's 126/127) when its command could not be run,
    else the agent's error."""
    code = command_exit_code(e)
    return CommandNotRunnable(e.message, code) if code is not None else e


class Agent:
    """One guest agent, typed. Failures are AgentRequestError (errno, message, phase), VMError when the
    connection is lost, CommandNotRunnable (docker's 126/127) when a process's command could not be run."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    @classmethod
    def at(cls, ctl: Path, io: Path) -> Agent:
        """An agent behind QEMU's two port sockets (not connected yet)."""
        return cls(AgentClient(ctl, io))

    # ---- the connection ---------------------------------------------------------------------------------
    @property
    def lost(self) -> asyncio.Future[str]:
        """Done, with the reason, once the connection has ended (a protocol breach, no reply, a channel closed)."""
        return self.client.lost

    @property
    def paused(self) -> bool:
        """The VM's CPUs are stopped: no reply timeout counts meanwhile."""
        return self.client.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.client.paused = value

    async def connect(self, timeout: float = 10.0) -> None:
        await self.client.connect(timeout)

    async def handshake(self, timeout: float) -> str:
        """VERSION: the agent's name; guest_uptime is set from its reply."""
        return await self.client.handshake(timeout)

    async def io_ping(self, timeout: float) -> None:
        await self.client.io_ping(timeout)

    async def close(self) -> None:
        await self.client.close()

    @property
    def guest_uptime(self) -> float | None:
        return self.client.guest_uptime

    @property
    def max_stream(self) -> int:
        """The highest stream id handed out for this guest (EXITED for streams up to it may come unattached)."""
        return self.client.max_stream

    @max_stream.setter
    def max_stream(self, value: int) -> None:
        self.client.max_stream = value

    @property
    def takeover(self) -> bool:
        """Taking over from an earlier hyperd: replies to its requests may still arrive and are dropped."""
        return self.client.takeover

    @takeover.setter
    def takeover(self, value: bool) -> None:
        self.client.takeover = value

    def attach(self, stream: int, terminal: bool) -> ProcessStreams:
        """The streams of a process started before (a takeover): output and exit from now on."""
        return self.client.register(stream, terminal)

    def detach(self, stream: int) -> None:
        self.client.unregister(stream)

    # ---- requests ---------------------------------------------------------------------------------------
    async def ping(self) -> None:
        await self.client.request(Msg.PING)

    async def start_pod(self, req: PodRequest) -> None:
        await self.client.request(Msg.START_POD, req.to_fields())

    async def new_container(self, req: ContainerRequest) -> ProcessStreams:
        """Starts the container's first process; its streams (registered before the request, so no output is
        missed) with `pid` set. Starting a container whose first process exited starts it anew."""
        return await self._start(req)

    async def start_container(self, container_id: str) -> None:
        """Lets a container created with `hold` run its process (ERROR with the phase that failed: it exits)."""
        try:
            await self.client.request(Msg.START_CONTAINER, {"id": container_id})
        except AgentError as e:
            raise not_runnable(e) from None

    async def exec(self, req: ExecRequest) -> ProcessStreams:
        return await self._start(req)

    async def _start(self, req: ContainerRequest | ExecRequest) -> ProcessStreams:
        streams = self.client.register(req.stream, req.process.terminal)
        try:
            reply = await self.client.request(req.MSG, req.to_fields())
        except AgentError as e:
            self.client.unregister(req.stream)
            raise not_runnable(e) from None
        except BaseException:
            self.client.unregister(req.stream)
            raise
        pid = reply.get("pid")
        streams.pid = pid if isinstance(pid, int) else None
        return streams

    async def signal(self, stream: int, sig: int) -> None:
        """ERROR ESRCH if the process is gone."""
        await self.client.request(Msg.SIGNAL, {"stream": stream, "signal": sig})

    async def winsize(self, stream: int, rows: int, cols: int) -> None:
        await self.client.request(Msg.WINSIZE, {"stream": stream, "rows": rows, "cols": cols})

    async def remove_container(self, id: str) -> None:
        """Frees the container's slot, namespaces and cgroups in the guest. Its first process must have exited
        (ERROR EBUSY: stop it first with signal()); an unknown id is ERROR ENOENT."""
        await self.client.request(Msg.REMOVE_CONTAINER, {"id": id})

    async def stats(self) -> AgentStats:
        reply = await self.client.request(Msg.STATS)
        containers, processes, fds = (reply.get(k) for k in ("containers", "processes", "fds"))
        if not (isinstance(containers, int) and isinstance(processes, int) and isinstance(fds, int)):
            raise VMError(f"the agent's STATS reply lacks a count: {reply}")
        return AgentStats(containers, processes, fds)

    async def container_stats(self, id: str) -> ContainerStats:
        """A running container's counters (its cgroups); ERROR ENOENT for an unknown id, ESRCH when its first
        process has exited."""
        reply = await self.client.request(Msg.CONTAINER_STATS, {"id": id})
        return ContainerStats.from_fields(reply, time.time_ns())

    async def open_port(self, port: int, stream: int) -> PortStream:
        """A TCP connection from inside the guest to its localhost:`port` (127.0.0.1, else ::1), relayed on
        `stream` (even, non-zero, unused: allocated as for exec). ERROR ECONNREFUSED when nothing listens there,
        ETIMEDOUT when it does not answer within a second."""
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not 1-65535")
        streams = self.client.register(stream, terminal=True)  # one output stream: stream + 1 is never used
        self.client.max_stream = max(self.client.max_stream, stream)  # its EXITED may come after close() gave up
        try:
            await self.client.request(Msg.OPEN_PORT, {"port": port, "stream": stream})
        except BaseException:
            self.client.unregister(stream)
            raise
        return PortStream(self.client, streams, port)

    async def shutdown(self) -> None:
        """ACK, then the agent kills everything, syncs and powers the VM off."""
        await self.client.request(Msg.SHUTDOWN)

