"""Where things live, and the HYPERCONTAINER_* environment variables: the one place that reads them.

hyperd takes each variable as the default of its flag (daemon/config.py builds its HyperdConfig from both);
hyperctl, runv and `make assets` take them through environment(). Nothing below reads os.environ for these.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

# The hot runv verbs import this module: `typing` (~6-19 ms) and `dataclasses` (~10 ms) are kept out of it, and
# each record is a collections.namedtuple that type checkers see as the NamedTuple it is.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NamedTuple

    class _Paths(NamedTuple):
        root: Path  # persistent state: images, pods, sqlite
        run: Path  # runtime: sockets, per-pod runtime files
        assets: Path  # guest kernel, initramfs, agent builds
        socket: Path  # hyperd's API socket

    class _Environment(NamedTuple):
        paths: Paths
        accel: str | None  # kvm | tcg; None: probe
        kernel: str  # auto | own | distro
        vmm_uids: str | None  # FIRST-LAST; None: the default range
else:
    _Paths = collections.namedtuple("_Paths", ("root", "run", "assets", "socket"))
    _Environment = collections.namedtuple("_Environment", ("paths", "accel", "kernel", "vmm_uids"))

DEFAULT_ROOT = Path("/var/lib/hypercontainer")
DEFAULT_RUN = Path("/run/hypercontainer")

ENV_ROOT = "HYPERCONTAINER_ROOT"
ENV_RUN = "HYPERCONTAINER_RUN"
ENV_SOCKET = "HYPERCONTAINER_SOCKET"
ENV_ASSETS = "HYPERCONTAINER_ASSETS"
ENV_ACCEL = "HYPERCONTAINER_ACCEL"
ENV_KERNEL = "HYPERCONTAINER_KERNEL"
ENV_VMM_UIDS = "HYPERCONTAINER_VMM_UIDS"


class Paths(_Paths):
    __slots__ = ()

    @classmethod
    def of(cls, root: Path = DEFAULT_ROOT, run: Path = DEFAULT_RUN, assets: Path | None = None,
           socket: Path | None = None) -> Paths:
        """The layout with its derived defaults: assets under the root, the socket under the runtime dir."""
        return cls(root, run, assets if assets is not None else root / "assets",
                   socket if socket is not None else run / "hyperd.sock")

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


class Environment(_Environment):
    """What hyperctl, runv and `make assets` take from HYPERCONTAINER_* (raw: each consumer checks its own)."""

    __slots__ = ()


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


def environment(env: Mapping[str, str] | None = None) -> Environment:
    """The HYPERCONTAINER_* variables of `env` (default: this process's); unset or empty means the default."""
    env = os.environ if env is None else env
    return Environment(
        paths=Paths.of(_path(env, ENV_ROOT) or DEFAULT_ROOT, _path(env, ENV_RUN) or DEFAULT_RUN,
                       _path(env, ENV_ASSETS), _path(env, ENV_SOCKET)),
        accel=env.get(ENV_ACCEL) or None,
        kernel=env.get(ENV_KERNEL) or "auto",
        vmm_uids=env.get(ENV_VMM_UIDS) or None,
    )


def paths() -> Paths:
    """The paths hyperctl, runv and `make assets` use (hyperd's come from its flags)."""
    return environment().paths
