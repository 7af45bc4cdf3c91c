"""Reading an inherited fd (a pipe, a FIFO, a terminal, /dev/null or a file) without a thread that could block
the process's exit."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator


async def read_chunks(fd: int, size: int = 65536) -> AsyncIterator[bytes]:
    """Chunks until EOF (or an error). Pollable fds are read when ready; others (files, /dev/null) at once."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    try:
        os.set_blocking(fd, False)
        loop.add_reader(fd, ready.set)
        pollable = True
    except (OSError, ValueError):
        pollable = False
    try:
        while True:
            if pollable:
                await ready.wait()
                ready.clear()
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            yield data
    finally:
        if pollable:
            loop.remove_reader(fd)


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await asyncio.sleep(0.005)
        except OSError:  # the reader went away: the output is dropped, the process goes on
            return
