"""hyperd's own resource counts, for leak checks (the soak test, an operator): the administrator's only.

    GET /v1/debug/counts   {fds, threads, tasks, rss_kib, children}: open file descriptors, Python threads, asyncio
                           tasks, resident memory and child processes of hyperd right now
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
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()), "rss_kib": rss, "children": children}


def add_debug_routes(app: FastAPI) -> None:
    @app.get("/v1/debug/counts", dependencies=[Depends(admin_only)])
    async def debug_counts() -> dict[str, int]:
        return counts()
