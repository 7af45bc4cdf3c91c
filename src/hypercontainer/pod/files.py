"""A running container's files and processes through the agent's builtins (docs/protocol.md, EXEC `builtin`):
hyperctl cp's tar streams both ways and the stat it starts with, and top's process list.

The builtins run as root in the container's namespaces, under its capabilities and seccomp filter, chrooted in
its root: a path resolves there as in the container (a symlink cannot lead out of it), and cp can do nothing that
`exec -u 0 tar` could not. What comes back is the guest's: the client unpacks it with the layer rules."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Conflict, HCError, InvalidArgument, NotFound
from .users import user_names

if TYPE_CHECKING:
    from ..protocol.client import ProcessStreams
    from .pod import Pod

OUTPUT_CAP = 1 << 20  # bytes of a builtin's messages or process list kept (the rest is dropped)
TOP_TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]  # docker top's (ps -ef)


@dataclass(frozen=True)
class PathStat:
    mode: int
    size: int

    @property
    def is_dir(self) -> bool:
        return self.mode & 0o170000 == 0o040000


def check_path(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"{path!r}: a path in the container must be absolute")
    return path


async def builtin(pod: Pod, container: str | None, args: list[str], *, stdin: bool = False) -> ProcessStreams:
    c = pod.container(container)
    fields = dict(c.fields, arg=args, builtin=1, uid=0, gid=0, group=[], cwd="/", stdin=int(stdin))
    fields.pop("readonly", None)
    return await pod.exec_fields(c.name, fields)


async def _drain(q: asyncio.Queue[bytes | None], cap: int = OUTPUT_CAP) -> bytes:
    out = bytearray()
    while (chunk := await q.get()) is not None:
        if len(out) < cap:
            out += chunk[: cap - len(out)]
    return bytes(out)


async def _finish(proc: ProcessStreams) -> tuple[int, bytes, bytes]:
    try:
        out, err = await _drain(proc.stdout), await _drain(proc.stderr)
        return await proc.exit, out, err
    finally:
        proc.client.unregister(proc.stream)


def _message(err: bytes, what: str) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"{what} failed"


async def stat(pod: Pod, container: str | None, path: str) -> PathStat:
    """The path's mode and size as the container sees it (symlinks followed); NotFound if it is not there."""
    code, out, err = await _finish(await builtin(pod, container, ["stat", check_path(path)]))
    if code == 2:
        raise NotFound(f"container {pod.container(container).name}: {path}: no such file or directory")
    if code != 0:
        raise HCError(f"container {pod.container(container).name}: {_message(err, 'stat')}")
    try:
        mode, size = out.split()
        return PathStat(int(mode, 8), int(size))
    except ValueError:
        raise HCError(f"the guest answered stat with {out[:80]!r}") from None


async def archive(pod: Pod, container: str | None, path: str) -> AsyncIterator[bytes]:
    """A tar stream of `path` (checked first: a missing one is NotFound before any byte). An error while it streams
    ends the stream early: the client sees a truncated archive."""
    await stat(pod, container, path)
    proc = await builtin(pod, container, ["archive", path])

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while (chunk := await proc.stdout.get()) is not None:
                yield chunk
            err = await _drain(proc.stderr)
            code = await proc.exit
            if code != 0:
                raise HCError(f"archive of {path}: {_message(err, 'archive')}")
        finally:
            if not proc.exit.done():
                with contextlib.suppress(HCError):
                    await pod.signal_stream(proc.stream, 9)
            proc.client.unregister(proc.stream)

    return chunks()


async def extract(pod: Pod, container: str | None, directory: str, body: AsyncIterator[bytes], *,
                  owners: bool = False) -> None:
    """Unpacks the tar `body` under `directory` in the container (which must be a directory there); `owners`:
    the archive's uid/gid, else root's. The guest refuses absolute names, `..`, writing through a symlink and
    replacing a directory."""
    st = await stat(pod, container, directory)
    if not st.is_dir:
        raise InvalidArgument(f"{directory} is not a directory in container {pod.container(container).name}")
    args = ["extract", directory, "1" if owners else "0"]
    proc = await builtin(pod, container, args, stdin=True)
    try:
        async for chunk in body:
            if proc.exit.done():
                break
            await proc.write_stdin(chunk)
        await proc.close_stdin()
    except BaseException:
        with contextlib.suppress(HCError):
            await pod.signal_stream(proc.stream, 9)
        raise
    finally:
        code, _, err = await _finish(proc)
    if code != 0:
        raise InvalidArgument(f"copy into {pod.container(container).name}:{directory}: {_message(err, 'extract')}")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _tty(nr: int) -> str:
    major, minor = (nr >> 8) & 0xFFF, (nr & 0xFF) | ((nr >> 12) & 0xFFF00)
    if nr == 0:
        return "?"
    return f"pts/{minor}" if 136 <= major <= 143 else f"tty{minor}" if major == 4 else f"{major},{minor}"


def parse_ps(text: str, names: dict[int, str], now: float | None = None) -> list[list[str]]:
    """The ps builtin's lines as docker top's rows (TOP_TITLES)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise HCError(f"the guest's process list starts with {lines[0][:80] if lines else ''!r}")
    hz_s, uptime_s = lines[0][2:].split()
    hz, uptime = int(hz_s), float(uptime_s)
    now = time.time() if now is None else now
    rows = []
    for line in lines[1:]:
        head, _, cmd = line.partition("\t")
        pid, ppid, uid, _state, cpu, start, tty = head.split()
        started = uptime - int(start) / hz
        cpu_s = int(cpu) / hz
        pct = int(100 * cpu_s / started) if started > 0 else 0
        stime = time.strftime("%H:%M", time.localtime(now - started))
        rows.append([names.get(int(uid), uid), pid, ppid, str(pct), stime, _tty(int(tty)), _clock(cpu_s), cmd])
    return rows


async def top(pod: Pod, container: str | None, ps_args: list[str]) -> tuple[list[str], list[list[str]]]:
    """docker top: the container's processes from the guest. No `ps_args`: the agent's own list (docker's `ps -ef`
    columns); with them, the container's own `ps` runs with them (busybox's or procps')."""
    c = pod.container(container)
    if ps_args:
        try:
            proc = await pod.exec(c.name, ["ps", *ps_args])
        except HCError as e:
            raise InvalidArgument(f"ps options need a ps in container {c.name}'s image: {e.message}") from None
        code, out, err = await _finish(proc)
        if code != 0:
            raise InvalidArgument(f"ps {' '.join(ps_args)} in container {c.name}: {_message(err, 'ps')}")
        lines = out.decode(errors="replace").splitlines()
        if not lines:
            return [], []
        titles = lines[0].split()
        return titles, [ln.split(None, len(titles) - 1) for ln in lines[1:] if ln.strip()]
    code, out, err = await _finish(await builtin(pod, c.name, ["ps"]))
    if code != 0:
        raise Conflict(f"container {c.name}: {_message(err, 'ps')}")
    names: dict[int, str] = {}
    with contextlib.suppress(OSError), pod.tree.open_root(c.root_dir or c.name) as root:
        names = user_names(root)
    return TOP_TITLES, parse_ps(out.decode(errors="replace"), names)
