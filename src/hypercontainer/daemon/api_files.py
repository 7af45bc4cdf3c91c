"""The API's file and process routes of a running pod's container (added to the app by create_app), for hyperctl cp
and top; `container` defaults to the pod's first:

    GET /v1/pods/{ref}/archive/stat?path=   {mode, size, dir}: the path in the container (symlinks followed); 404
    GET /v1/pods/{ref}/archive?path=        a tar of the path (application/x-tar); 404 before any byte if missing
    PUT /v1/pods/{ref}/archive?path=DIR     the request's tar unpacked under DIR; owners=true keeps the archive's
                                            uid/gid; 400 with the guest's reason for a refused entry
    GET /v1/pods/{ref}/top?ps_args=         {titles, processes}: docker top's answer (ps_args: the container's own
                                            ps runs with them, split on spaces)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.requests import HTTPConnection

from ..errors import HCError
from ..pod import files
from ..pod.pod import Pod

log = logging.getLogger(__name__)


def add_file_routes(app: FastAPI, pod_of: Callable[[HTTPConnection, str], Pod]) -> None:
    """`pod_of`: create_app's, the running pod a ref names among the caller's."""

    @app.get("/v1/pods/{ref}/archive/stat")
    async def stat_path(request: Request, ref: str, path: str, container: str | None = None) -> dict:
        st = await files.stat(pod_of(request, ref), container, path)
        return {"mode": st.mode, "size": st.size, "dir": st.is_dir}

    @app.get("/v1/pods/{ref}/archive")
    async def get_archive(request: Request, ref: str, path: str, container: str | None = None) -> StreamingResponse:
        chunks = await files.archive(pod_of(request, ref), container, path)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            except HCError as e:  # the status is sent: the client sees the archive end early
                log.warning("%s: %s", ref, e.message)

        return StreamingResponse(body(), media_type="application/x-tar")

    @app.put("/v1/pods/{ref}/archive")
    async def put_archive(request: Request, ref: str, path: str, container: str | None = None,
                          owners: bool = False) -> dict:
        await files.extract(pod_of(request, ref), container, path, request.stream(), owners=owners)
        return {}

    @app.get("/v1/pods/{ref}/top")
    async def top(request: Request, ref: str, container: str | None = None, ps_args: str = "") -> dict:
        titles, rows = await files.top(pod_of(request, ref), container, ps_args.split())
        return {"titles": titles, "processes": rows}
