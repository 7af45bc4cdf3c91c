"""Host ports: reserved by binding them (as docker does), so that nothing else takes a published port and a port
already in use is a clear error before the pod starts."""

from __future__ import annotations

import errno
import socket

from ..errors import Conflict, HCError


def reserve(host_ip: str, port: int, protocol: str) -> socket.socket:
    """A bound (never listening) socket holding the port; port 0 picks a free one (see getsockname)."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        s.bind((host_ip, port))
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise Conflict(f"host port {host_ip}:{port}/{protocol} is already in use") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise Conflict(f"cannot publish on {host_ip}: not an address of this host") from None
        if e.errno == errno.EACCES:
            raise HCError(f"cannot bind host port {port}/{protocol}: permission denied") from None
        raise HCError(f"cannot bind host port {host_ip}:{port}/{protocol}: {e.strerror}") from None
    return s


def check_free(host_ip: str, port: int, protocol: str) -> int:
    """Fails if the port is taken; returns it (a free one if 0). For QEMU's user mode, which binds it itself."""
    s = reserve(host_ip, port, protocol)
    try:
        return int(s.getsockname()[1])
    finally:
        s.close()
