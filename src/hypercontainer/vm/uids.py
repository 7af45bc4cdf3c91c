"""One unprivileged uid (and the gid of the same number) per VMM process, leased so that no two live VMs share one.

The range (`hyperd --vmm-uids FIRST-LAST`, default from `HYPERCONTAINER_VMM_UIDS`; the program sets it once with
use_range() before any VM starts) defaults to 1879048192-1879113727
(0x70000000 + 64 Ki): above the container ranges systemd hands to systemd-nspawn (524288-1879048191) and below
2^31, a block systemd's UID/GID allocation table leaves unused; no passwd or group entry may fall in it (checked on
each lease). The leases are files in one host-wide directory (`/run/hypercontainer-vmm/uids`, on tmpfs: a reboot ends
every VM) shared by every hyperd and every runv shim whatever their --root/--run, each naming the process that
holds it by pid and start time. A lease whose process is gone (a hyperd or shim that was killed, a VM that died)
is free again; claims are serialised by a flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path

from .. import procs
from ..errors import HCError

DEFAULT_RANGE = (0x70000000, 0x70000000 + 0xFFFF)
LEASES = Path("/run/hypercontainer-vmm/uids")


UidRange = tuple[int, int]  # (first, last), both included
DEFAULT_TEXT = f"{DEFAULT_RANGE[0]}-{DEFAULT_RANGE[1]}"
_range: UidRange = DEFAULT_RANGE


def use_range(r: UidRange) -> None:
    """Sets the range this process's VMMs take their uids from (hyperd from its config, runv from its
    environment); claim() and release_pid() use it."""
    global _range
    _range = r


def uid_range() -> UidRange:
    """The range set by use_range() (DEFAULT_RANGE until then)."""
    return _range


def parse_range(text: str) -> UidRange:
    try:
        first, last = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise HCError(f"VMM uid range {text!r} is not FIRST-LAST") from None
    if not (0 < first <= last < 2**31 - 1) or last - first < 15:
        raise HCError(f"VMM uid range {text!r}: need 16 or more ids within 1..2147483646")
    return first, last


def check_range(r: UidRange) -> UidRange:
    """Refuses a range that holds a known user or group (QEMU would share its files and processes)."""
    first, last = r
    for name, ids in (("user", ((u.pw_name, u.pw_uid) for u in pwd.getpwall())),
                      ("group", ((g.gr_name, g.gr_gid) for g in grp.getgrall()))):
        for who, n in ids:
            if first <= n <= last:
                raise HCError(f"the VMM uid range {first}-{last} holds {name} {who} ({n}): choose another "
                              "(hyperd --vmm-uids)")
    return r


def _holder(path: Path) -> tuple[int, int | None] | None:
    try:
        rec = json.loads(path.read_text())
        return int(rec["pid"]), rec.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(path: Path) -> bool:
    h = _holder(path)
    return bool(h) and procs.start_time(h[0]) == h[1] and h[1] is not None  # type: ignore[index]


def _known(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        with contextlib.suppress(KeyError):
            lookup(uid)
            return True
    return False


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LEASES.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(LEASES / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(uid: int, pid: int) -> None:
    tmp = LEASES / f".{uid}.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": pid, "start": procs.start_time(pid)}))
    tmp.rename(LEASES / str(uid))


def claim(r: UidRange | None = None) -> int:
    """A uid of `r` (default: uid_range()) no live VMM has, leased to this process until hand_to() names the VMM."""
    first, last = r if r is not None else _range
    size = last - first + 1
    offset = secrets.randbelow(size)
    with _locked():
        for i in range(size):
            uid = first + (offset + i) % size
            lease = LEASES / str(uid)
            if lease.exists() and _alive(lease):
                continue
            if _known(uid):
                raise HCError(f"uid/gid {uid} is a known user or group: choose another VMM uid range "
                              "(hyperd --vmm-uids)")
            _write(uid, os.getpid())
            return uid
    raise HCError(f"every uid of the VMM range {first}-{last} is in use")


def hand_to(uid: int, pid: int) -> None:
    """The lease now names the VMM process itself (it outlives this hyperd)."""
    with _locked():
        _write(uid, pid)


def release(uid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (LEASES / str(uid)).unlink()


def held() -> dict[int, int]:
    """uid -> pid of the live leases."""
    out = {}
    if LEASES.is_dir():
        for p in LEASES.iterdir():
            if p.name.isdigit() and _alive(p):
                h = _holder(p)
                out[int(p.name)] = h[0]  # type: ignore[index]
    return out


def sweep() -> int:
    """Removes the leases whose process is gone; how many."""
    gone = 0
    if not LEASES.is_dir():
        return 0
    with _locked():
        for p in LEASES.iterdir():
            if p.name.isdigit() and not _alive(p):
                p.unlink(missing_ok=True)
                gone += 1
    return gone
