"""Every child process (qemu, virtiofsd, helpers) is started and stopped here.

Stopping is a parameter: a signal, a grace period, then SIGKILL; the child is always reaped, also when the
caller is cancelled.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .errors import VMError

TYPE_CHECKING = False  # `typing` costs each runv call ~6-19 ms of imports
if TYPE_CHECKING:
    import asyncio

# asyncio (and subprocess) are imported where used: runv's short-lived verbs read start_time() and adopt() without
# them.


async def spawn(argv: list[str], *, log: Path | None = None, new_session: bool = True,
                preexec: Callable[[], None] | None = None,
                pass_fds: tuple[int, ...] = ()) -> asyncio.subprocess.Process:
    """Starts argv with stdin from /dev/null and output appended to `log` (or discarded). `preexec` runs in the
    child before exec (vm/jail.py: system calls prepared in the parent); `pass_fds` are inherited."""
    import asyncio
    import subprocess  # here: runv's verbs read start_time() and adopt() without its ~2 ms of imports

    out = open(log, "ab") if log else open(os.devnull, "wb")  # noqa: SIM115 - handed to the child
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=new_session,
            preexec_fn=preexec,
            pass_fds=pass_fds,
        )
    except subprocess.SubprocessError:  # preexec failed in the child: the jail wrote which step to the log
        said = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.exists() else []
        raise VMError(f"{Path(argv[0]).name} could not be confined: {said[0] if said else 'its set-up failed'}") \
            from None
    finally:
        out.close()


async def stop(proc: asyncio.subprocess.Process | Adopted, sig: int = signal.SIGTERM, grace: float = 3.0) -> int:
    """Signals the child, waits `grace` seconds, then kills it. Returns its exit status."""
    import asyncio

    if proc.returncode is not None:
        return proc.returncode
    try:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except TimeoutError:
            pass
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    return proc.returncode  # type: ignore[return-value]


async def wait_for_path(path: Path, proc: asyncio.subprocess.Process, timeout: float, what: str) -> None:
    """Waits until `path` exists (a socket the child creates); fails early if the child dies."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before creating {path}")
        if loop.time() > deadline:
            raise TimeoutError(f"{what} did not create {path} within {timeout:.0f} s")
        await asyncio.sleep(0.002)


def with_arg(needle: bytes) -> list[int]:
    """The processes whose command line holds `needle` (the VMs a dead hyperd left, found by their paths)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if needle in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_and_wait(pids: list[int], timeout: float = 3.0) -> None:
    """SIGKILL to each, then until they are gone (reaped by whoever is their parent now) or `timeout` passed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}/cmdline").exists() and Path(f"/proc/{p}/cmdline").read_bytes()]
        if pids:
            time.sleep(0.02)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, it names
    one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Adopted:
    """A process this daemon did not start (a VM left running by an earlier hyperd or a dead runv shim), with the
    parts of asyncio.subprocess.Process the rest of the code uses. Its pidfd is opened at once (signals reach
    this process, never one that reused its pid); exit is watched through it once something awaits wait(), so
    it works without a running event loop too (runv's synchronous verbs). The exit status of a process that is
    not our child cannot be known, so it reads as 0."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd: int | None = os.pidfd_open(pid)
        self._exited: asyncio.Future[None] | None = None

    def _on_exit(self) -> None:
        import asyncio

        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._close()
        if self._exited and not self._exited.done():
            self._exited.set_result(None)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.returncode = 0

    async def wait(self) -> int:
        import asyncio

        if self.returncode is not None:
            return 0
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            assert self._fd is not None
            loop.add_reader(self._fd, self._on_exit)
        await asyncio.shield(self._exited)
        return 0

    def wait_blocking(self, timeout: float) -> bool:
        """Waits without an event loop (runv); whether the process is gone."""
        if self.returncode is not None or self._fd is None:
            return True
        if select.select([self._fd], [], [], timeout)[0]:
            self._close()
            return True
        return False

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and self._fd is not None:
            signal.pidfd_send_signal(self._fd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def adopt(pid: int | None, expected_start: int | None, marker: str) -> Adopted | None:
    """The process `pid` if it is still the one we started (same start time, `marker` in its command line)."""
    if not pid or start_time(pid) != expected_start:
        return None
    try:
        if marker.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        return Adopted(pid)
    except (OSError, ProcessLookupError):
        return None


def kill_if_ours(pid: int | None, expected_start: int | None, marker: str) -> bool:
    """SIGKILL to `pid` if it is still the process we started (see adopt); whether it was."""
    proc = adopt(pid, expected_start, marker)
    if proc:
        with contextlib.suppress(ProcessLookupError, OSError):
            proc.kill()
    return proc is not None
