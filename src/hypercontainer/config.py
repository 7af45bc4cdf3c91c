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
        """The state and runtime trees are hyperd's alone (0700): what guests write under them (setuid files,
        device nodes) is out of every other host user's reach. Assets (kernel, initramfs) stay readable."""
        for p in (self.root, self.run, self.images, self.pods):
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(p, 0o700)  # also a tree an older hyperd made 0711
        self.assets.mkdir(parents=True, exist_ok=True, mode=0o755)


def paths() -> Paths:
    root = Path(os.environ.get("HYPERCONTAINER_ROOT", "/var/lib/hypercontainer"))
    return Paths(
        root=root,
        run=Path(os.environ.get("HYPERCONTAINER_RUN", "/run/hypercontainer")),
        assets=Path(os.environ.get("HYPERCONTAINER_ASSETS", root / "assets")),
    )
