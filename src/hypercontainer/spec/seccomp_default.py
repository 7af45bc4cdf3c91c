"""The runtime's default seccomp profile (the CRI's RuntimeDefault), as an OCI `linux.seccomp` object that
spec/seccomp.py compiles to the BPF program the guest agent loads for a container and its execs.

It is a deny list, written here from Docker's documentation ("Seccomp security profiles for Docker", the table of
significant syscalls its default profile blocks), with the newer variants of those calls (quotactl_fd,
open_tree_attr, the 64-bit-time clock calls, set_mempolicy_home_node, pidfd_getfd), rather than taken from
Docker's or containerd's profile text. Every call is allowed (SCMP_ACT_ALLOW) but those below, which fail with
EPERM unless the container holds a capability that Docker's profile ties them to (for most, one the kernel checks
as well):

    always               add_key keyctl request_key (the kernel keyring is not namespaced), userfaultfd,
                         the obsolete or unused create_module get_kernel_syms query_module nfsservctl uselib ustat
                         sysfs _sysctl, and vm86 vm86old
    SYS_ADMIN            mount umount umount2 pivot_root swapon swapoff quotactl quotactl_fd lookup_dcookie
                         unshare setns, the new mount API (fsopen fsconfig fsmount fspick open_tree open_tree_attr
                         move_mount mount_setattr), clone with any namespace flag (CLONE_NEWNS, NEWUTS, NEWIPC,
                         NEWUSER, NEWPID, NEWNET, NEWCGROUP: one masked-equality rule per flag on the flags
                         argument, as one rule of a deny list cannot say "any of these bits"), and clone3, which
                         fails with ENOSYS instead (its flags are in memory, out of a filter's sight) so that libc
                         falls back to clone
    SYS_MODULE           init_module finit_module delete_module
    SYS_BOOT             reboot kexec_load kexec_file_load
    SYS_TIME             settimeofday stime clock_settime clock_settime64 clock_adjtime clock_adjtime64
    SYS_RAWIO            iopl ioperm
    SYS_PACCT            acct
    SYS_NICE             mbind set_mempolicy set_mempolicy_home_node get_mempolicy move_pages
    SYS_PTRACE           kcmp pidfd_getfd
    DAC_READ_SEARCH      open_by_handle_at; name_to_handle_at (or SYS_ADMIN)
    BPF or SYS_ADMIN     bpf
    PERFMON or SYS_ADMIN perf_event_open
    SYSLOG or SYS_ADMIN  syslog

personality stays allowed with any argument: Docker's profile lets through a handful of values (the Linux
personality, alone or with UNAME26 or ADDR_NO_RANDOMIZE, and the query); a deny list cannot say "all but these
values" (libseccomp cannot AND two comparisons of one argument), and what the call changes (the process's own
execution domain flags, its address layout) concerns the process itself. ptrace and process_vm_readv/writev are
allowed, as Docker's profile allows them on kernels from 4.8 (ptrace can no longer bypass a filter there; the
guest's kernel is newer), so strace and debuggers work as they do under docker; the kernel's own ptrace-attach
check still applies.

The filter covers the native architecture and the ones its kernel also runs (runc's list): x86 and x32 on x86_64,
arm on aarch64; calls of any other architecture kill the process (spec/seccomp.py). `resolve_docker_format` turns a
profile in Docker's format (archMap, per-entry includes / excludes by capability and architecture, `name`) into
the OCI form for one container, as containerd reads a Localhost profile.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

# platform.machine() -> the filter's architectures (the native one first), Go's name (Docker profiles' "arches")
ARCHITECTURES: dict[str, tuple[list[str], str]] = {
    "x86_64": (["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "amd64"),
    "aarch64": (["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], "arm64"),
}
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}

# include/uapi/linux/sched.h
CLONE_NAMESPACES = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                    "CLONE_NEWNET": 0x40000000}

# (calls, capabilities any one of which lets them through; none: denied whatever the capabilities)
DENIED: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("add_key", "keyctl", "request_key", "userfaultfd", "create_module", "get_kernel_syms", "query_module",
      "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old"), ()),
    (("mount", "umount", "umount2", "pivot_root", "swapon", "swapoff", "quotactl", "quotactl_fd", "lookup_dcookie",
      "unshare", "setns", "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "open_tree_attr", "move_mount",
      "mount_setattr"), ("SYS_ADMIN",)),
    (("init_module", "finit_module", "delete_module"), ("SYS_MODULE",)),
    (("reboot", "kexec_load", "kexec_file_load"), ("SYS_BOOT",)),
    (("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64"),
     ("SYS_TIME",)),
    (("iopl", "ioperm"), ("SYS_RAWIO",)),
    (("acct",), ("SYS_PACCT",)),
    (("mbind", "set_mempolicy", "set_mempolicy_home_node", "get_mempolicy", "move_pages"), ("SYS_NICE",)),
    (("kcmp", "pidfd_getfd"), ("SYS_PTRACE",)),
    (("open_by_handle_at",), ("DAC_READ_SEARCH",)),
    (("name_to_handle_at",), ("DAC_READ_SEARCH", "SYS_ADMIN")),
    (("bpf",), ("BPF", "SYS_ADMIN")),
    (("perf_event_open",), ("PERFMON", "SYS_ADMIN")),
    (("syslog",), ("SYSLOG", "SYS_ADMIN")),
)


def _names(capabilities: set[str] | frozenset[str]) -> set[str]:
    return {c.strip().upper().removeprefix("CAP_") for c in capabilities}


def architectures(machine: str | None = None) -> list[str]:
    """The filter's architectures for this machine (empty: the native one alone)."""
    return list(ARCHITECTURES.get(machine or platform.machine(), ([], ""))[0])


def default_profile(capabilities: set[str] | frozenset[str], machine: str | None = None) -> dict[str, Any]:
    """The default profile for a container holding `capabilities` (names with or without CAP_): an OCI
    linux.seccomp object (spec/seccomp.compile_filter compiles it)."""
    caps = _names(capabilities)
    machine = machine or platform.machine()
    calls: list[dict[str, Any]] = []
    for names, lifted_by in DENIED:
        if not caps & set(lifted_by):
            calls.append({"names": list(names), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM})
    if "SYS_ADMIN" not in caps:
        flags_arg = 1 if machine.startswith("s390") else 0  # s390's clone takes the stack first
        for flag in CLONE_NAMESPACES.values():
            calls.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                          "args": [{"index": flags_arg, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]})
        calls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": calls}
    arches = architectures(machine)
    if arches:
        profile["architectures"] = arches
    return profile


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _matches(criteria: object, caps: set[str], arch: str, include: bool) -> bool:
    """Whether a Docker profile entry's `includes` (all its capabilities held, its arches naming this one) or
    `excludes` (any of its capabilities held, or this arch named) applies. minKernel is taken as met: the guest
    runs a current kernel."""
    if not isinstance(criteria, dict):
        return include
    need, arches = _names(set(_strings(criteria.get("caps")))), set(_strings(criteria.get("arches")))
    if include:
        return (not need or need <= caps) and (not arches or arch in arches)
    return bool(need & caps) or arch in arches


def resolve_docker_format(profile: dict[str, Any], capabilities: set[str] | frozenset[str],
                          machine: str | None = None) -> dict[str, Any]:
    """A profile that may be in Docker's format, as the OCI linux.seccomp object for a container holding
    `capabilities`: `archMap` gives the architectures (this machine's entry and its sub-architectures) when
    `architectures` is absent, entries whose `includes` / `excludes` rule them out for this container are left
    out, a single `name` becomes `names`; the other fields pass as they are (compile_filter checks them)."""
    caps = _names(capabilities)
    machine = machine or platform.machine()
    arch = GO_ARCH.get(machine, machine)
    out = {k: v for k, v in profile.items() if k not in ("archMap", "syscalls")}
    arch_map = profile.get("archMap")
    if "architectures" not in profile and isinstance(arch_map, list):
        native = architectures(machine)[:1]
        for entry in arch_map:
            if isinstance(entry, dict) and entry.get("architecture") in native:
                out["architectures"] = [entry["architecture"], *_strings(entry.get("subArchitectures"))]
    calls = profile.get("syscalls")
    if not isinstance(calls, list):
        if calls is not None:
            out["syscalls"] = calls  # compile_filter names the error
        return out
    kept: list[Any] = []
    for call in calls:
        if not isinstance(call, dict):
            kept.append(call)
            continue
        if not _matches(call.get("includes"), caps, arch, True) or _matches(call.get("excludes"), caps, arch, False):
            continue
        entry = {k: v for k, v in call.items() if k not in ("includes", "excludes", "name", "comment")}
        if "names" not in entry and isinstance(call.get("name"), str):
            entry["names"] = [call["name"]]
        kept.append(entry)
    out["syscalls"] = kept
    return out
