"""A first run boots the distribution's kernel while ours builds in the background.

Building our guest kernel takes about ten minutes on two cores; a user's first pod should not wait for it. When
hyperd starts with `--kernel auto` and no kernel of ours is built, it boots the distribution's VM kernel and runs
`python -m hypercontainer.guest.kernel_build` as a child (lowest CPU and I/O priority), its progress in hyperd's log
and in `hyperctl info`. Once it is built, `switch` (daemon/main.py) makes the guest assets anew and moves new pods,
templates and the pool onto it, announced by a `daemon kernel-switch` event. Pods running on the old kernel keep it.
`make assets` (make test, make bench) waits for a build that is running (guest/kernel_build.py: one lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..guest import kernel_build

log = logging.getLogger(__name__)
# Tests only: a command that stands in for the build (it must leave a kernel-own-* directory in the assets cache).
ENV_COMMAND = "HYPERCONTAINER_KERNEL_BUILD_COMMAND"


def needed(cache: Path, pref: str) -> bool:
    """Whether hyperd should build our kernel in the background: asked for (auto) and not built yet."""
    return pref == "auto" and kernel_build.built(cache) is None


def _command() -> list[str]:
    if own := os.environ.get(ENV_COMMAND):
        return shlex.split(own)
    prefix = ["nice", "-n", "19"]
    if shutil.which("ionice"):
        prefix += ["ionice", "-c", "3"]
    return [*prefix, sys.executable, "-m", "hypercontainer.guest.kernel_build"]


class KernelBuild:
    """The background build of our kernel, and what it reports."""

    def __init__(self, cache: Path, on_built: Callable[[], Awaitable[None]]) -> None:
        self.cache, self.on_built = cache, on_built
        self.state = "idle"  # building | built | failed
        self.progress = ""
        self.started = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        self.state, self.started = "building", time.time()
        env = dict(os.environ, HYPERCONTAINER_ASSETS=str(self.cache))
        log.info("guest kernel: booting the distribution's until ours is built; building it in the background")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *_command(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            self.state, self.progress = "failed", f"could not start the build: {e}"
            log.warning("guest kernel: %s", self.progress)
            return
        assert self._proc.stdout
        tail: list[str] = []
        async for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail = [*tail, line][-5:]
                self.progress = line.removeprefix("guest kernel: ")
                log.info("%s", line if line.startswith("guest kernel") else f"guest kernel build: {line}")
        rc = await self._proc.wait()
        self._proc = None
        if rc != 0 or kernel_build.built(self.cache) is None:
            self.state = "failed"
            self.progress = f"the build failed (exit {rc}): {' | '.join(tail)[-300:]}"
            log.warning("guest kernel: %s; pods keep the distribution's kernel (make assets retries)", self.progress)
            return
        self.state = "built"
        try:
            await self.on_built()
        except Exception as e:
            self.state, self.progress = "failed", f"built, but switching to it failed: {e}"
            log.exception("guest kernel: switching to ours failed; pods keep the distribution's kernel")

    async def stop(self) -> None:
        """hyperd is stopping: the build stops too (the next hyperd starts it again)."""
        if self._proc and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
                await asyncio.wait_for(self._proc.wait(), 10)
            if self._proc and self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def info(self) -> dict[str, object]:
        return {"state": self.state, "progress": self.progress, "started": self.started}
