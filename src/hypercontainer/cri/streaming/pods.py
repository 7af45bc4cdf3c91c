"""A Backend on hyperd's pod core: exec'd processes are the agent's ProcessStreams, an attachment is a subscription
to a container's output relay. The CRI layer gives it how to find a running container, whether a container's
stdin is StdinOnce, and how to reach a port in a sandbox (streaming/__init__.py's doc says how to wire it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ...errors import CommandNotRunnable, Conflict, VMError
from .backend import PortReader, PortWriter

if TYPE_CHECKING:
    from ...pod.container import Container
    from ...pod.pod import Pod
    from ...protocol.client import ProcessStreams

log = logging.getLogger(__name__)

Target = Callable[[str], "tuple[Pod, str]"]  # container id -> (its live pod, the pod core's container name)
Dial = Callable[[str, int], Awaitable[tuple[PortReader, PortWriter]]]  # (sandbox id, port) -> a connection


class ExecProcess:
    """A Process on an exec'd ProcessStreams."""

    def __init__(self, pod: Pod, proc: ProcessStreams) -> None:
        self.pod, self.proc = pod, proc
        self.stdout, self.stderr, self.exit = proc.stdout, proc.stderr, proc.exit

    async def write_stdin(self, data: bytes) -> None:
        await self.proc.write_stdin(data)

    async def close_stdin(self) -> None:
        await self.proc.close_stdin()

    async def resize(self, rows: int, cols: int) -> None:
        if self.proc.terminal:
            await self.pod.resize_stream(self.proc.stream, rows, cols)

    async def kill(self) -> None:
        await self.pod.signal_stream(self.proc.stream, signal.SIGKILL)

    async def close(self) -> None:
        self.proc.client.unregister(self.proc.stream)
        for q in (self.stdout, self.stderr):  # a put that waits on a full queue would hold the agent's channel
            while not q.empty():
                q.get_nowait()


class NotRunnable:
    """A command that could not be started (not found: 127, not executable: 126): docker's and hyperctl's answer,
    and ExecSync's here: why on stderr (on the terminal with a tty), that exit code."""

    def __init__(self, e: CommandNotRunnable, tty: bool) -> None:
        self.stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stderr: asyncio.Queue[bytes | None] = asyncio.Queue()
        message = e.message.encode() + (b"\r\n" if tty else b"\n")
        (self.stdout if tty else self.stderr).put_nowait(message)
        self.stdout.put_nowait(None)
        self.stderr.put_nowait(None)
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.exit.set_result(e.exit_code)

    async def write_stdin(self, data: bytes) -> None:
        return None

    async def close_stdin(self) -> None:
        return None

    async def resize(self, rows: int, cols: int) -> None:
        return None

    async def kill(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Attachment:
    """A Process on a running container: its output from now on (a subscription to its relay), its stdin."""

    def __init__(self, pod: Pod, container: Container, stdin_once: bool) -> None:
        self.pod, self.container, self.stdin_once = pod, container, stdin_once
        self.stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stderr: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._events = container.subscribe()
        self._pump = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            kind, payload = await self._events.get()
            if kind in ("stdout", "stderr") and isinstance(payload, bytes):
                (self.stdout if kind == "stdout" else self.stderr).put_nowait(payload)
            elif kind in ("exit", "error"):
                break
        self.stdout.put_nowait(None)
        self.stderr.put_nowait(None)
        if kind == "exit" and isinstance(payload, int):
            self.exit.set_result(payload)
        else:
            why = payload if isinstance(payload, str) else repr(payload)
            self.exit.set_exception(VMError(f"container {self.container.name}: {why}"))

    async def write_stdin(self, data: bytes) -> None:
        if self.container.streams:
            await self.container.streams.write_stdin(data)

    async def close_stdin(self) -> None:
        if self.stdin_once and self.container.streams:
            await self.container.streams.close_stdin()

    async def resize(self, rows: int, cols: int) -> None:
        await self.pod.resize(self.container.name, rows, cols)

    async def kill(self) -> None:
        return None  # never called: a client that leaves an attachment does not stop the container

    async def close(self) -> None:
        self.container.unsubscribe(self._events)
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        if not self.exit.done():
            self.exit.cancel()


class PodBackend:
    """The Backend for hyperd's CRI: `target` finds a running container (RuntimeService.target), `stdin_once`
    tells whether its config said StdinOnce, `dial` connects to a port in a sandbox."""

    def __init__(self, target: Target, stdin_once: Callable[[str], bool], dial: Dial) -> None:
        self.target, self.stdin_once, self.dial = target, stdin_once, dial

    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: bool) -> ExecProcess | NotRunnable:
        pod, name = self.target(container_id)
        try:
            return ExecProcess(pod, await pod.exec(name, cmd, tty=tty, stdin=stdin))
        except CommandNotRunnable as e:
            return NotRunnable(e, tty)

    async def attach(self, container_id: str, tty: bool, stdin: bool) -> Attachment:
        pod, name = self.target(container_id)
        c = pod.container(name)
        if stdin and not c.spec.stdin:
            raise Conflict(f"container {container_id} was created without stdin (its config's stdin is false)")
        return Attachment(pod, c, self.stdin_once(container_id))

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[PortReader, PortWriter]:
        return await self.dial(sandbox_id, port)
