"""Frames and fields of protocol version 1: the one table of messages and fields on the host side.

Nothing here does I/O. Frames from the guest are decoded strictly (the guest is untrusted): unknown tags,
repeated single fields, wrong lengths and oversized frames raise ProtocolError.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Literal

VERSION = 1
CTL_HDR = struct.Struct(">III")  # type, seq, length
IO_HDR = struct.Struct(">QI")  # stream, length
FIELD_HDR = struct.Struct(">HI")
CTL_MAX_PAYLOAD = 1024 * 1024
IO_MAX_DATA = 65536
FIELD_MAX_STR = 65536
FIELD_MAX_COUNT = 4096


class ProtocolError(Exception):
    """A frame that breaks docs/protocol.md."""


class Msg(enum.IntEnum):
    VERSION = 1
    PING = 2
    START_POD = 3
    NEW_CONTAINER = 4
    EXEC = 5
    SIGNAL = 6
    WINSIZE = 7
    SHUTDOWN = 8
    REMOVE_CONTAINER = 9
    STATS = 10
    CONTAINER_STATS = 11
    OPEN_PORT = 12
    START_CONTAINER = 13
    ACK = 256
    ERROR = 257
    EXITED = 512


Kind = Literal["u64", "str"]


@dataclass(frozen=True)
class FieldDef:
    tag: int
    name: str
    kind: Kind
    list: bool = False


FIELDS: tuple[FieldDef, ...] = (
    FieldDef(1, "version", "u64"),
    FieldDef(2, "agent", "str"),
    FieldDef(3, "code", "u64"),
    FieldDef(4, "message", "str"),
    FieldDef(5, "id", "str"),
    FieldDef(6, "rootfs", "str"),
    FieldDef(7, "arg", "str", list=True),
    FieldDef(8, "env", "str", list=True),
    FieldDef(9, "cwd", "str"),
    FieldDef(10, "uid", "u64"),
    FieldDef(11, "gid", "u64"),
    FieldDef(12, "group", "u64", list=True),
    FieldDef(13, "terminal", "u64"),
    FieldDef(14, "stream", "u64"),
    FieldDef(15, "status", "u64"),
    FieldDef(16, "signal", "u64"),
    FieldDef(17, "rows", "u64"),
    FieldDef(18, "cols", "u64"),
    FieldDef(19, "hostname", "str"),
    FieldDef(20, "pid", "u64"),
    FieldDef(21, "readonly", "u64"),
    FieldDef(22, "stdin", "u64"),
    FieldDef(23, "share", "str"),
    FieldDef(24, "sharefs", "str"),
    FieldDef(25, "uptime_ms", "u64"),
    FieldDef(26, "mount_src", "str", list=True),
    FieldDef(27, "mount_dst", "str", list=True),
    FieldDef(28, "mount_flags", "u64", list=True),
    FieldDef(29, "sysctl", "str", list=True),
    FieldDef(30, "rlimit", "str", list=True),
    # 31-33 (net_mac, net_addr, net_gw: one IPv4 interface) are retired: never reused, unknown to both sides.
    FieldDef(34, "clock_ns", "u64"),
    FieldDef(35, "seed", "str"),
    FieldDef(36, "cap_bounding", "u64"),
    FieldDef(37, "cap_effective", "u64"),
    FieldDef(38, "cap_permitted", "u64"),
    FieldDef(39, "cap_inheritable", "u64"),
    FieldDef(40, "cap_ambient", "u64"),
    FieldDef(41, "no_new_privs", "u64"),
    FieldDef(42, "privileged", "u64"),
    FieldDef(43, "shared_pid_ns", "u64"),
    FieldDef(44, "oom_killed", "u64"),
    FieldDef(45, "pid_ns_of", "str"),
    FieldDef(46, "phase", "str"),
    FieldDef(47, "containers", "u64"),
    FieldDef(48, "processes", "u64"),
    FieldDef(49, "fds", "u64"),
    FieldDef(50, "net_if", "str", list=True),
    FieldDef(51, "net_route", "str", list=True),
    FieldDef(52, "memory_limit", "u64"),
    FieldDef(53, "masked_paths", "str", list=True),
    FieldDef(54, "readonly_paths", "str", list=True),
    FieldDef(55, "seccomp", "str"),
    FieldDef(56, "seccomp_flags", "u64"),
    FieldDef(57, "cpu_ns", "u64"),
    FieldDef(58, "mem_usage", "u64"),
    FieldDef(59, "mem_working_set", "u64"),
    FieldDef(60, "mem_rss", "u64"),
    FieldDef(61, "pids", "u64"),
    FieldDef(62, "port", "u64"),
    FieldDef(63, "builtin", "u64"),
    FieldDef(64, "hold", "u64"),
)
RETIRED_TAGS = frozenset({31, 32, 33})
BY_TAG = {f.tag: f for f in FIELDS}
BY_NAME = {f.name: f for f in FIELDS}


class MountFlag(enum.IntFlag):
    """Bits of `mount_flags` (NEW_CONTAINER)."""

    READONLY = 1  # the volume is read-only in the container
    TMPFS = 2  # the source is a pod-wide tmpfs volume's name
    BLOCK = 4  # the source is SERIAL:FSTYPE, a virtio disk mounted once per pod


class Phase(enum.StrEnum):
    """`phase` of an ERROR: the step of a process start that failed (absent: the request itself was refused)."""

    SPAWN = "spawn"  # pipes, terminal, fork
    CGROUP = "cgroup"  # making or joining the container's cgroups
    NAMESPACE = "namespace"  # making or joining a mount or PID namespace
    MOUNT = "mount"  # the container's root, volumes, /proc, /sys, /dev, masked paths
    SYSCTL = "sysctl"
    RLIMIT = "rlimit"
    CHDIR = "chdir"  # the process's working directory
    USER = "user"  # supplementary groups, gid, uid
    CAPABILITIES = "capabilities"  # capability sets, no_new_privs
    SECCOMP = "seccomp"  # loading the seccomp filter
    EXEC = "exec"  # the command itself: not found (ENOENT, ENOTDIR) or not executable


PHASES = frozenset(p.value for p in Phase)

# What the guest may send, and the fields each must carry.
FROM_GUEST_REQUIRED: dict[Msg, tuple[str, ...]] = {
    Msg.ACK: (),
    Msg.ERROR: ("code", "message"),
    Msg.EXITED: ("stream", "status"),
}

Fields = dict[str, "int | str | list[int] | list[str]"]


@dataclass
class CtlFrame:
    type: int
    seq: int
    fields: Fields = field(default_factory=dict)


@dataclass
class IoFrame:
    stream: int
    data: bytes


def encode_fields(fields: Fields) -> bytes:
    out = bytearray()
    for name, value in fields.items():
        d = BY_NAME[name]
        values = value if d.list else [value]
        if not isinstance(values, list):
            raise TypeError(f"field {name} takes a list")
        for v in values:
            if d.kind == "u64":
                if not isinstance(v, int) or not 0 <= v < 2**64:
                    raise ValueError(f"field {name}: {v!r} is not a u64")
                raw = struct.pack(">Q", v)
            else:
                if not isinstance(v, str):
                    raise TypeError(f"field {name}: {v!r} is not a string")
                raw = v.encode()
                if b"\0" in raw or len(raw) > FIELD_MAX_STR:
                    raise ValueError(f"field {name}: string has a NUL byte or is over {FIELD_MAX_STR} bytes")
            out += FIELD_HDR.pack(d.tag, len(raw)) + raw
    return bytes(out)


def encode_ctl(type_: int, seq: int, fields: Fields | None = None) -> bytes:
    payload = encode_fields(fields or {})
    if len(payload) > CTL_MAX_PAYLOAD:
        raise ProtocolError(f"control payload of {len(payload)} bytes is over the 1 MiB limit")
    return CTL_HDR.pack(type_, seq, len(payload)) + payload


def encode_io(stream: int, data: bytes) -> bytes:
    if len(data) > IO_MAX_DATA:
        raise ProtocolError(f"stream frame of {len(data)} bytes is over the 64 KiB limit")
    return IO_HDR.pack(stream, len(data)) + data


def decode_fields(payload: bytes) -> Fields:
    """Strict decoding, as for frames from the guest."""
    fields: Fields = {}
    off, count = 0, 0
    while off < len(payload):
        if len(payload) - off < FIELD_HDR.size:
            raise ProtocolError("truncated field header")
        tag, flen = FIELD_HDR.unpack_from(payload, off)
        off += FIELD_HDR.size
        if flen > len(payload) - off:
            raise ProtocolError(f"field {tag} overruns the payload")
        d = BY_TAG.get(tag)
        if d is None:
            raise ProtocolError(f"unknown field tag {tag}")
        count += 1
        if count > FIELD_MAX_COUNT:
            raise ProtocolError("too many fields")
        raw = payload[off : off + flen]
        off += flen
        if d.kind == "u64":
            if flen != 8:
                raise ProtocolError(f"field {d.name}: u64 with length {flen}")
            value: int | str = struct.unpack(">Q", raw)[0]
        else:
            if flen > FIELD_MAX_STR or b"\0" in raw:
                raise ProtocolError(f"field {d.name}: string too long or holds a NUL byte")
            try:
                value = raw.decode()
            except UnicodeDecodeError as e:
                raise ProtocolError(f"field {d.name}: not UTF-8") from e
        if d.list:
            fields.setdefault(d.name, []).append(value)  # type: ignore[union-attr,arg-type]
        elif d.name in fields:
            raise ProtocolError(f"field {d.name} repeated")
        else:
            fields[d.name] = value
    return fields


def check_from_guest(frame: CtlFrame) -> None:
    """Rejects message types and field sets the guest may not send."""
    try:
        kind = Msg(frame.type)
    except ValueError:
        raise ProtocolError(f"unknown message type {frame.type} from guest") from None
    if kind not in FROM_GUEST_REQUIRED:
        raise ProtocolError(f"guest sent {kind.name}, which only the host sends")
    missing = [n for n in FROM_GUEST_REQUIRED[kind] if n not in frame.fields]
    if missing:
        raise ProtocolError(f"{kind.name} without {', '.join(missing)}")
    if (kind is Msg.EXITED) != (frame.seq == 0):
        raise ProtocolError(f"{kind.name} with seq {frame.seq}")
    phase = frame.fields.get("phase")
    if phase is not None and (kind is not Msg.ERROR or phase not in PHASES):
        raise ProtocolError(f"{kind.name} with phase {phase!r}")


class FrameReader:
    """Cuts a byte stream into frames of one kind; bytes may arrive in any chunking."""

    def __init__(self, kind: Literal["ctl", "io"]) -> None:
        self.kind = kind
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[CtlFrame] | list[IoFrame]:
        self._buf += data
        ctl: list[CtlFrame] = []
        io: list[IoFrame] = []
        while len(self._buf) >= 12:
            if self.kind == "ctl":
                a, b, n = CTL_HDR.unpack_from(self._buf)
                if n > CTL_MAX_PAYLOAD:
                    raise ProtocolError(f"control payload of {n} bytes is over the 1 MiB limit")
            else:
                a, n = IO_HDR.unpack_from(self._buf)
                if n > IO_MAX_DATA:
                    raise ProtocolError(f"stream frame of {n} bytes is over the 64 KiB limit")
            if len(self._buf) < 12 + n:
                break
            body = bytes(self._buf[12 : 12 + n])
            del self._buf[: 12 + n]
            if self.kind == "ctl":
                ctl.append(CtlFrame(a, b, decode_fields(body)))
            else:
                io.append(IoFrame(a, body))
        return ctl if self.kind == "ctl" else io

    @property
    def pending(self) -> int:
        return len(self._buf)
