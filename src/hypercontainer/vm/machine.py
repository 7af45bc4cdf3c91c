"""A running QEMU process and its QMP monitor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from qemu.qmp import QMPClient

from .. import procs
from ..errors import VMError
from . import confine, console
from .cgroups import Cgroup
from .qemu import AGENT_CHARDEVS, Sockets, VMConfig, command, socket_backend

log = logging.getLogger(__name__)
STATE_FD = "template-state"
IGNORE_SHARED = ("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})


class Machine:
    """One VM. start() returns once QEMU listens on its sockets; stop() always leaves no process behind."""

    def __init__(self, cfg: VMConfig) -> None:
        self.cfg = cfg
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.confinement: confine.Confinement | None = None  # what start() made for QEMU (uid, cgroup, jail)
        self._adopted: tuple[int | None, Cgroup | None] | None = None  # the same, of a VM taken over
        self._console: asyncio.Task[None] | None = None
        self.on_spawn: Callable[[], None] | None = None  # called as soon as QEMU exists: its owner records it
        # A VM another process started and lent (runv's factory): stop() stops it, the lender frees its uid and
        # cgroup once it has exited (freed twice, a uid could go to a second VM while the first still held it).
        self.lent = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, record: Path | None = None) -> None:
        """`record`: a file that gets QEMU's pid and start time as soon as it is spawned (who finds the file after
        a crash can tell that QEMU from a process that reused its pid)."""
        self.cfg = dataclasses.replace(self.cfg, jailed=True)
        sockets = self.cfg.sockets
        self.started_at = time.monotonic()
        vmm = confine.qemu(self.cfg)
        try:
            argv = command(self.cfg, vmm.handed)
            log.debug("qemu (uid %s): %s", vmm.uid, " ".join(argv))
            self.proc = await procs.spawn(argv, log=sockets.qemu_log, preexec=vmm.jail.preexec,
                                          pass_fds=vmm.pass_fds)
        except (OSError, subprocess.SubprocessError) as e:
            vmm.release()
            raise VMError(f"QEMU could not be started in its jail: {e}. {self.qemu_log_tail()}") from None
        except BaseException:  # no QEMU: its uid lease, cgroup and fds go now
            vmm.release()
            raise
        finally:
            vmm.close_parent_fds()
        self.confinement = vmm
        try:
            # Into its cgroup while it starts (the kernel takes ~10 ms for a move: in a thread, overlapped); QEMU
            # waits for the console's reader before the guest runs (wait=on), so the guest never runs outside it
            # and no boot message is lost.
            joined = asyncio.ensure_future(asyncio.to_thread(vmm.cgroup.add, self.proc.pid))
            joined.add_done_callback(lambda f: f.cancelled() or f.exception())  # awaited below unless QEMU failed
            vmm.started(self.proc.pid)
            if record:
                record.write_text(json.dumps({"pid": self.proc.pid, "start": procs.start_time(self.proc.pid)}))
            if self.on_spawn:
                self.on_spawn()
            await procs.wait_for_path(sockets.console_sock, self.proc, 10.0, "qemu")
            await joined
            reader, writer = await self._console_connect(sockets.console_sock)
            self._console = asyncio.ensure_future(console.relay(reader, writer, sockets.console, truncate=True))
            await procs.wait_for_path(sockets.ctl if self.cfg.with_ports else sockets.qmp, self.proc, 10.0, "qemu")
        except (RuntimeError, TimeoutError, OSError) as e:
            await self.stop(grace=0)
            raise VMError(f"QEMU did not start: {e}. {self.qemu_log_tail()}") from None
        except BaseException:
            await self.stop(grace=0)
            raise

    def qemu_log_tail(self) -> str:
        try:
            text = self.cfg.sockets.qemu_log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"QEMU said: {text[-800:]}" if text else ""

    def console_tail(self, lines: int = 20) -> str:
        return console.tail(self.cfg.sockets.console, lines)

    async def _console_connect(self, sock: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """console.connect, failing early if QEMU exits meanwhile."""
        assert self.proc
        task = asyncio.ensure_future(console.connect(sock))
        died = asyncio.ensure_future(self.proc.wait())
        try:
            done, _ = await asyncio.wait({task, died}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            raise RuntimeError(f"qemu exited with status {self.proc.returncode} before its console was read")
        finally:
            for t in (task, died):
                if not t.done():
                    t.cancel()

    async def _follow_console(self) -> None:
        """A VM taken over: read its console again (appending), and note its uid and cgroup for stop()."""
        if self.proc and self._adopted is None and self.confinement is None:
            self._adopted = confine.inspect(self.proc.pid)
        if self._console and not self._console.done():
            return
        try:
            reader, writer = await console.connect(self.cfg.sockets.console_sock, timeout=2.0)
        except (OSError, TimeoutError) as e:
            log.warning("console of %s not followed: %s", self.cfg.sockets.rundir.name, e)
            return
        self._console = asyncio.ensure_future(console.relay(reader, writer, self.cfg.sockets.console,
                                                            truncate=False))

    async def wait(self) -> int:
        assert self.proc
        return await self.proc.wait()

    async def qmp(self, command: str, args: Mapping[str, object] | None = None, timeout: float = 2.0) -> object:
        """One QMP command on a short-lived connection (QMP is used rarely: pause, resume, quit, takeover)."""
        return (await self.qmp_batch([(command, args)], timeout))[0]

    async def qmp_batch(self, commands: list[tuple[str, Mapping[str, object] | None]],
                        timeout: float = 2.0) -> list[object]:
        """Several QMP commands on one connection (QEMU serves one QMP client at a time)."""
        qmp = QMPClient(self.cfg.sockets.rundir.name)
        name = commands[0][0]
        try:
            await asyncio.wait_for(qmp.connect(str(self.cfg.sockets.qmp)), timeout)
            results = []
            for name, args in commands:
                results.append(await asyncio.wait_for(qmp.execute(name, args), timeout))
            return results
        except Exception as e:
            raise VMError(f"QMP {name} failed: {e or type(e).__name__}") from None
        finally:
            with contextlib.suppress(Exception):
                await qmp.disconnect()

    async def new_agent_sockets(self, sockets: Sockets) -> None:
        """Gives the agent's ports fresh listening sockets (QMP chardev-change). A hyperd taking a VM over needs
        this: QEMU can hold on to the dead hyperd's connections, unnoticed, and accept no new one until then."""
        await self.qmp_batch([("chardev-change", {"id": chardev, "backend": socket_backend(path)})
                              for chardev, path in zip(AGENT_CHARDEVS, (sockets.ctl, sockets.io), strict=True)],
                             timeout=5.0)
        self.cfg = dataclasses.replace(self.cfg, sockets=sockets)
        await self._follow_console()

    @contextlib.asynccontextmanager
    async def monitor(self, timeout: float = 2.0) -> AsyncIterator[QMPClient]:
        """One QMP connection for a sequence of commands (QEMU serves one QMP client at a time)."""
        qmp = QMPClient(self.cfg.sockets.rundir.name)
        try:
            await asyncio.wait_for(qmp.connect(str(self.cfg.sockets.qmp)), timeout)
            yield qmp
        except VMError:
            raise
        except Exception as e:
            raise VMError(f"QMP failed: {e or type(e).__name__}. {self.qemu_log_tail()}") from None
        finally:
            with contextlib.suppress(Exception):
                await qmp.disconnect()

    async def snapshot(self, state: Path, timeout: float = 60.0) -> None:
        """Pauses the VM and saves its device state to `state`; RAM in a shared file is left out (x-ignore-shared):
        the memory file and the state file together are a template."""
        async with self.monitor() as qmp:
            await qmp.execute("stop")
            await qmp.execute(*IGNORE_SHARED)
            await self._pass_fd(qmp, os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
            await qmp.execute("migrate", {"uri": f"fd:{STATE_FD}"})
            await self._migration_done(qmp, timeout)

    async def restore(self, state: Path, timeout: float = 30.0) -> None:
        """A VM started with `incoming`: loads a template's device state (its RAM is the template's memory file,
        mapped copy-on-write); it stays paused until resume().

        A clone's host connects to the agent's ports before it runs (restore, connect, resume()): the template
        was saved with its builder connected, and a clone resumed before its host connects is told "host gone",
        then "host back"; a guest that handles the first after the host's first bytes arrived drops them, and its
        VERSION or START_POD is never answered (2-7 % of clones started four at a time fell back to a cold boot
        that way). Connected first, the restored ports find the host as they were saved, and the guest is told
        nothing."""
        async with self.monitor() as qmp:
            await qmp.execute(*IGNORE_SHARED)
            await self._pass_fd(qmp, os.open(state, os.O_RDONLY | os.O_CLOEXEC))
            await qmp.execute("migrate-incoming", {"uri": f"fd:{STATE_FD}"})
            await self._migration_done(qmp, timeout)

    async def resume(self) -> None:
        """Runs a paused VM (`cont`)."""
        await self.qmp("cont")

    @staticmethod
    async def _pass_fd(qmp: QMPClient, fd: int) -> None:
        """Hands QEMU the state file as an open fd (SCM_RIGHTS + getfd): it opens nothing itself, and no shell."""
        try:
            qmp.send_fd_scm(fd)
            await qmp.execute("getfd", {"fdname": STATE_FD})
        finally:
            os.close(fd)

    async def _migration_done(self, qmp: QMPClient, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = await qmp.execute("query-migrate")
            status = status if isinstance(status, dict) else {}
            state = status.get("status")
            if state == "completed":
                return
            if state in ("failed", "cancelled") or time.monotonic() > deadline:
                why = status.get("error-desc", "")
                raise VMError(f"migration {state or 'timed out'}: {why} {self.qemu_log_tail()}")
            await asyncio.sleep(0.002)

    async def _qmp_quit(self) -> None:
        with contextlib.suppress(VMError):
            await self.qmp("quit", timeout=1.0)

    async def stop(self, grace: float = 2.0) -> None:
        """Waits up to `grace` for a guest-initiated power-off, then asks QMP to quit, then kills; then releases
        the VM's uid, cgroup and console reader."""
        if not self.proc:
            return
        if self.proc.returncode is None:
            if self.confinement is None and self._adopted is None and not self.lent:
                self._adopted = confine.inspect(self.proc.pid)
            if grace > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
            if self.proc.returncode is None:
                with contextlib.suppress(Exception):
                    await self._qmp_quit()
            await procs.stop(self.proc, grace=1.0)
        console, self._console = self._console, None  # taken at once: a second stop() meanwhile finds none
        if console:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(console), 1.0)
            console.cancel()
        # Removing a cgroup waits for the kernel (retries up to a second): off the event loop.
        if self.confinement:
            vmm, self.confinement = self.confinement, None
            await asyncio.to_thread(vmm.release)
        elif self._adopted:
            adopted, self._adopted = self._adopted, None
            await asyncio.to_thread(confine.release_pid, self.proc.pid, *adopted)
