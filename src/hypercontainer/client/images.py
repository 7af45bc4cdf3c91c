"""Images: `client.images` (an `ImageCollection`) pulls, lists, tags and removes them; an `Image` is one of them."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HCError

if TYPE_CHECKING:
    from .transport import Transport

Progress = Callable[[dict], None]
"""Called with each progress record of a pull or push: {"id": LAYER, "status", "current", "total"}, or a status line
without "id"."""


class Image:
    """One image in hyperd's store. `attrs` is its record (`hyperctl image inspect`)."""

    def __init__(self, client: Transport, attrs: dict) -> None:
        self.client = client
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"<Image {', '.join(self.tags) or self.short_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        """sha256:... of its config."""
        return str(self.attrs["id"])

    @property
    def short_id(self) -> str:
        """The id's first 12 hex digits, as `hyperctl images` shows it."""
        return self.id.removeprefix("sha256:")[:12]

    @property
    def tags(self) -> list[str]:
        """Its names (NAME:TAG)."""
        return list(self.attrs.get("refs") or [])

    def reload(self) -> Image:
        """Reads the record again; returns the image."""
        self.attrs = self.client.request("GET", f"/v1/images/{self.id}")
        return self

    def tag(self, target: str) -> None:
        """Gives the image another name."""
        self.client.request("POST", "/v1/images/tag", json={"source": self.id, "target": target})


def _auth(auth: tuple[str, str] | None) -> dict | None:
    return {"username": auth[0], "password": auth[1]} if auth else None


class ImageCollection:
    """`client.images`."""

    def __init__(self, client: Transport) -> None:
        self.client = client

    def list(self) -> builtins.list[Image]:
        """Every image."""
        return [Image(self.client, i) for i in self.client.request("GET", "/v1/images")]

    def get(self, ref: str) -> Image:
        """The image of this name (NAME[:TAG], NAME@DIGEST) or id; NotFound if there is none."""
        return Image(self.client, self.client.request("GET", f"/v1/images/{ref}"))

    def pull(self, ref: str, *, platform: str | None = None, auth: tuple[str, str] | None = None,
             progress: Progress | None = None) -> Image:
        """Pulls an image from its registry (`platform`: os/arch[/variant], default linux/amd64; `auth`:
        (username, password) for the registry); `progress` is called with each progress record."""
        done = self._operation("/v1/images/pull", {"ref": ref, "platform": platform, "auth": _auth(auth)}, progress)
        return Image(self.client, done["image"])

    def push(self, ref: str, *, auth: tuple[str, str] | None = None, progress: Progress | None = None) -> dict:
        """Pushes an image to its registry; returns {"ref", "digest", "size"} of the manifest pushed."""
        done = self._operation("/v1/images/push", {"ref": ref, "auth": _auth(auth)}, progress)
        return dict(done["push"])

    def _operation(self, path: str, body: dict, progress: Progress | None) -> dict:
        """A streamed image operation: NDJSON progress, then {"status": "done", ...} (or the error, raised)."""
        final = None
        for ev in self.client.stream_json(path, method="POST", json=body):
            if ev.get("status") == "done":
                final = ev
            elif progress is not None:
                progress(ev)
        if final is None:
            raise HCError(f"hyperd ended {path} without a result")
        return final

    def tag(self, source: str, target: str) -> None:
        """Gives image `source` the name `target`."""
        self.client.request("POST", "/v1/images/tag", json={"source": source, "target": target})

    def remove(self, ref: str) -> builtins.list[str]:
        """Removes a name (the image itself once no name is left and no pod uses it); returns what was removed:
        "Untagged: ..." and "Deleted: ..." lines."""
        return [str(r) for r in self.client.request("DELETE", f"/v1/images/{ref}")["removed"]]

    def load(self, archive: str | Path) -> builtins.list[dict]:
        """Loads the images of a docker-archive or OCI-archive tarball; returns {"id", "refs"} of each."""
        return list(self.client.upload("/v1/images/load", Path(archive), timeout=None)["loaded"])

    def save(self, refs: builtins.list[str], dest: str | Path, format: str = "docker") -> None:
        """Writes images to a tarball: a docker-archive, or an OCI-archive with format="oci"."""
        self.client.download("/v1/images/save", Path(dest), params={"ref": list(refs), "format": format})
