"""hyperd's own resource counts, for leak checks (the soak test, an operator): the administrator's only.

    GET /v1/debug/counts   {fds, threads, executor_threads, tasks, rss_kib, children}: open file descriptors,
                           Python threads (the default executor's bounded pool counted apart), asyncio tasks,
                           resident memory and child processes of hyperd right now
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from fastapi import Depends, FastAPI

from .auth import admin_only


def counts() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    me = str(os.getpid())
    children = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2 :].split()[1] == me:
                children += 1
    names = [t.name for t in threading.enumerate()]
    pool = sum(n.startswith("asyncio_") for n in names)  # the default executor's workers: a bounded pool
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": len(names) - pool, "executor_threads": pool,
            "tasks": len(asyncio.all_tasks()), "rss_kib": rss, "children": children}


def add_debug_routes(app: FastAPI) -> None:
    @app.get("/v1/debug/counts", dependencies=[Depends(admin_only)])
    async def debug_counts() -> dict[str, int]:
        return counts()
