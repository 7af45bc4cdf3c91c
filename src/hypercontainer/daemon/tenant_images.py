"""A tenant's images: its names live in a namespace of its own inside the one image store.

Layers and blobs are shared by content, names are not: tenant `acme` pulling `busybox` records it as
`tenant:acme/docker.io/library/busybox:latest` (the registry's `:` written `__`, a digest pulled by digest as the
tag `sha256-<hex>`), never as the daemon's `busybox`, which it cannot see or change. A tenant sees, tags, saves,
removes and runs only images it has a name for; removing its name drops the image only when no other name (the
administrator's, another tenant's) and no pod holds it. The administrator sees these names as they are stored.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import re
from pathlib import Path

from ..errors import ImageError, InvalidArgument, NotFound
from ..image import archive, reference
from ..image.store import Image, ImageStore

NAMESPACE = "tenant:"  # a registry part no real registry has (a port is a number)
_DIGEST_TAG = re.compile(r"^sha256-([0-9a-f]{64})$")
_HEX = re.compile(r"^[0-9a-f]{12,64}$")


def namespaced(tenant: str, text: str) -> str:
    """`text` (a reference as the tenant writes it) as stored in the tenant's namespace."""
    ref = reference.parse(text)
    tag = f"sha256-{ref.digest[7:]}" if ref.digest else ref.tag
    stored = f"{NAMESPACE}{tenant}/{ref.registry.replace(':', '__')}/{ref.repository}:{tag}"
    try:
        reference.parse(stored)
    except InvalidArgument:
        raise InvalidArgument(f"image reference {text!r}: its registry name cannot be used by a tenant") from None
    return stored


def shown(tenant: str, stored: str) -> str | None:
    """A stored name as its tenant writes it (short form); None if it is not that tenant's."""
    prefix = f"{NAMESPACE}{tenant}/"
    if not stored.startswith(prefix):
        return None
    registry, _, rest = stored[len(prefix):].partition("/")
    repo, _, tag = rest.rpartition(":")
    m = _DIGEST_TAG.match(tag)
    return reference.parse(f"{registry.replace('__', ':')}/{repo}{f'@sha256:{m.group(1)}' if m else f':{tag}'}").short


def _repo(text: str) -> str:
    ref = reference.parse(text)
    return f"{ref.registry}/{ref.repository}"


def _looks_like_id(text: str) -> bool:
    return text.startswith("sha256:") or bool(_HEX.match(text))


class TenantImages:
    """The image store as tenant `tenant` sees it."""

    def __init__(self, store: ImageStore, tenant: str) -> None:
        self.store, self.tenant = store, tenant

    def names(self, img: Image) -> builtins.list[str]:
        """The tenant's stored names for `img`."""
        return [r for r in img.refs if r.startswith(f"{NAMESPACE}{self.tenant}/")]

    def get(self, text: str) -> Image:
        """The image `text` names (a reference, an id or a prefix of one, name@digest) among the tenant's; a
        missing image and another's read alike."""
        if "@" in text or _looks_like_id(text):
            try:
                img = self.store.get(text)
                # by digest: only where the tenant has a name in that repository (the digest is the repository's)
                if self.names(img) and ("@" not in text or _repo(text) in self.repositories(img)):
                    return img
            except (NotFound, InvalidArgument):
                pass
        if not text.startswith("sha256:"):
            try:
                return self.store.get(namespaced(self.tenant, text))
            except (NotFound, InvalidArgument):
                pass
        raise NotFound(f"no such image: {text} (pull it with 'hyperctl pull {text}' or load it with "
                       "'hyperctl load -i FILE')")

    def repositories(self, img: Image) -> set[str]:
        """The repositories (registry/repository) the tenant's names of `img` are in."""
        return {_repo(n) for n in (shown(self.tenant, r) for r in self.names(img)) if n}

    def list(self) -> list[Image]:
        return [i for i in self.store.list() if self.names(i)]

    def info(self, img: Image) -> dict:
        """The API's image document with only the tenant's names, and digests of its repositories."""
        names = sorted(n for n in (shown(self.tenant, r) for r in self.names(img)) if n)
        repos = self.repositories(img)
        digests = [reference.parse(d).short for d in img.repo_digests if _repo(d) in repos]
        return {"id": img.id, "refs": [n for n in names if "@" not in n], "size": img.size, "digests": digests,
                "created": img.created, "layers": list(img.diff_ids), "config": img.run_config,
                "architecture": img.config.get("architecture"), "os": img.config.get("os")}

    def for_save(self, text: str) -> tuple[Image, str | None]:
        """What archive.save takes for `text`: the image, holding only the tenant's tag names, and the name."""
        img = self.get(text)
        tags = tuple(n for n in (shown(self.tenant, r) for r in self.names(img)) if n and "@" not in n)
        return dataclasses.replace(img, refs=tags, repo_digests=()), text

    def tag(self, source: str, target: str) -> str:
        img = self.get(source)
        if reference.parse(target).digest:
            raise ImageError("a tag cannot carry a digest")
        return self.store.tag(img.id, namespaced(self.tenant, target))

    def remove(self, text: str, in_use: set[str]) -> builtins.list[str]:
        """Drops the tenant's name `text` (all its names of the image, for an id or a digest); the image goes
        once nothing else names or uses it."""
        img = self.get(text)
        names = self.names(img)
        try:
            own = namespaced(self.tenant, text)
        except InvalidArgument:
            own = ""
        targets = [own] if own in names else names
        if img.id in in_use and set(targets) == set(img.refs):
            raise ImageError(f"image {text} is used by a pod; remove the pod first")
        out = []
        for stored in targets:
            for line in self.store.remove(stored, in_use):
                out.append(f"Untagged: {shown(self.tenant, stored)}" if line.startswith("Untagged: ") else line)
        return out

    def remove_all(self, in_use: set[str]) -> None:
        """Drops every name of the tenant (it is being removed); images in use by others' pods keep theirs."""
        for img in self.list():
            for stored in self.names(img):
                with contextlib.suppress(ImageError):  # in use by a pod of another's: it keeps this name
                    self.store.remove(stored, in_use)

    def load(self, path: Path) -> builtins.list[Image]:
        def names(tags: builtins.list[str]) -> builtins.list[str]:
            if not tags:
                raise ImageError("an image without a name in the archive cannot be loaded by a tenant: save it "
                                 "by name (docker save NAME:TAG)")
            return [namespaced(self.tenant, t) for t in tags]

        return archive.load(path, self.store, names=names)
