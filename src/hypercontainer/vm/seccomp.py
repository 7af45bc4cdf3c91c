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

from .. import libseccomp
from ..libseccomp import ArgCmp

S_ISUID, S_ISGID, S_IFMT = stat.S_ISUID, stat.S_ISGID, 0o170000
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE, without O_DIRECTORY
FCHMODAT2_NR = 452  # x86_64; libseccomp releases before 2.5.5 do not know the name


def _masked(arg: int, mask: int, value: int | None = None) -> ArgCmp:
    return ArgCmp(arg, libseccomp.CMP_MASKED_EQ, mask, mask if value is None else value)


def rules() -> list[tuple[str | int, int, list[ArgCmp]]]:
    """(syscall, errno, conditions ANDed); one rule per way of asking for a forbidden mode."""
    out: list[tuple[str | int, int, list[ArgCmp]]] = []
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
    with libseccomp.Filter(libseccomp.ACT_ALLOW) as f:
        for name, code, conds in rules():
            nr = name if isinstance(name, int) else libseccomp.resolve_syscall(name)
            if nr is None or nr < 0:
                continue  # a call this libseccomp does not know of (io_uring on old ones): no such call here
            try:
                f.add_rule(libseccomp.act_errno(code), nr, conds)
            except OSError as e:
                raise OSError(e.errno, f"seccomp rule for {name}: {e.strerror}") from None
        return f.export_bpf()


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
