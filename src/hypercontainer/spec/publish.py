"""docker's `-p [IP:][HOST:]CONTAINER[/PROTO]` syntax, parsed into the spec's port mapping fields. No pydantic
here: hyperctl imports it, and its start-up time counts in every command."""

from __future__ import annotations

import ipaddress

from ..errors import InvalidArgument

PROTOCOLS = ("tcp", "udp")


def _port(text: str, what: str, spec: str, allow_zero: bool = False) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise InvalidArgument(f"invalid port mapping {spec!r}: {what} port {text!r} is not a number in 1-65535")
    return int(text)


def parse_publish(spec: str) -> dict:
    """`-p` syntax to a PortMapping dict: 80, 8080:80, 127.0.0.1:8080:80, 127.0.0.1::80, 53:53/udp."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto.lower() not in PROTOCOLS:
        raise InvalidArgument(f"invalid port mapping {spec!r}: unknown protocol {proto!r} (use tcp or udp)")
    parts = body.rsplit(":", 2)
    out: dict = {"protocol": proto.lower(), "container_port": _port(parts[-1], "container", spec)}
    if len(parts) >= 2 and parts[-2]:
        out["host_port"] = _port(parts[-2], "host", spec)
    if len(parts) == 3:
        try:
            out["host_ip"] = str(ipaddress.IPv4Address(parts[0]))
        except ValueError:
            raise InvalidArgument(f"invalid port mapping {spec!r}: {parts[0]!r} is not an IPv4 address") from None
    return out
