"""A tiny writer for the cpio "newc" format the kernel unpacks as its initramfs."""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    name: str  # no leading slash
    mode: int  # full st_mode, type bits included
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, e: Entry) -> bytes:
    name = e.name.encode() + b"\0"
    fields = [ino, e.mode, 0, 0, 1 if not stat.S_ISDIR(e.mode) else 2, 0, len(e.data), 0, 0, *e.rdev, len(name), 0]
    hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + name
    return hdr + b"\0" * (-len(hdr) % 4)


def build(entries: list[Entry]) -> bytes:
    """The archive bytes; entries are written in order (parents first)."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        out += _header(ino, e) + e.data + b"\0" * (-len(e.data) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))
