"""The stdio of a process over hyperd's websockets (daemon/stdio.py): the first message (the request), binary
frames `STREAM data` both ways, then `{"type": "exit", "code"}` or `{"type": "error", ...}`. hyperctl's run, exec
and attach relay them to a terminal; the library collects them (`Pod.exec`, `pods.run(detach=False)`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import HCError
from .transport import error_from

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

STDIN, STDOUT, STDERR = 0, 1, 2


def exec_request(command: Iterable[str], *, container: str | None = None, tty: bool = False, stdin: bool = False,
                 user: str | None = None, env: Iterable[str] = (), workdir: str | None = None) -> dict:
    """The first message of an exec websocket (and, less tty and stdin, the body of a detached exec)."""
    return {"command": list(command), "container": container, "tty": tty, "stdin": stdin, "user": user,
            "env": list(env), "workdir": workdir}


def relay(messages: Iterable[str | bytes], output: Callable[[int, bytes], None],
          event: Callable[[dict], None] | None = None) -> int:
    """Hands each output frame of `messages` (a websocket) to `output(STDOUT or STDERR, data)`, other JSON messages
    to `event`, until the process exits; returns its exit code. An error hyperd sends is raised (CommandNotRunnable,
    with exit code 126 or 127, when the command could not be run)."""
    from websockets.exceptions import ConnectionClosedError  # loaded already: `messages` is a websocket

    try:
        for msg in messages:
            if isinstance(msg, bytes):
                if msg[:1] in (bytes([STDOUT]), bytes([STDERR])):
                    output(msg[0], msg[1:])
                continue
            ev = json.loads(msg)
            if ev.get("type") == "exit":
                return int(ev["code"])
            if ev.get("type") == "error":
                raise error_from(ev, 500)
            if event is not None:
                event(ev)
    except (ConnectionClosedError, OSError):
        pass
    raise HCError("hyperd closed the connection before the container exited (its log may say why)")


def collect(ws: ClientConnection, first: dict, stdin: bytes | None = None) -> tuple[int, bytes, str | None]:
    """Runs a session without a terminal: sends `first` (then `stdin` and its end, if given) and gathers stdout and
    stderr as they interleave. Returns the exit code, the output, and the pod's id where hyperd sent it."""
    ws.send(json.dumps(first))
    if stdin is not None:
        if stdin:
            ws.send(bytes([STDIN]) + stdin)
        ws.send(json.dumps({"type": "stdin_eof"}))
    out = bytearray()
    created: list[str] = []
    code = relay(ws, lambda _stream, data: out.extend(data),
                 lambda ev: created.append(ev["id"]) if ev.get("type") == "created" else None)
    return code, bytes(out), created[0] if created else None
