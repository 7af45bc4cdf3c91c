"""libseccomp (Debian's libseccomp2) through ctypes: build a filter, export it as a classic BPF program.

The one binding of the project: the VMM's extra filter (vm/seccomp.py) and containers' filters compiled from
config.json (spec/seccomp.py) both use it. Nothing is loaded into this process: programs are exported
(struct sock_filter[], this machine's byte order) and loaded elsewhere (a forked VMM child, the guest agent).
"""

from __future__ import annotations

import ctypes
import functools
import os

# Actions (seccomp.h): the low 16 bits of ERRNO and TRACE carry the errno / tracer message.
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000
ACT_NOTIFY = 0x7FC00000

# Argument comparisons (enum scmp_compare).
CMP_NE, CMP_LT, CMP_LE, CMP_EQ, CMP_GE, CMP_GT, CMP_MASKED_EQ = range(1, 8)
NR_ERROR = -1  # __NR_SCMP_ERROR: a name libseccomp does not know


def act_errno(code: int) -> int:
    return ACT_ERRNO | (code & 0xFFFF)


def act_trace(msg: int) -> int:
    return ACT_TRACE | (msg & 0xFFFF)


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp: argument `arg` compared by `op` with datum_a (MASKED_EQ: mask a, value b)."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    return lib


@functools.cache
def version() -> str:
    """libseccomp's version (MAJOR.MINOR.MICRO)."""
    v = _lib().seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def resolve_syscall(name: str) -> int | None:
    """The syscall's number for this architecture (libseccomp's negative pseudo-number for one that exists only
    on others), None for a name libseccomp does not know."""
    nr: int = _lib().seccomp_syscall_resolve_name(name.encode())
    return None if nr == NR_ERROR else nr


def resolve_arch(name: str) -> int | None:
    """An architecture token from libseccomp's name for it ("x86_64", "x86", "x32", "aarch64", ...)."""
    token: int = _lib().seccomp_arch_resolve_name(name.encode())
    return token or None


class Filter:
    """One filter context: `with Filter(default) as f: f.add_rule(...); program = f.export_bpf()`. Errors from
    libseccomp are OSError with its errno."""

    def __init__(self, default_action: int) -> None:
        self._ctx: int | None = _lib().seccomp_init(default_action)
        if not self._ctx:
            raise OSError(f"seccomp_init refused the default action {default_action:#x}")

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._ctx:
            _lib().seccomp_release(self._ctx)
            self._ctx = None

    def add_arch(self, token: int) -> None:
        """Adds an architecture (the native one is there from the start: adding it again is fine)."""
        rc: int = _lib().seccomp_arch_add(self._ctx, token)
        if rc < 0 and rc != -17:  # -EEXIST
            raise OSError(-rc, f"seccomp_arch_add: {os.strerror(-rc)}")

    def add_rule(self, action: int, nr: int, conds: list[ArgCmp] | tuple[ArgCmp, ...] = ()) -> None:
        """`action` for syscall `nr` when every condition holds (ANDed)."""
        arr = (ArgCmp * len(conds))(*conds) if conds else None
        rc: int = _lib().seccomp_rule_add_array(self._ctx, action, nr, len(conds), arr)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))

    def export_bpf(self) -> bytes:
        """The filter as a classic BPF program: struct sock_filter[] (8 bytes each). Written to a memfd (a pipe
        would block libseccomp on a program over the pipe's buffer)."""
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc: int = _lib().seccomp_export_bpf(self._ctx, fd)
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
