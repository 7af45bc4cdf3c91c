"""One container of a pod: its process fields, its output relay, its log file and its subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import CommandNotRunnable, InvalidArgument
from ..image.store import Image
from ..protocol.client import ProcessStreams
from ..protocol.codec import Fields
from ..signals import parse_signal
from ..spec.pod import ContainerSpec
from ..storage.safefs import Root, make_dirs
from .crilog import CriLog
from .logfile import LogFile
from .users import resolve

LOG_MAX_BYTES = 32 << 20
SUBSCRIBER_BACKLOG = 1024  # output chunks (64 KiB at most each) held for an attached client that is not reading

# What a subscriber receives: ("stdout"|"stderr", bytes), ("exit", int) or ("error", str).
Event = tuple[str, "bytes | int | str"]


def process_fields(spec: ContainerSpec, image: Image, rootfs: Root, hostname: str) -> Fields:
    """The NEW_CONTAINER fields: command from entrypoint/cmd, env, user, workdir (created as docker does)."""
    cfg = image.run_config
    entrypoint = spec.entrypoint if spec.entrypoint is not None else (cfg.get("Entrypoint") or [])
    cmd = spec.command if spec.command else ([] if spec.entrypoint is not None else (cfg.get("Cmd") or []))
    argv = [*entrypoint, *cmd]
    if not argv or not argv[0]:
        raise CommandNotRunnable(f"no command specified: image {image.refs[0] if image.refs else image.id[:19]} "
                                 "has no Cmd or Entrypoint and none was given", 125)
    user = resolve(rootfs, spec.user or cfg.get("User") or None)
    env: dict[str, str] = {}
    for item in [*(cfg.get("Env") or []), f"HOSTNAME={hostname}", f"HOME={user.home}",
                 *(["TERM=xterm"] if spec.tty else []), *spec.env]:
        k, _, v = item.partition("=")
        env[k] = v
    workdir = spec.workdir or cfg.get("WorkingDir") or "/"
    if not workdir.startswith("/"):
        raise InvalidArgument(f"working directory {workdir!r} is not absolute")
    try:
        make_dirs(rootfs, workdir, user.uid, user.gid)
        for vol in cfg.get("Volumes") or {}:  # anonymous volumes: the directory exists in the container
            make_dirs(rootfs, vol)
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot create working directory or volume {workdir}: {e}") from None
    return {
        "arg": argv,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": workdir,
        "uid": user.uid,
        "gid": user.gid,
        "group": list(user.groups),
        "terminal": int(spec.tty),
        "stdin": int(spec.stdin),
        "readonly": int(spec.readonly),
        "rlimit": [f"{u.name}:{u.soft}:{u.hard}" for u in spec.ulimits],
        **security_fields(spec),
    }


def with_overrides(fields: Fields, overrides: Fields) -> Fields:
    """The process fields with protocol fields a caller gives beyond the spec (the CRI: memory_limit, masked and
    read-only paths, pid_ns_of) set over them; `group` entries are added to the user's groups (the CRI's
    supplemental groups), not put in their place."""
    out = {**fields, **{k: v for k, v in overrides.items() if k != "group"}}
    extra = overrides.get("group")
    if isinstance(extra, list) and extra:
        have = fields.get("group")
        base = [g for g in have if isinstance(g, int)] if isinstance(have, list) else []
        out["group"] = base + [g for g in extra if isinstance(g, int) and g not in base]
    return out


def security_fields(spec: ContainerSpec) -> Fields:
    """Capabilities (docker's default set with the spec's adds and drops; every one if privileged), no_new_privs,
    privileged and the PID namespace, as NEW_CONTAINER fields. EXEC takes the same capabilities and
    no_new_privs; the agent reads privileged and shared_pid_ns on NEW_CONTAINER only."""
    caps = spec.capabilities.mask(spec.privileged)
    return {"cap_bounding": caps, "cap_effective": caps, "cap_permitted": caps, "cap_inheritable": 0,
            "cap_ambient": 0, "no_new_privs": int(spec.no_new_privileges), "privileged": int(spec.privileged),
            "shared_pid_ns": int(spec.pid_namespace == "pod")}


@dataclass
class Container:
    spec: ContainerSpec
    image: Image
    stream: int
    log_path: Path
    streams: ProcessStreams | None = None
    exit_code: int | None = None
    oom_killed: bool = False  # its process was ended by the guest kernel's OOM killer (exit code 137)
    error: str | None = None
    pid: int | None = None
    held: bool = False  # set up in the guest and waiting for its start (Pod.hold_created)
    fields: Fields = field(default_factory=dict)  # the process fields it was started with (exec starts from them)
    mounts: Fields = field(default_factory=dict)  # its volume mount fields
    restarts: int = 0
    rootfs: Path | None = None  # a root prepared by someone else (runv: the OCI bundle's), bound in, not layers
    root_dir: str = ""  # its root's directory in the pod share: its name, or name@N once that name was used before
    overrides: Fields = field(default_factory=dict)  # protocol fields over the spec's (with_overrides), at prepare
    brought: tuple[str, ...] = ()  # pod volumes added with it to a running pod: they go with it (if unused)
    cri_log: Path | None = None  # a second log of its output, in the CRI format (the kubelet reads it), if asked for
    started_at: float | None = None  # its current (last) run: started, finished (time.time())
    finished_at: float | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: list[asyncio.Queue[Event]] = field(default_factory=list)
    _cri: CriLog | None = field(default=None, init=False, repr=False)  # the CRI log while the relay runs

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stop_signal(self) -> int:
        return parse_signal(self.spec.stop_signal or self.image.run_config.get("StopSignal") or "SIGTERM")

    def subscribe(self) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        self.subscribers.append(q)
        if self.done.is_set():
            # done is set only with the exit code known: by finish(), or for a finished container read back from disk
            code = cast(int, self.exit_code)
            q.put_nowait(("exit", code) if self.error is None else ("error", self.error))
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(q)

    def _publish(self, ev: Event) -> None:
        """To every subscriber; a subscriber that has stopped reading (SUBSCRIBER_BACKLOG chunks behind) misses
        output rather than hyperd holding it (the log has it all); the exit always goes through."""
        for q in self.subscribers:
            if ev[0] in ("stdout", "stderr") and q.qsize() >= SUBSCRIBER_BACKLOG:
                continue
            q.put_nowait(ev)

    def reset(self) -> None:
        """Before a restart: a new run with its own exit."""
        self.done = asyncio.Event()
        self.exit_code = self.error = None
        self.oom_killed = False
        self.streams = None
        self.held = False
        self.finished_at = None

    def finish(self, exit_code: int, error: str | None = None) -> None:
        if self.done.is_set():
            return
        self.exit_code, self.error = exit_code, error
        self.finished_at = time.time()
        self.done.set()
        self._publish(("exit", exit_code) if error is None else ("error", error))

    def reopen_log(self) -> None:
        """The CRI log file was renamed (rotated by the kubelet): output goes on into a new one at its path."""
        if self._cri:
            self._cri.reopen()

    async def relay(self) -> None:
        """Copies output to the log file and the subscribers until both streams end, then reports the exit."""
        assert self.streams
        s = self.streams
        log = LogFile(self.log_path, LOG_MAX_BYTES)  # a full disk drops output (noted), never blocks the guest
        cri = self._cri = CriLog(self.cri_log) if self.cri_log else None
        if cri:
            with contextlib.suppress(OSError):  # the file exists from the start, as containerd's; else _put says why
                cri.open()
        try:

            async def pump(q: asyncio.Queue[bytes | None], name: str) -> None:
                while (chunk := await q.get()) is not None:
                    log.write(name, chunk)
                    if cri:
                        cri.write(name, chunk)
                    self._publish((name, chunk))
                if cri:
                    cri.end(name)

            await asyncio.gather(pump(s.stdout, "stdout"), pump(s.stderr, "stderr"))
        finally:
            log.close()
            if cri:
                cri.close()
                self._cri = None
        try:
            code = await s.exit
        except Exception as e:  # the VM or the agent went away
            self.finish(255, str(e))
            return
        finally:
            s.client.unregister(s.stream)
        self.oom_killed = s.oom_killed
        self.finish(code)
