"""A running QEMU process and its QMP monitor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from qemu.qmp import QMPClient

from .. import procs
from ..errors import VMError
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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, record: Path | None = None) -> None:
        """`record`: a file that gets QEMU's pid and start time as soon as it is spawned (who finds the file after
        a crash can tell that QEMU from a process that reused its pid)."""
        argv = command(self.cfg)
        log.debug("qemu: %s", " ".join(argv))
        self.started_at = time.monotonic()
        self.proc = await procs.spawn(argv, log=self.cfg.sockets.qemu_log)
        if record:
            record.write_text(json.dumps({"pid": self.proc.pid, "start": procs.start_time(self.proc.pid)}))
        wait_on = self.cfg.sockets.ctl if self.cfg.with_ports else self.cfg.sockets.qmp
        try:
            await procs.wait_for_path(wait_on, self.proc, 10.0, "qemu")
        except (RuntimeError, TimeoutError) as e:
            await self.stop(grace=0)
            raise VMError(f"QEMU did not start: {e}. {self.qemu_log_tail()}") from None

    def qemu_log_tail(self) -> str:
        try:
            text = self.cfg.sockets.qemu_log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"QEMU said: {text[-800:]}" if text else ""

    def console_tail(self, lines: int = 20) -> str:
        try:
            text = self.cfg.sockets.console.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait(self) -> int:
        assert self.proc
        return await self.proc.wait()

    async def qmp(self, command: str, args: dict | None = None, timeout: float = 2.0) -> object:
        """One QMP command on a short-lived connection (QMP is used rarely: pause, resume, quit, takeover)."""
        return (await self.qmp_batch([(command, args)], timeout))[0]

    async def qmp_batch(self, commands: list[tuple[str, dict | None]], timeout: float = 2.0) -> list[object]:
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

    @contextlib.asynccontextmanager
    async def monitor(self, timeout: float = 2.0):
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
        mapped copy-on-write) and runs it."""
        async with self.monitor() as qmp:
            await qmp.execute(*IGNORE_SHARED)
            await self._pass_fd(qmp, os.open(state, os.O_RDONLY | os.O_CLOEXEC))
            await qmp.execute("migrate-incoming", {"uri": f"fd:{STATE_FD}"})
            await self._migration_done(qmp, timeout)
            await qmp.execute("cont")

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
        """Waits up to `grace` for a guest-initiated power-off, then asks QMP to quit, then kills."""
        if not self.proc or self.proc.returncode is not None:
            return
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._qmp_quit()
        await procs.stop(self.proc, grace=1.0)
