"""Where things live. Every path can be moved with an environment variable (tests use temp directories)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path  # persistent state: images, pods, sqlite
    run: Path  # runtime: sockets, per-pod runtime files
    assets: Path  # guest kernel, initramfs, agent builds

    @property
    def socket(self) -> Path:
        return Path(os.environ.get("HYPERCONTAINER_SOCKET", self.run / "hyperd.sock"))

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def db(self) -> Path:
        return self.root / "hyperd.db"

    def ensure(self) -> None:
        for p in (self.root, self.run, self.assets, self.images, self.pods):
            p.mkdir(parents=True, exist_ok=True, mode=0o711)


def paths() -> Paths:
    root = Path(os.environ.get("HYPERCONTAINER_ROOT", "/var/lib/hypercontainer"))
    return Paths(
        root=root,
        run=Path(os.environ.get("HYPERCONTAINER_RUN", "/run/hypercontainer")),
        assets=Path(os.environ.get("HYPERCONTAINER_ASSETS", root / "assets")),
    )
