"""`Client`: one hyperd, its pods, images and events."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .endpoint import ENV_TOKEN, Endpoint, resolve
from .images import ImageCollection
from .pods import PodCollection
from .transport import Transport

if TYPE_CHECKING:
    import datetime as dt


class Client(Transport):
    """A client of one hyperd.

    With no argument it talks to the hyperd hyperctl would: `HYPERCONTAINER_HOST` (and `HYPERCONTAINER_TLS_CA`),
    else the current context (`hyperctl context use`), else the local socket (`HYPERCONTAINER_SOCKET`, by default
    /run/hypercontainer/hyperd.sock). `socket`: a unix socket's path; `host`: tcp://HOST:PORT (TLS, the server's
    certificate checked against `tls_ca`, else the system's CAs) or unix:///PATH; `context`: a context's name.
    `token`: a remote hyperd's token (default `HYPERCONTAINER_TOKEN`, or the context's). `timeout`: seconds each
    request may wait for an answer (None: no limit); starting pods, waiting and streams take longer as they need.
    `endpoint`: an `Endpoint` already chosen (hyperctl's own, from its flags).

    Errors hyperd answers with are raised as `hypercontainer.errors` exceptions: NotFound, Conflict,
    InvalidArgument, Unavailable (hyperd not reachable), ... all `HCError`s with a `message`.
    """

    pods: PodCollection
    """Run, create, find and list pods."""
    images: ImageCollection
    """Pull, list, tag and remove images."""

    def __init__(self, socket: str | Path | None = None, host: str | None = None, tls_ca: str | Path | None = None,
                 token: str | None = None, timeout: float | None = 120.0, *, context: str | None = None,
                 endpoint: Endpoint | None = None) -> None:
        if endpoint is None:
            if socket is not None:
                endpoint = Endpoint(socket=Path(socket), token=os.environ.get(ENV_TOKEN) or None)
            else:
                endpoint = resolve(host, str(tls_ca) if tls_ca else None, context)
        if token is not None:
            endpoint = replace(endpoint, token=token)
        super().__init__(endpoint, timeout)
        self.pods = PodCollection(self)
        self.images = ImageCollection(self)

    def __repr__(self) -> str:
        return f"<Client {self.endpoint.url}>"

    def version(self) -> dict:
        """hyperd's version: {"version", "api", ...}."""
        return dict(self.request("GET", "/v1/version"))

    def info(self) -> dict:
        """What `hyperctl info --json` shows: accelerator, guest kernel, versions, counts, boot policy."""
        return dict(self.request("GET", "/v1/info"))

    def events(self, since: float | dt.datetime | None = None,
               until: float | dt.datetime | None = None) -> Iterator[dict]:
        """Pod events as they happen ({"time", "type", "action", "id", ...}; actions: create, start, running, pause,
        unpause, restart, exec, die, fail, destroy). `since`: also the recent ones from then; `until`: ends then
        (without it the iterator waits for more events forever). Times: datetimes, or seconds since the epoch."""
        def stamp(t: float | dt.datetime | None) -> float | None:
            return t if t is None or isinstance(t, (int, float)) else t.timestamp()

        return self.stream_json("/v1/events", since=stamp(since), until=stamp(until))

    def close(self) -> None:
        """Nothing to release (each request has its connection); for `with Client() as c:` and docker-py habits."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def from_env(timeout: float | None = 120.0) -> Client:
    """The client of the hyperd the environment names (as `Client()`; docker-py's `docker.from_env()`)."""
    return Client(timeout=timeout)
