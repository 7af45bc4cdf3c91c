"""Published ports in the pod spec (`-p` syntax is parsed by publish.py, which the CLI imports without pydantic)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from .base import Strict
from .publish import PROTOCOLS

Port = Annotated[int, Field(ge=1, le=65535)]


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
