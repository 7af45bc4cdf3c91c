"""The per-container shim: the host process that stands in for the container's process.

`runv create` starts it (it inherits the caller's stdio, and the caller's subreaper adopts it once runv exits);
its pid goes into the pid file. It boots the container's VM with the same pod core as hyperd (from a VM template
when one exists), reports "created", waits on its socket for `start`, relays stdio (or a pty handed to the
console socket), forwards signals and window size, serves `kill`, `exec`, `pause`, `resume`, and exits with the
container's exit code once the container is done and the VM is gone.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import termios
import tty
from pathlib import Path

from ... import procs
from ...config import paths
from ...errors import HCError
from ...guest import assets as guest_assets
from ...image.store import Image
from ...pod.container import Container
from ...pod.pod import GuestAssets, Pod
from ...pod.states import PodState
from ...pod.templates import Templates
from ...protocol.client import ProcessStreams
from ...spec import oci
from ...spec.pod import MIN_MEMORY_MIB, PodSpec
from ...vm.accel import detect
from . import wire
from .fdio import read_chunks, write_all
from .state import Store, now_rfc3339

log = logging.getLogger("runv-shim")
CONTAINER = "ctr"
FORWARDED = [s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGPIPE,
                                                   signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP,
                                                   signal.SIGCONT, signal.SIGURG)]
UNLIMITED = 2**64 - 1
MAX_FILE = 1 << 20


def process_fields(cfg: oci.Config) -> dict:
    """NEW_CONTAINER/EXEC fields from an OCI process."""
    p = cfg.process
    assert p
    return {"arg": p.args, "env": p.env, "cwd": p.cwd or "/", "uid": p.user.uid, "gid": p.user.gid,
            "group": p.user.additional_gids, "terminal": int(p.terminal), "stdin": 1,
            "readonly": int(cfg.root.readonly),
            "rlimit": [f"{oci.RLIMIT_NAMES[r.type]}:{-1 if r.soft >= UNLIMITED else r.soft}:"
                       f"{-1 if r.hard >= UNLIMITED else r.hard}" for r in p.rlimits]}


def vm_size(cfg: oci.Config) -> dict:
    """The VM's size from linux.resources (memory limit + what the guest itself needs; CPU quota / period)."""
    res = cfg.linux.get("resources") or {}
    out = {}
    limit = (res.get("memory") or {}).get("limit")
    if isinstance(limit, int) and limit > 0:
        out["memory"] = min(65536, max(256, limit // (1 << 20) + 64))
    cpu = res.get("cpu") or {}
    if isinstance(cpu.get("quota"), int) and cpu["quota"] > 0 and cpu.get("period"):
        out["vcpu"] = min(64, max(1, -(-cpu["quota"] // cpu["period"])))
    return out


def pod_spec(cid: str, cfg: oci.Config) -> PodSpec:
    """Bind-mounted directories become host volumes, files (hosts, resolv.conf, hostname, ...) are copied in,
    tmpfs mounts become guest tmpfs volumes."""
    volumes, mounts, files = [], [], []
    for i, m in enumerate(oci.bind_mounts(cfg)):
        src = Path(m.source or "")
        if src.is_dir():
            volumes.append({"name": f"b{i}", "host_path": str(src)})
            mounts.append({"name": f"b{i}", "path": m.destination, "readonly": "ro" in m.options})
        elif src.is_file() and src.stat().st_size <= MAX_FILE:
            files.append({"path": m.destination, "base64": base64.b64encode(src.read_bytes()).decode(),
                          "mode": src.stat().st_mode & 0o7777})
    for i, m in enumerate(oci.tmpfs_mounts(cfg)):
        volumes.append({"name": f"t{i}", "empty_dir": True})
        mounts.append({"name": f"t{i}", "path": m.destination, "readonly": "ro" in m.options})
    p = cfg.process
    assert p
    spec: dict = {"name": "runv", "network": "none", "boot": "template", "volumes": volumes,
                  "containers": [{"name": CONTAINER, "image": "oci-bundle", "tty": p.terminal, "stdin": True,
                                  "readonly": cfg.root.readonly, "volumes": mounts, "files": files}]}
    if cfg.hostname and len(cfg.hostname) <= 63 and cfg.hostname.replace("-", "").isalnum():
        spec["hostname"] = cfg.hostname.lower()
    size = vm_size(cfg)
    if size:
        spec["resources"] = {"memory": max(MIN_MEMORY_MIB, size.get("memory", 256)), "vcpu": size.get("vcpu", 1)}
    return PodSpec.model_validate(spec)


class Shim:
    def __init__(self, store: Store, cid: str, bundle: Path, console_socket: Path | None) -> None:
        self.store, self.cid, self.bundle, self.console_socket = store, cid, bundle, console_socket
        self.pod: Pod | None = None
        self.container: Container | None = None
        self.state: dict = {}
        self.pty: tuple[int, int] | None = None  # (master, slave): the master went to the console socket
        self.exit_code = 255
        self.started = asyncio.Event()
        self._tasks: set[asyncio.Future] = set()
        self.relay_task: asyncio.Future | None = None
        self.server: asyncio.AbstractServer | None = None

    def spawn(self, aw) -> None:
        t = asyncio.ensure_future(aw)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---- create ------------------------------------------------------------------------------------------
    async def create(self) -> None:
        cfg = oci.load(self.bundle)
        for what in oci.unsupported(cfg):
            log.warning("not supported, ignored: %s", what)
        p = paths()
        a = await asyncio.to_thread(guest_assets.ensure, p.assets)
        accel = await detect(a.kernel, a.initrd, a.digest, p.assets / "accel.json")
        templates = Templates(a.kernel, a.initrd, accel.name, a.digest, p.assets / "templates",
                              self.store.rundir(self.cid) / "templates")
        spec = pod_spec(self.cid, cfg)
        root = oci.root_path(self.bundle, cfg)
        if not root.is_dir():
            raise HCError(f"root {root} is not a directory")
        image = Image(id="oci-bundle", refs=(), repo_digests=(), config={}, diff_ids=(), blobs=(), layers=(),
                      size=0, created="")
        statedir = self.store.dir(self.cid) / "pod"
        self.container = Container(spec.containers[0], image, stream=2, log_path=statedir / "logs" / "ctr.log",
                                   fields=process_fields(cfg), rootfs=root)
        (statedir / "logs").mkdir(parents=True, exist_ok=True)
        self.pod = Pod(self.cid, self.cid[:63], spec, [self.container], statedir, self.store.rundir(self.cid),
                       GuestAssets(a.kernel, a.initrd, accel.name), None, templates, "template")
        if cfg.process and cfg.process.terminal:
            self.open_console(cfg)
        await self.pod.start(start_containers=False)
        vm = self.pod.runtime()
        self.state = {"id": self.cid, "bundle": str(self.bundle), "rootfs": str(root), "status": "created",
                      "pid": os.getpid(), "pid_start": procs.start_time(os.getpid()), "created_rfc3339": now_rfc3339(),
                      "annotations": cfg.annotations, "vm_pid": vm["vm_pid"], "vm_start": vm["vm_start"],
                      "booted_from": self.pod.booted_from}
        self.store.save(self.cid, self.state)

    def open_console(self, cfg: oci.Config) -> None:
        """A host pty: the master goes to the console socket, the shim keeps the slave as the container's
        terminal (raw; its window size is forwarded to the guest's pty)."""
        if not self.console_socket:
            raise HCError("the process wants a terminal but no --console-socket was given")
        master, slave = os.openpty()
        tty.setraw(slave)
        size = cfg.process.console_size if cfg.process else None
        if size and size.height and size.width:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.console_socket))
            s.sendmsg([b"/dev/pts/runv"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])
        os.close(master)
        with contextlib.suppress(OSError):  # the slave as our controlling terminal: SIGWINCH reaches us
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        self.pty = (-1, slave)

    # ---- serving -----------------------------------------------------------------------------------------
    async def listen(self) -> None:
        """The socket runv's start, kill, exec, pause and resume talk to (listening before create returns)."""
        self.server = await asyncio.start_unix_server(self.on_client, path=str(self.store.sock(self.cid)))

    async def serve(self) -> int:
        assert self.pod and self.container and self.server
        server = self.server
        loop = asyncio.get_running_loop()
        for sig in FORWARDED:
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                loop.add_signal_handler(sig, self.forward_signal, int(sig))
        if self.pty:
            loop.add_signal_handler(signal.SIGWINCH, self.resize)
        try:
            await self.container.done.wait()
            self.exit_code = self.container.exit_code if self.container.exit_code is not None else 255
            if self.relay_task:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.relay_task, 5)
            await self.pod.stop()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.store.sock(self.cid).unlink()
            self.state.update(status="stopped", exit_code=self.exit_code)
            with contextlib.suppress(OSError):
                self.store.save(self.cid, self.state)
        return self.exit_code

    def forward_signal(self, sig: int) -> None:
        if self.pod and self.started.is_set():
            self.spawn(self.signal(sig))

    async def signal(self, sig: int) -> None:
        assert self.pod
        with contextlib.suppress(HCError):
            await self.pod.signal(CONTAINER, sig)

    def resize(self) -> None:
        if self.pty and self.pod:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.pty[1], termios.TIOCGWINSZ, b"\0" * 8))
            self.spawn(self.pod.resize(CONTAINER, rows, cols))

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            req = json.loads(line or b"{}")
            op = req.get("op")
            if op == "exec":
                await self.exec(req, reader, writer)
                return
            reply = await self.handle(op, req)
        except HCError as e:
            reply = {"ok": False, "error": e.message}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    async def handle(self, op: str | None, req: dict) -> dict:
        assert self.pod and self.container
        if op == "start":
            if self.started.is_set():
                raise HCError("container already started")
            events = self.container.subscribe()  # before the process runs: no output is missed
            try:
                await self.pod.start_created(CONTAINER)
            except BaseException:
                self.container.unsubscribe(events)
                raise
            self.started.set()
            self.relay_task = asyncio.ensure_future(self.relay_init(events))
            self.state["status"] = "running"
            self.store.save(self.cid, self.state)
            return {"ok": True}
        if op == "kill":
            if self.container.done.is_set() or self.pod.state not in (PodState.RUNNING, PodState.PAUSED):
                raise HCError("container not running")
            sig = int(req["signal"])
            if not self.started.is_set():  # killing a created container: it never runs
                self.container.finish(128 + sig, "killed before start")
                return {"ok": True}
            await self.pod.signal(CONTAINER, sig)
            return {"ok": True}
        if op in ("pause", "resume"):
            await (self.pod.pause() if op == "pause" else self.pod.unpause())
            self.state["status"] = "paused" if op == "pause" else "running"
            self.store.save(self.cid, self.state)
            return {"ok": True}
        raise HCError(f"unknown request {op!r}")

    # ---- stdio -------------------------------------------------------------------------------------------
    async def relay_init(self, events: asyncio.Queue) -> None:
        """The container's output (as the pod core publishes it) to the shim's own fds or the pty's slave; the
        shim's stdin (or what is typed on the terminal) to the container."""
        assert self.container and self.container.streams
        out_fd, err_fd, in_fd = (self.pty[1],) * 3 if self.pty else (1, 2, 0)
        stdin = asyncio.ensure_future(pump_stdin(self.container.streams, in_fd, closes=not self.pty))
        try:
            while True:
                kind, data = await events.get()
                if kind not in ("stdout", "stderr"):
                    return
                await write_all(out_fd if kind == "stdout" else err_fd, data)  # type: ignore[arg-type]
        finally:
            stdin.cancel()

    async def exec(self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.pod
        p = req["process"]
        user = p.get("user") or {}
        fields = {"arg": p["args"], "env": p.get("env") or [], "cwd": p.get("cwd") or "/",
                  "uid": user.get("uid", 0), "gid": user.get("gid", 0), "group": user.get("additionalGids") or []}
        try:
            streams = await self.pod.exec_fields(CONTAINER, fields, tty=bool(p.get("terminal")))
        except HCError as e:
            writer.write(json.dumps({"ok": False, "error": e.message}).encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        writer.write(json.dumps({"ok": True}).encode() + b"\n")
        await writer.drain()
        await relay_socket(streams, reader, writer, self.pod)


async def pump_out(queue: asyncio.Queue, write) -> None:
    while (chunk := await queue.get()) is not None:
        await write(chunk)


async def pump_stdin(streams: ProcessStreams, fd: int, closes: bool) -> None:
    """Local input to a guest process; EOF closes its stdin (a terminal's never ends)."""
    async for data in read_chunks(fd):
        await streams.write_stdin(data)
    if closes:
        await streams.close_stdin()


async def relay_socket(streams: ProcessStreams, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       pod: Pod) -> None:
    """An exec's stdio as frames on the runv exec's connection."""

    async def send(kind: int, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(wire.frame(kind, data))
            await writer.drain()

    async def from_client() -> None:
        while (f := await wire.read_frame(reader)) is not None:
            kind, data = f
            if kind == wire.STDIN:
                if data:
                    await streams.write_stdin(data)
                else:
                    await streams.close_stdin()
            elif kind == wire.RESIZE and len(data) == 4:
                rows, cols = struct.unpack(">HH", data)
                await pod.resize_stream(streams.stream, rows, cols)
            elif kind == wire.SIGNAL and len(data) == 4:
                await pod.signal_stream(streams.stream, struct.unpack(">i", data)[0])

    client = asyncio.ensure_future(from_client())
    await asyncio.gather(pump_out(streams.stdout, lambda d: send(wire.STDOUT, d)),
                         pump_out(streams.stderr, lambda d: send(wire.STDERR, d)))
    status = await streams.exit
    await send(wire.EXIT, struct.pack(">i", status))
    client.cancel()
    with contextlib.suppress(ConnectionError):
        writer.close()


async def amain(args: argparse.Namespace) -> int:
    store = Store(Path(args.root))
    shim = Shim(store, args.id, Path(args.bundle), Path(args.console_socket) if args.console_socket else None)
    store.rundir(args.id).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        await shim.create()
        await shim.listen()
    except BaseException as e:
        msg = e.message if isinstance(e, HCError) else f"{type(e).__name__}: {e}"
        log.error("create failed: %s", msg)
        if shim.pod:
            with contextlib.suppress(Exception):
                await shim.pod.teardown()
        with contextlib.suppress(OSError):
            os.write(args.status_fd, f"error {msg}\n".encode())
        return 1
    os.write(args.status_fd, b"ok\n")
    os.close(args.status_fd)
    return await shim.serve()


def main() -> None:
    ap = argparse.ArgumentParser(prog="runv-shim")
    ap.add_argument("--root", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--console-socket")
    ap.add_argument("--status-fd", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = asyncio.run(amain(args))
    sys.exit(code)


if __name__ == "__main__":
    main()
