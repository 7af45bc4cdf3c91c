"""runv's per-container state: `<root>/<id>/state.json`, written by runv and the shim (temp + rename)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from ...config import environment

try:  # CPython's own SHA-256: hashlib loads OpenSSL for it (~8 ms of each runv call); the same digests
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:
    from hashlib import sha256
from ...errors import Conflict, InvalidArgument, NotFound

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
OCI_VERSION = "1.0.2"


def check_id(cid: str) -> str:
    if not _ID.match(cid):
        raise InvalidArgument(f"invalid container id {cid!r}")
    return cid


class Store:
    def __init__(self, root: Path, run: Path | None = None) -> None:
        """`run`: hypercontainer's runtime dir, for the shims' sockets (default: HYPERCONTAINER_RUN's, config.py)."""
        self.root = root
        self.run = run if run is not None else environment().paths.run

    def dir(self, cid: str) -> Path:
        return self.root / check_id(cid)

    def rundir(self, cid: str) -> Path:
        """Sockets live under a short path (unix socket paths are limited to 107 bytes)."""
        return self.run / "runv" / sha256(f"{self.root.resolve()}/{cid}".encode()).hexdigest()[:16]

    def sock(self, cid: str) -> Path:
        return self.rundir(cid) / "shim.sock"

    def reserve(self, cid: str) -> Path:
        d = self.dir(cid)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"container with id {cid} already exists") from None
        return d

    def load(self, cid: str) -> dict:
        try:
            st = json.loads((self.dir(cid) / "state.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"container {cid} does not exist") from None
        except ValueError:
            raise NotFound(f"container {cid}: its state is unreadable") from None
        if st.get("status") in ("created", "running", "paused") and not self.alive(st):
            st["status"] = "stopped"
        return st

    @staticmethod
    def alive(st: dict) -> bool:
        """The shim is still the process we started (same start time) and has not exited (not a zombie)."""
        from ...procs import start_time

        pid = st.get("pid")
        if not pid or start_time(pid) != st.get("pid_start"):
            return False
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def save(self, cid: str, st: dict) -> None:
        path = self.dir(cid) / "state.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(st))
        tmp.rename(path)

    def ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "state.json").exists())


def member_name(cid: str) -> str:
    """The name a container that joins a sandbox's VM has in that VM's pod."""
    return "m" + sha256(cid.encode()).hexdigest()[:12]


def oci_state(st: dict) -> dict:
    """The `state` output of the OCI runtime spec."""
    out = {"ociVersion": OCI_VERSION, "id": st["id"], "status": st["status"], "bundle": st["bundle"],
           "rootfs": st.get("rootfs", ""), "created": st.get("created_rfc3339", ""),
           "annotations": st.get("annotations") or {}, "owner": ""}
    if st["status"] in ("created", "running", "paused"):
        out["pid"] = st["pid"]
    else:
        out["pid"] = 0
    return out


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"
