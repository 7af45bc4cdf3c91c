"""Pod spec models. Unknown fields are rejected and every error names its field."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_ENV_KEY = re.compile(r"^[^=\0]+$")
_USER = re.compile(r"^([a-z_][a-z0-9_.-]{0,31}|[0-9]{1,10})(:([a-z_][a-z0-9_.-]{0,31}|[0-9]{1,10}))?$")
MIN_MEMORY_MIB = 64
MAX_CONTAINERS = 64


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return v


Name = Annotated[str, AfterValidator(_check_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    vcpu: Annotated[int, Field(ge=1, le=64)] = 1
    memory: Annotated[int, Field(ge=MIN_MEMORY_MIB, le=65536, description="MiB")] = 256


class ContainerSpec(Strict):
    name: Name
    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = []
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    stdin: bool = False
    readonly: bool = False


    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for item in v:
            key, eq, _ = item.partition("=")
            if not eq or not _ENV_KEY.match(key) or "\0" in item:
                raise ValueError(f"{item!r} is not KEY=VALUE")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v or ".." in v.split("/")):
            raise ValueError(f"{v!r} must be an absolute path without '..'")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not _USER.match(v):
            raise ValueError(f"{v!r} is not a user name or UID, optionally with :GROUP or :GID")
        return v

    @field_validator("command", "entrypoint")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any("\0" in a for a in v):
            raise ValueError("arguments must not contain NUL bytes")
        return v


class PodSpec(Strict):
    name: Name | None = None
    hostname: str | None = None
    resources: Resources = Resources()
    containers: Annotated[list[ContainerSpec], Field(min_length=1, max_length=MAX_CONTAINERS)]
    auto_remove: bool = False


    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a DNS label (lowercase letters, digits, '-', at most 63)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> PodSpec:
        names = [c.name for c in self.containers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate container names: {', '.join(sorted(dup))}")
        return self
