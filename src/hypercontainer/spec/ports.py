"""Published ports: the spec model and docker's `-p [IP:][HOST:]CONTAINER[/PROTO]` syntax."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from ..errors import InvalidArgument
from .base import Strict

Port = Annotated[int, Field(ge=1, le=65535)]
PROTOCOLS = ("tcp", "udp")


def _protocol(v: object) -> object:
    if isinstance(v, str):
        v = v.lower()
        if v not in PROTOCOLS:
            raise ValueError(f"unknown protocol {v!r} (use tcp or udp)")
    return v


class PortMapping(Strict):
    """A guest port published on the host. host_port 0: any free port, chosen when the pod starts."""

    container_port: Port
    host_port: Annotated[int, Field(ge=0, le=65535)] = 0
    host_ip: str = "0.0.0.0"
    protocol: Annotated[Literal["tcp", "udp"], BeforeValidator(_protocol)] = "tcp"

    @field_validator("host_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None

    def key(self) -> tuple[str, int, str]:
        return (self.host_ip, self.host_port, self.protocol)

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


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
