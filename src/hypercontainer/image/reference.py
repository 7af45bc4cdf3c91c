"""Image references: `busybox`, `busybox:1.36`, `registry:5000/team/app@sha256:...`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def short(self) -> str:
        """How docker prints it: busybox:latest rather than docker.io/library/busybox:latest."""
        s = str(self)
        for prefix in (f"{DEFAULT_REGISTRY}/library/", f"{DEFAULT_REGISTRY}/"):
            if s.startswith(prefix):
                return s[len(prefix) :]
        return s


def parse(text: str) -> Reference:
    if not text or len(text) > 512 or text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}")
    rest, _, digest_part = text.partition("@")
    digest = digest_part if "@" in text else None
    if digest is not None and not _DIGEST.match(digest):
        raise InvalidArgument(f"invalid digest in image reference {text!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r} in image reference {text!r}")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, remainder
    else:
        registry, repo = DEFAULT_REGISTRY, rest
    if registry == DEFAULT_REGISTRY and "/" not in repo:
        repo = f"library/{repo}"
    if not _NAME.match(repo):
        raise InvalidArgument(f"invalid repository name in image reference {text!r} (lowercase letters, digits, "
                              "separators)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repo, tag, digest)
