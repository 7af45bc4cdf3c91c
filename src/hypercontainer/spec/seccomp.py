"""config.json's linux.seccomp compiled to the classic BPF program the guest agent loads (runc's semantics).

defaultAction (with defaultErrnoRet) is the filter's default; each of `syscalls` adds its action for its names,
with its argument conditions ANDed (runc's rule: when one argument is compared more than once, each condition
becomes a rule of its own, as libseccomp cannot AND two comparisons of one argument). Names libseccomp does not
know are skipped, as runc skips them; a rule whose action is the default is left out (libseccomp refuses it).
`architectures` are added to the filter (the native one is always in it); calls of an architecture not in the
filter kill the process. `flags`: SECCOMP_FILTER_FLAG_LOG and _SPEC_ALLOW go to the agent (it loads the filter
with them); TSYNC is what a single-threaded process gets anyway, and WAIT_KILLABLE_RECV only matters to a
listener. SCMP_ACT_NOTIFY cannot be honoured (a listener would need the guest's process and a socket out of the
VM): InvalidArgument, like any unknown action, operator, architecture or flag.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from .. import libseccomp
from ..errors import InvalidArgument
from ..protocol.agent import SECCOMP_FLAG_LOG, SECCOMP_FLAG_SPEC_ALLOW, SECCOMP_MAX_INSNS

ACTIONS = {
    "SCMP_ACT_KILL": libseccomp.ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": libseccomp.ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": libseccomp.ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": libseccomp.ACT_TRAP,
    "SCMP_ACT_ERRNO": libseccomp.ACT_ERRNO,
    "SCMP_ACT_TRACE": libseccomp.ACT_TRACE,
    "SCMP_ACT_LOG": libseccomp.ACT_LOG,
    "SCMP_ACT_ALLOW": libseccomp.ACT_ALLOW,
}
OPS = {"SCMP_CMP_NE": libseccomp.CMP_NE, "SCMP_CMP_LT": libseccomp.CMP_LT, "SCMP_CMP_LE": libseccomp.CMP_LE,
       "SCMP_CMP_EQ": libseccomp.CMP_EQ, "SCMP_CMP_GE": libseccomp.CMP_GE, "SCMP_CMP_GT": libseccomp.CMP_GT,
       "SCMP_CMP_MASKED_EQ": libseccomp.CMP_MASKED_EQ}
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 0, "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 0,
         "SECCOMP_FILTER_FLAG_LOG": SECCOMP_FLAG_LOG, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": SECCOMP_FLAG_SPEC_ALLOW}
MAX_ARGS = 6
U64 = 2**64


def _action(name: object, errno_ret: object, where: str) -> int:
    """An OCI action (and errnoRet, for ERRNO and TRACE; EPERM when absent, as runc) as libseccomp's value."""
    if name == "SCMP_ACT_NOTIFY":
        raise InvalidArgument(f"{where}: SCMP_ACT_NOTIFY cannot be honoured: the process runs in a VM, out of "
                              "any listener's reach")
    if not isinstance(name, str) or name not in ACTIONS:
        raise InvalidArgument(f"{where}: unknown action {name!r}")
    if errno_ret is not None and name not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        raise InvalidArgument(f"{where}: errnoRet with {name} (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take one)")
    if errno_ret is None:
        errno_ret = errno.EPERM
    if not isinstance(errno_ret, int) or isinstance(errno_ret, bool) or not 0 <= errno_ret <= 0xFFFF:
        raise InvalidArgument(f"{where}: errnoRet {errno_ret!r} is not a number from 0 to 65535")
    base = ACTIONS[name]
    return base | errno_ret if base in (libseccomp.ACT_ERRNO, libseccomp.ACT_TRACE) else base


def _condition(arg: object, where: str) -> libseccomp.ArgCmp:
    if not isinstance(arg, dict):
        raise InvalidArgument(f"{where}: an argument condition is not an object")
    index, value, two, op = arg.get("index"), arg.get("value"), arg.get("valueTwo", 0), arg.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise InvalidArgument(f"{where}: unknown operator {op!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_ARGS:
        raise InvalidArgument(f"{where}: argument index {index!r} is not 0 to {MAX_ARGS - 1}")
    for v in (value, two):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < U64:
            raise InvalidArgument(f"{where}: argument value {v!r} is not a u64")
    return libseccomp.ArgCmp(index, OPS[op], value, two)


def _arch(name: object) -> int:
    token = (libseccomp.resolve_arch(name.removeprefix("SCMP_ARCH_").lower())
             if isinstance(name, str) and name.startswith("SCMP_ARCH_") else None)
    if token is None:
        raise InvalidArgument(f"linux.seccomp.architectures: unknown architecture {name!r}")
    return token


def _flags(names: object) -> int:
    if not isinstance(names, list):
        raise InvalidArgument("linux.seccomp.flags is not a list")
    out = 0
    for n in names:
        if not isinstance(n, str) or n not in FLAGS:
            raise InvalidArgument(f"linux.seccomp.flags: unknown flag {n!r}")
        out |= FLAGS[n]
    return out


def _build(cfg: dict[str, Any]) -> bytes:
    default = _action(cfg.get("defaultAction"), cfg.get("defaultErrnoRet"), "linux.seccomp.defaultAction")
    with libseccomp.Filter(default) as f:
        arches = cfg.get("architectures") or []
        if not isinstance(arches, list):
            raise InvalidArgument("linux.seccomp.architectures is not a list")
        for arch in arches:
            f.add_arch(_arch(arch))
        calls = cfg.get("syscalls") or []
        if not isinstance(calls, list):
            raise InvalidArgument("linux.seccomp.syscalls is not a list")
        for i, call in enumerate(calls):
            where = f"linux.seccomp.syscalls[{i}]"
            if not isinstance(call, dict) or not isinstance(call.get("names"), list):
                raise InvalidArgument(f"{where}: want an object with names")
            action = _action(call.get("action"), call.get("errnoRet"), where)
            args = call.get("args") or []
            if not isinstance(args, list):
                raise InvalidArgument(f"{where}: args is not a list")
            conds = [_condition(a, where) for a in args]
            # libseccomp ANDs conditions only on distinct arguments: otherwise one rule per condition (runc)
            indexes = [c.arg for c in conds]
            rules = [[c] for c in conds] if len(set(indexes)) != len(indexes) else [conds]
            for name in call["names"]:
                nr = libseccomp.resolve_syscall(name) if isinstance(name, str) else None
                if nr is None or action == default:
                    continue  # not a call libseccomp knows (runc skips those too), or the default anyway
                for rule in rules:
                    try:
                        f.add_rule(action, nr, rule)
                    except OSError as e:
                        raise InvalidArgument(f"{where}: a rule for {name}: {e.strerror}") from None
        return f.export_bpf()


_kept: list[Path] = []  # keep_compiled()'s directory


def keep_compiled(directory: Path) -> None:
    """Compiled filters are also kept as files in `directory` (made 0700; not used if it is anyone else's or
    writable by others), for the processes that come after this one: runv's shims, one process per container,
    would each compile the engine's default profile again (~15 ms of every `runv create`). A file is keyed by
    the profile, libseccomp's version and the machine."""
    with contextlib.suppress(OSError):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = directory.stat()
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            _kept[:] = [directory]


def _kept_file(text: str) -> Path | None:
    if not _kept:
        return None
    key = hashlib.sha256(f"{libseccomp.version()} {platform.machine()}\n{text}".encode()).hexdigest()
    return _kept[0] / key


@functools.lru_cache(maxsize=8)
def _compile_json(text: str) -> tuple[str, int]:
    kept = _kept_file(text)
    if kept:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            got = json.loads(kept.read_text())
            if isinstance(got["program"], str) and isinstance(got["flags"], int):
                return got["program"], got["flags"]
    program, flags = _compile(text)
    if kept:
        with contextlib.suppress(OSError):
            tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"program": program, "flags": flags}))
            tmp.replace(kept)
    return program, flags


def _compile(text: str) -> tuple[str, int]:
    cfg = json.loads(text)
    if not isinstance(cfg, dict):
        raise InvalidArgument("linux.seccomp is not an object")
    flags = _flags(cfg.get("flags") or [])
    program = _build(cfg)
    if len(program) // 8 > SECCOMP_MAX_INSNS:
        raise InvalidArgument(f"linux.seccomp compiles to {len(program) // 8} instructions, over the "
                              f"{SECCOMP_MAX_INSNS} the kernel takes")
    return base64.b64encode(program).decode(), flags


def compile_filter(seccomp: dict[str, Any]) -> tuple[str, int]:
    """linux.seccomp as the agent's `seccomp` field (base64 of the BPF program) and `seccomp_flags`.
    InvalidArgument names what cannot be compiled."""
    return _compile_json(json.dumps(seccomp, sort_keys=True))
