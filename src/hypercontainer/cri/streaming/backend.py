"""What the streaming server needs from the runtime: the CRI layer implements Backend on the pod manager.

The server calls the Backend only once a client has connected to a URL and opened its streams, so a URL that was
never used starts nothing. Every Process it receives it ends with close(), whatever happened.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Process(Protocol):
    """One exec'd process, or one attachment to a container's main process (a ProcessStreams-like object).

    stdout, stderr: output chunks, None at the end (a tty's stderr is None at once). The server reads both queues
        to their None even when the client asked for neither, or has gone away, so a full queue never holds up the
        guest's stream channel; it stops reading only after close() returned.
    exit: the exit status, 0-255 (128+N for a signal, the docker convention). For an attachment: set when the
        container exits (its value is not reported: the kubelet reports attach as plain success). An exception
        set on it (the VM went away) is reported to the client as an internal error.
    """

    stdout: asyncio.Queue[bytes | None]
    stderr: asyncio.Queue[bytes | None]
    exit: asyncio.Future[int]

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None:
        """The client's stdin ended. exec: close the process's stdin (EOF). attach: close the container's stdin
        only if its config says StdinOnce (the kubelet's rule); otherwise nothing."""

    async def resize(self, rows: int, cols: int) -> None:
        """The client's terminal size (tty sessions only; the first one arrives right after the start)."""

    async def kill(self) -> None:
        """exec only: the client went away while the process ran, and it did not exit within the grace period
        after its stdin was closed: end it (SIGKILL) so it does not outlive its session. Never called for an
        attachment: a client that detaches never stops the container."""

    async def close(self) -> None:
        """The session is over (always called once, last): drop what was registered for it (the agent's stream,
        an attachment's subscription). Must not raise."""


class PortReader(Protocol):
    """asyncio.StreamReader is one."""

    async def read(self, n: int = -1) -> bytes: ...


class PortWriter(Protocol):
    """asyncio.StreamWriter is one."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Backend(Protocol):
    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: bool) -> Process:
        """Start cmd in the running container. stdin=False: the process gets no stdin (EOF at once). Raise (any
        exception; its text reaches the client) when it cannot be started; a command that is not found may instead
        be a Process that writes why to stderr and exits 127 (126: not executable), as docker and hyperctl do."""
        ...

    async def attach(self, container_id: str, tty: bool, stdin: bool) -> Process:
        """Attach to the container's main process: its output from now on, and its stdin when stdin=True (raise
        if the container was created without stdin and stdin=True)."""
        ...

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[PortReader, PortWriter]:
        """A TCP connection to `port` in the sandbox's network namespace (its localhost). Raise if refused."""
        ...
