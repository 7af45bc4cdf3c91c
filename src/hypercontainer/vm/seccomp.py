"""The extra seccomp filter of every VMM process (QEMU, virtiofsd): nothing they do on the host makes a setuid or
setgid file or a device node.

Built once in the parent with libseccomp and exported as classic BPF; a child only hands the program to the kernel
(one prctl between fork and exec). It stacks with QEMU's own `-sandbox` filter and virtiofsd's.

Refused with EPERM: chmod/fchmod/fchmodat with S_ISUID or S_ISGID; open/openat/creat creating a file (O_CREAT or
O_TMPFILE) with those bits; mknod/mknodat of a character or block device, or with those bits. Refused with ENOSYS
(callers fall back to the calls above): openat2 and fchmodat2 (arguments out of a filter's reach) and io_uring
(its requests bypass seccomp). File capabilities need CAP_SETFCAP, which neither keeps.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat

S_ISUID, S_ISGID, S_IFMT = stat.S_ISUID, stat.S_ISGID, 0o170000
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE, without O_DIRECTORY
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
FCHMODAT2_NR = 452  # x86_64; libseccomp releases before 2.5.5 do not know the name


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _masked(arg: int, mask: int, value: int | None = None) -> _ArgCmp:
    return _ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask if value is None else value)


def rules() -> list[tuple[str | int, int, list[_ArgCmp]]]:
    """(syscall, errno, conditions ANDed); one rule per way of asking for a forbidden mode."""
    out: list[tuple[str | int, int, list[_ArgCmp]]] = []
    for bit in (S_ISUID, S_ISGID):
        out += [("chmod", errno.EPERM, [_masked(1, bit)]), ("fchmod", errno.EPERM, [_masked(1, bit)]),
                ("fchmodat", errno.EPERM, [_masked(2, bit)]), ("creat", errno.EPERM, [_masked(1, bit)]),
                ("mknod", errno.EPERM, [_masked(1, bit)]), ("mknodat", errno.EPERM, [_masked(2, bit)])]
        for create in (os.O_CREAT, O_TMPFILE_BIT):
            out += [("open", errno.EPERM, [_masked(1, create), _masked(2, bit)]),
                    ("openat", errno.EPERM, [_masked(2, create), _masked(3, bit)])]
    for kind in (stat.S_IFCHR, stat.S_IFBLK):
        out += [("mknod", errno.EPERM, [_masked(1, S_IFMT, kind)]),
                ("mknodat", errno.EPERM, [_masked(2, S_IFMT, kind)])]
    for name in ("openat2", FCHMODAT2_NR, "io_uring_setup", "io_uring_enter", "io_uring_register"):
        out.append((name, errno.ENOSYS, []))
    return out


@functools.cache
def filter_bpf() -> bytes:
    """The filter as a classic BPF program (struct sock_filter[]), made by libseccomp for this architecture
    (other architectures' system calls kill the process: libseccomp's default for a foreign arch)."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for name, code, conds in rules():
            nr = name if isinstance(name, int) else lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # a call this libseccomp does not know of (io_uring on old ones): no such call here
            arr = (_ArgCmp * len(conds))(*conds) if conds else None
            rc = lib.seccomp_rule_add_array(ctx, scmp_act_errno(code), nr, len(conds), arr)
            if rc < 0:
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctx)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Program:
    """The filter ready to load from a forked child: the buffer and struct sock_fprog live in the parent."""

    def __init__(self) -> None:
        code = filter_bpf()
        self.buf = ctypes.create_string_buffer(code, len(code))
        self.fprog = SockFprog(len(code) // 8, ctypes.addressof(self.buf))
        self.ref = ctypes.byref(self.fprog)


@functools.cache
def program() -> Program:
    return Program()
