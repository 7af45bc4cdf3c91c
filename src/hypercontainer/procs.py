"""Every child process (qemu, virtiofsd, helpers) is started and stopped here.

Stopping is a parameter: a signal, a grace period, then SIGKILL; the child is always reaped, also when the
caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


async def spawn(argv: list[str], *, log: Path | None = None, new_session: bool = True) -> asyncio.subprocess.Process:
    """Starts argv with stdin from /dev/null and output appended to `log` (or discarded)."""
    out = open(log, "ab") if log else open(os.devnull, "wb")  # noqa: SIM115 - handed to the child
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=new_session,
        )
    finally:
        out.close()


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, grace: float = 3.0) -> int:
    """Signals the child, waits `grace` seconds, then kills it. Returns its exit status."""
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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before creating {path}")
        if loop.time() > deadline:
            raise TimeoutError(f"{what} did not create {path} within {timeout:.0f} s")
        await asyncio.sleep(0.002)
