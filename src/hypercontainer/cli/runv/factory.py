"""runv's VM factory (Kata's VM cache): `runv factory` keeps a few VMs ready for the shims of one runv root, so
that a container's start resumes a VM instead of restoring one (~0.15 s of QEMU start and restore, and the TCG
translation of a container's set-up under emulation, paid before any container asks).

The VMs are hyperd's pool VMs (pod/pool.py): restored from the template, agent connected, share mounted, one
throwaway container run, paused. They have no NIC (a microvm takes none later), so they serve containers whose VM
boots without one: a network namespace of their own that is still empty at `create` (`--network none`); others
boot from the template as before. A shim asks over a unix socket (SOCK_SEQPACKET, one JSON request, one reply
with the agent's two connected sockets as SCM_RIGHTS); the factory hands the VM over and forgets the connection.
The shim owns the VM from then on (its Machine is `lent`: it stops QEMU); the factory, whose child QEMU stays,
frees the VM's uid, cgroup and directory once QEMU has exited, and refills. A shim that dies first (kill -9) takes
its VM with it: the factory watches the borrower (its pid from the socket's credentials) and stops that VM. A
factory started again removes the ready VMs of the last one and leaves the ones it lent alone while they run.

The VMs' share directories live in the factory's mount namespace (pinned like hyperd's, storage/mountns.py), and
the shims of this root join it instead of making one of their own: what a shim mounts in a lent VM's share (the
bundle's root, its volumes) must reach that VM's 9p server, whose jail is a slave copy of the factory's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import environment
from ...storage import mountns

if TYPE_CHECKING:
    from ...pod.pool import Pool, Slot

log = logging.getLogger("runv-factory")
LENT = "lent"  # in a VM's directory once a shim has it


def home(root: Path) -> Path:
    """The factory of the runv root `root`: a short path (its VMs' unix sockets live below it)."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return environment().paths.run / "runv" / f"factory-{digest}"


def socket_path(root: Path) -> Path:
    return home(root) / "sock"


def pin_dir(root: Path) -> Path:
    return home(root) / "ns"


def run(root: Path, size: int, cpus: int = 1, memory: int = 256) -> None:
    """`runv factory`: serves until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    h = home(root)
    h.mkdir(parents=True, exist_ok=True, mode=0o700)
    mountns.enter_daemon(pin_dir(root))  # on the only thread, before asyncio
    try:
        asyncio.run(serve(root, size, cpus, memory))
    finally:
        mountns.release_daemon(pin_dir(root))
        from ...errors import HCError
        from ...storage.volumes import remove_tree

        with contextlib.suppress(HCError, OSError):
            remove_tree(h / "templates")  # where templates were built
        for d in (h / "vms", h):  # what VMs still lent out keep stays
            with contextlib.suppress(OSError):
                d.rmdir()


async def serve(root: Path, size: int, cpus: int, memory: int) -> None:
    from ...guest import assets as guest_assets
    from ...pod.pool import Pool
    from ...pod.templates import Templates
    from ...vm import confine
    from ...vm.accel import detect

    env = environment()
    p = env.paths
    a = await asyncio.to_thread(guest_assets.current, p.assets, env.kernel)
    accel = await detect(a.kernel, a.initrd, a.digest, p.assets / "accel.json", env.accel)
    h = home(root)
    templates = Templates(a.kernel, a.initrd, accel.name, a.digest, p.assets / "templates", h / "templates")
    pool = Pool(size, templates, h / "vms", None, cpus, memory)
    if gone := pool.sweep(still_lent(h / "vms")):  # an earlier factory's ready VMs go; those lent out serve on
        log.info("removed %d VMs an earlier factory left", gone)
    confine.sweep()  # the uids and cgroups of VMs that are gone (lent ones an earlier factory did not see end)
    lent: set[asyncio.Task[None]] = set()
    path = socket_path(root)
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    srv.bind(str(path))
    path.chmod(0o600)
    srv.listen(16)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool.fill()
    log.info("serving %s: %d VMs of %d vCPU, %d MiB, accelerator %s", path, size, cpus, memory, accel.name)

    async def accept() -> None:
        while True:
            conn, _ = await loop.sock_accept(srv)
            with conn:
                try:
                    await lend(pool, conn, lent)
                except (OSError, ValueError) as e:
                    log.warning("a request failed: %s", e)

    acceptor = asyncio.ensure_future(accept())
    try:
        await stop.wait()
    finally:
        acceptor.cancel()
        srv.close()
        path.unlink(missing_ok=True)
        await pool.close()
        # VMs lent out stay with their shims; their uids and cgroups are swept by the next factory or hyperd
        for t in lent:
            t.cancel()


async def lend(pool: Pool, conn: socket.socket, lent: set[asyncio.Task[None]]) -> None:
    loop = asyncio.get_running_loop()
    req = json.loads(await asyncio.wait_for(loop.sock_recv(conn, 4096), 2.0))
    if req.get("status"):
        await loop.sock_sendall(conn, json.dumps({"ready": len(pool.ready), "size": pool.size,
                                                  "lent": len(lent)}).encode())
        return
    if not pool.ready or (req.get("cpus"), req.get("memory")) != (pool.cpus, pool.memory):
        why = "none ready" if not pool.ready else f"its VMs are {pool.cpus} vCPU, {pool.memory} MiB"
        await loop.sock_sendall(conn, json.dumps({"none": why}).encode())
        pool.fill()
        return
    from ... import procs

    pid_of_peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    try:
        borrower = procs.Adopted(pid_of_peer)
    except OSError:  # gone already
        return
    slot = pool.ready.pop(0)

    pid = slot.machine.pid
    info = {"rundir": str(slot.rundir), "share_dir": str(slot.share_dir), "pid": pid,
            "start": procs.start_time(pid) if pid else None, "template": slot.template}
    (slot.rundir / LENT).touch()  # a factory started later leaves it alone while its QEMU runs
    ctl, io = await slot.agent.detach()
    try:
        conn.setblocking(True)
        socket.send_fds(conn, [json.dumps(info).encode()], [ctl.fileno(), io.fileno()])
    except OSError:
        await discard(pool, slot)  # the shim is gone: the VM goes too (its agent connection is ours no more)
        raise
    finally:
        ctl.close()
        io.close()
    log.info("lent VM %s (pid %s)", slot.rundir.name, pid)
    task = asyncio.ensure_future(reclaim(pool, slot, borrower))
    lent.add(task)
    task.add_done_callback(lent.discard)
    pool.fill()


def still_lent(vms: Path) -> set[Path]:
    """The directories of VMs an earlier factory lent whose QEMU still runs (a shim's container is in it)."""
    from ... import procs
    from ...pod.pool import VM_RECORD

    keep = set()
    for d in vms.iterdir() if vms.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec = json.loads((d / VM_RECORD).read_text())
            if (d / LENT).exists() and procs.adopt(rec["pid"], rec["start"], str(d)):
                keep.add(d)
    return keep


async def reclaim(pool: Pool, slot: Slot, borrower: Any) -> None:
    """Once the shim has stopped the lent VM, or has died without (then the VM is stopped here): its uid, cgroup
    and directory are freed."""
    waits = {asyncio.ensure_future(slot.machine.wait()), asyncio.ensure_future(borrower.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waits:
            t.cancel()
    if slot.machine.proc and slot.machine.proc.returncode is None:
        log.info("the borrower of VM %s (pid %s) is gone: the VM goes too", slot.rundir.name, borrower.pid)
    await discard(pool, slot)


async def discard(pool: Pool, slot: Slot) -> None:
    from ...errors import HCError
    from ...storage.volumes import remove_tree

    await slot.machine.stop(grace=0)
    with contextlib.suppress(HCError, OSError):
        remove_tree(slot.rundir)


def _ask(root: Path, req: dict[str, Any], timeout: float) -> tuple[bytes, list[int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path(root)))
        s.sendall(json.dumps(req).encode())
        msg, fds, _, _ = socket.recv_fds(s, 65536, 2)
    return msg, list(fds)


def status(root: Path, timeout: float = 2.0) -> dict[str, int] | None:
    """The factory's VMs: ready, size (kept ready) and lent (still running with their shims); None: not running."""
    try:
        msg, fds = _ask(root, {"status": True}, timeout)
    except OSError:
        return None
    for fd in fds:
        os.close(fd)
    return json.loads(msg or b"null")


def borrow(root: Path, cpus: int, memory: int, timeout: float = 2.0) -> tuple[dict[str, Any], list[int]] | None:
    """A shim's request (blocking: run it in a thread): the VM's description and the agent's two sockets (fds), or
    None if the factory has none of that size ready (or is not running)."""
    if not socket_path(root).exists():
        return None
    try:
        msg, fds = _ask(root, {"cpus": cpus, "memory": memory}, timeout)
    except OSError as e:
        log.info("no VM from the factory: %s", e)
        return None
    info = json.loads(msg or b"{}")
    if "none" in info or len(fds) != 2:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        log.info("no VM from the factory: %s", info.get("none", "no sockets"))
        return None
    return info, list(fds)
