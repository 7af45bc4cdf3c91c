"""runv's factory (Kata's VM cache, and shims started ahead): `runv factory` keeps a few VMs and a few warm shims
ready for one runv root, so that a container's start resumes a VM instead of restoring one (~0.15 s of QEMU start
and restore, and the TCG translation of a container's set-up under emulation, paid before any container asks), and
`runv create` takes a shim whose interpreter and imports are done (~0.2 s; WarmShims, standin.py).

The VMs are hyperd's pool VMs (pod/pool.py): restored from the template, agent connected, share mounted, one
throwaway container run (an engine's: warmup_fields()), paused. They have no NIC (a microvm takes none later), so
they serve containers whose VM boots without one: a network namespace of their own that is still empty at `create`
(`--network none`); others boot from the template as before. A shim asks over a unix socket (SOCK_SEQPACKET, one
JSON request, one reply with the agent's two connected sockets as SCM_RIGHTS); the factory hands the VM over and
forgets the connection. The shim owns the VM from then on (its Machine is `lent`: it stops QEMU); the factory, whose
child QEMU stays, frees the VM's uid, cgroup and directory once QEMU has exited, and refills. A shim that dies first
(kill -9) takes its VM with it: the factory watches the borrower (its pid from the socket's credentials) and stops
that VM. A factory started again removes the ready VMs of the last one and leaves the ones it lent alone while they
run.

The VMs' share directories live in the factory's mount namespace (pinned like hyperd's, storage/mountns.py), and
the shims of this root join it instead of making one of their own: what a shim mounts in a lent VM's share (the
bundle's root, its volumes) must reach that VM's 9p server, whose jail is a slave copy of the factory's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import environment
from ...storage import mountns
from .factory_client import borrow, home, pin_dir, socket_path, status, warm_shim

__all__ = ["borrow", "home", "pin_dir", "run", "socket_path", "status", "warm_shim"]

if TYPE_CHECKING:
    from ...pod.pool import Pool
    from ...pod.slot import Slot

log = logging.getLogger("runv-factory")
LENT = "lent"  # in a VM's directory once a shim has it
REFILL_DELAY = 1.0  # seconds: see refill_later()


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
    pool = Pool(size, templates, h / "vms", None, cpus, memory, warmup_fields())
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
    shims = WarmShims(root, size, pool, lent)
    shims.fill()
    log.info("serving %s: %d VMs of %d vCPU, %d MiB, accelerator %s", path, size, cpus, memory, accel.name)

    async def accept() -> None:
        while True:
            conn, _ = await loop.sock_accept(srv)
            with conn:
                try:
                    req = json.loads(await asyncio.wait_for(loop.sock_recv(conn, 4096), 2.0))
                    if req.get("status"):
                        await loop.sock_sendall(conn, json.dumps({
                            "ready": len(pool.ready), "size": pool.size, "lent": len(lent),
                            "shims": len(shims.ready)}).encode())
                    elif req.get("shim"):
                        await shims.hand_out(conn)
                    else:
                        await lend(pool, conn, req, lent)
                except (OSError, ValueError) as e:
                    log.warning("a request failed: %s", e)

    acceptor = asyncio.ensure_future(accept())
    try:
        await stop.wait()
    finally:
        acceptor.cancel()
        shims.close()
        srv.close()
        path.unlink(missing_ok=True)
        await pool.close()
        # VMs lent out stay with their shims; their uids and cgroups are swept by the next factory or hyperd
        for t in lent:
            t.cancel()


class WarmShims:
    """Shims started ahead (shim.warm()), their imports done: `runv create` takes one instead of starting a
    Python process of its own (~0.2 s of interpreter and imports). Each is a child of ours in a session of its
    own, connected by a socket pair; a shim handed out is lent a ready VM over it first (as lend() lends one),
    then that socket's other end is passed on to the caller, which talks to it directly from then on. Those
    still waiting exit when their socket closes (factory stopped)."""

    def __init__(self, root: Path, size: int, pool: Pool, lent: set[asyncio.Task[None]]) -> None:
        self.root, self.size, self.pool, self.lent = root, size, pool, lent
        self.ready: list[tuple[subprocess.Popen[bytes], socket.socket]] = []
        self.starting = 0
        self.tasks: set[asyncio.Future[None]] = set()

    def fill(self) -> None:
        for _ in range(self.size - len(self.ready) - self.starting):
            self.starting += 1
            t = asyncio.ensure_future(self.start_one())
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def start_one(self) -> None:
        import sys

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "hypercontainer.cli.runv.shim", "--root", str(self.root),
                                     "--warm-fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self.starting -= 1
            ours.close()
            log.warning("cannot start a warm shim: %s", e)
            return
        finally:
            theirs.close()
        self.reap(proc)
        ours.setblocking(False)
        try:
            said = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(ours, 16), 30)
        except OSError:  # TimeoutError too
            said = b""
        finally:
            self.starting -= 1
        if said != b"ready":
            log.warning("a warm shim (pid %d) did not start", proc.pid)
            ours.close()
            proc.kill()
            return
        self.ready.append((proc, ours))

    def reap(self, proc: subprocess.Popen[bytes]) -> None:
        """Waits for the shim's exit (its pidfd), whoever it serves by then: no zombie is left."""
        from ... import procs

        watch = procs.Adopted(proc.pid)

        async def wait() -> None:
            await watch.wait()
            proc.wait()

        t = asyncio.ensure_future(wait())
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def hand_out(self, conn: socket.socket) -> None:
        while self.ready and self.ready[0][0].poll() is not None:  # exited while waiting
            self.ready.pop(0)[1].close()
        if not self.ready:
            await asyncio.get_running_loop().sock_sendall(conn, json.dumps({"none": "no warm shim ready"}).encode())
            self.fill()
            return
        proc, ours = self.ready.pop(0)
        try:
            if self.pool.ready:  # a VM of the default size along with it: it boots no slower than one that asks
                with contextlib.suppress(OSError):
                    await lend_to(self.pool, ours, proc.pid, self.lent)
            conn.setblocking(True)
            socket.send_fds(conn, [json.dumps({"pid": proc.pid}).encode()], [ours.fileno()])
        finally:
            ours.close()  # the caller's now (or, if it was gone, the shim's socket is closed: it exits)
            refill_later(self.fill)
        log.info("handed out warm shim %d", proc.pid)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for _, ours in self.ready:
            ours.close()
        self.ready.clear()


async def lend(pool: Pool, conn: socket.socket, req: dict[str, Any], lent: set[asyncio.Task[None]]) -> None:
    """A shim's request for a VM of a size."""
    loop = asyncio.get_running_loop()
    if not pool.ready or (req.get("cpus"), req.get("memory")) != (pool.cpus, pool.memory):
        why = "none ready" if not pool.ready else f"its VMs are {pool.cpus} vCPU, {pool.memory} MiB"
        await loop.sock_sendall(conn, json.dumps({"none": why}).encode())
        pool.fill()
        return
    pid_of_peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    await lend_to(pool, conn, pid_of_peer, lent)


async def lend_to(pool: Pool, conn: socket.socket, borrower_pid: int, lent: set[asyncio.Task[None]]) -> None:
    """The first ready VM to the shim `borrower_pid`, over `conn`: its description and the agent's two sockets; the
    VM is reclaimed once it has stopped or the shim is gone."""
    from ... import procs

    try:
        borrower = procs.Adopted(borrower_pid)
    except OSError:  # gone already
        return
    slot = pool.ready.pop(0)
    pid = slot.machine.pid
    info = {"rundir": str(slot.rundir), "share_dir": str(slot.share_dir), "pid": pid,
            "start": procs.start_time(pid) if pid else None, "template": slot.template, "cpus": pool.cpus,
            "memory": pool.memory}
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
    refill_later(pool.fill)


def refill_later(fill: Callable[[], None]) -> None:
    """A refill after a hand-out, REFILL_DELAY later: its CPU (a QEMU's restore and warm-up, a warm shim's start;
    ~0.3 s under TCG) would compete with the container that just took what was ready."""
    asyncio.get_running_loop().call_later(REFILL_DELAY, fill)


ENGINE_SECCOMP = Path("/usr/share/containers/seccomp.json")  # podman's and CRI-O's default profile, where installed
# What an engine's config.json gives a container (podman's defaults): the warm-up container's (warmup_fields())
ENGINE_CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.2", "root": {"path": "rootfs"},
    "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/usr/bin:/bin"],
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "capabilities": {k: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
                                     "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
                                     "CAP_SETUID", "CAP_SYS_CHROOT"]
                                 for k in ("bounding", "effective", "permitted")}},
    "linux": {"maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                              "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
              "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                "/proc/sysrq-trigger"]}}


def warmup_fields() -> dict[str, Any] | None:
    """NEW_CONTAINER's fields for the pool VMs' throwaway container (slot.warm_up()): an engine's container, with
    the default seccomp profile where the host has one, so that under TCG the guest code a container's set-up
    runs (its filter, masked paths, capabilities, held then started) is translated before a container needs it
    (~30 ms of each runv container's create). None (a bare throwaway container) if that cannot be compiled."""
    from ...errors import HCError
    from ...spec import oci
    from .shim import oci_fields

    cfg = {**ENGINE_CONFIG, "linux": dict(ENGINE_CONFIG["linux"])}
    with contextlib.suppress(OSError, ValueError):
        cfg["linux"]["seccomp"] = json.loads(ENGINE_SECCOMP.read_text())
    try:
        fields = oci_fields(oci.Config.model_validate(cfg))
    except (HCError, ValueError) as e:
        log.warning("the warm-up container is a bare one: %s", e)
        return None
    return {k: v for k, v in fields.items() if k not in ("arg", "stdin")}


def still_lent(vms: Path) -> set[Path]:
    """The directories of VMs an earlier factory lent whose QEMU still runs (a shim's container is in it)."""
    from ... import procs
    from ...pod.slot import VM_RECORD

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


