"""Seccomp through the CRI: the runtime's default profile (spec/seccomp_default.py), compiled and loaded into a real
process on this machine; the CRI's choice of profile (cri/convert.py) from real CRI messages; and, on a real VM
through hyperd's CRI and crictl, critest's seccomp cases (RuntimeDefault, nil, Localhost, SYS_ADMIN, privileged)."""

from __future__ import annotations

import base64
import errno
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hypercontainer.errors import InvalidArgument
from hypercontainer.protocol.agent import check_seccomp
from hypercontainer.spec.pod import CAPABILITIES, DEFAULT_CAPABILITIES
from hypercontainer.spec.seccomp import compile_filter
from hypercontainer.spec.seccomp_default import CLONE_NAMESPACES, DENIED, default_profile, resolve_docker_format

try:
    from hypercontainer.cri.api import pb
except Exception:  # the generated modules are missing (`make cri-api`): the CRI tests skip
    pb = None

if pb is not None:
    from .test_cri import Cri, container_config, cri, crictl_bin, sandbox_config  # noqa: F401 - fixtures

needs_api = pytest.mark.skipif(pb is None, reason="the CRI API is not built: run `make cri-api`")
x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the probes use x86_64's clone argument order")

# critest's two profiles (cri-tools pkg/validate/security_context_linux.go)
BLOCK_HOSTNAME = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["sethostname"],
                                                                    "action": "SCMP_ACT_ERRNO"}]}
BLOCK_CHMOD = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod", "fchmodat"],
                                                                 "action": "SCMP_ACT_ERRNO"}]}
ALL_NAMESPACES = sum(CLONE_NAMESPACES.values())


def denied(profile: dict[str, Any]) -> set[str]:
    """The calls a profile denies unconditionally."""
    return {n for c in profile["syscalls"] if not c.get("args") for n in c["names"]}


# ---- the default profile --------------------------------------------------------------------------------------------
def test_default_profile_denies_the_documented_calls_without_capabilities() -> None:
    p = default_profile(set())
    assert p["defaultAction"] == "SCMP_ACT_ALLOW"
    assert {c["action"] for c in p["syscalls"]} == {"SCMP_ACT_ERRNO"}
    listed = {"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
              "finit_module", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
              "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "move_pages",
              "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
              "query_module", "quotactl", "reboot", "request_key",
              "set_mempolicy", "setns", "settimeofday", "stime", "swapon", "swapoff", "sysfs", "_sysctl", "umount",
              "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old", "syslog", "fsopen",
              "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr"}
    assert listed <= denied(p), listed - denied(p)
    assert "personality" not in denied(p) and "clone" not in denied(p)  # clone: only with namespace flags
    assert not {"ptrace", "process_vm_readv", "process_vm_writev"} & denied(p)  # docker's, on kernels >= 4.8
    errnos = {n: c["errnoRet"] for c in p["syscalls"] for n in c["names"]}
    assert errnos["clone3"] == errno.ENOSYS and errnos["mount"] == errnos["clone"] == errno.EPERM
    if platform.machine() == "x86_64":
        assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert default_profile(set(), machine="aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "architectures" not in default_profile(set(), machine="riscv64")  # the native one alone


def test_clone_gets_one_masked_rule_per_namespace_flag() -> None:
    rules = [c for c in default_profile(set(DEFAULT_CAPABILITIES))["syscalls"] if c["names"] == ["clone"]]
    assert len(rules) == len(CLONE_NAMESPACES) == 7
    flags = []
    for r in rules:
        (arg,) = r["args"]
        assert (arg["index"], arg["op"], arg["value"]) == (0, "SCMP_CMP_MASKED_EQ", arg["valueTwo"])
        assert bin(arg["value"]).count("1") == 1
        flags.append(arg["value"])
    assert sum(flags) == ALL_NAMESPACES == 0x7E020000
    s390 = [c for c in default_profile(set(), machine="s390x")["syscalls"] if c["names"] == ["clone"]]
    assert {c["args"][0]["index"] for c in s390} == {1}  # s390's clone takes the flags second


def test_capabilities_lift_what_they_cover() -> None:
    base = denied(default_profile(set(DEFAULT_CAPABILITIES)))
    assert base == denied(default_profile(set()))  # docker's default set lifts none of it
    for cap, calls in (("SYS_ADMIN", {"mount", "umount2", "unshare", "setns", "fsopen", "quotactl", "bpf",
                                      "perf_event_open", "syslog", "clone3", "pivot_root"}),
                       ("SYS_PTRACE", {"kcmp", "pidfd_getfd"}),
                       ("SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
                       ("SYS_BOOT", {"reboot", "kexec_load", "kexec_file_load"}),
                       ("SYS_TIME", {"settimeofday", "clock_settime", "clock_adjtime", "stime"}),
                       ("SYS_RAWIO", {"iopl", "ioperm"}), ("SYS_PACCT", {"acct"}),
                       ("SYS_NICE", {"mbind", "set_mempolicy", "get_mempolicy", "move_pages"}),
                       ("DAC_READ_SEARCH", {"open_by_handle_at"}), ("BPF", {"bpf"}),
                       ("PERFMON", {"perf_event_open"}), ("SYSLOG", {"syslog"})):
        for spelled in (cap, "CAP_" + cap):
            lifted = base - denied(default_profile({*DEFAULT_CAPABILITIES, spelled}))
            assert calls <= lifted, (cap, calls - lifted)
            assert lifted <= set().union(*(set(n) for n, caps in DENIED if cap in caps), {"clone3"}), (cap, lifted)
    admin = default_profile({"SYS_ADMIN"})["syscalls"]
    assert not [c for c in admin if c["names"] in (["clone"], ["clone3"])]  # namespaces allowed with SYS_ADMIN
    everything = denied(default_profile(set(CAPABILITIES)))
    assert everything == set().union(*(set(n) for n, caps in DENIED if not caps))  # only the always-denied remain
    assert "keyctl" in everything and "mount" not in everything


def test_default_profile_compiles_and_capabilities_change_the_program() -> None:
    programs = set()
    for caps in (set(), set(DEFAULT_CAPABILITIES), {"SYS_ADMIN"}, {"SYS_PTRACE"}, set(CAPABILITIES)):
        program, flags = compile_filter(default_profile(caps))
        assert flags == 0 and 10 < check_seccomp(program) <= 4096  # what the agent protocol takes
        programs.add(program)
    assert len(programs) == 4  # set() and docker's defaults lift nothing: one program


PROBES = r"""
import base64, ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"clone": 56, "clone3": 435, "unshare": 272, "keyctl": 250, "kcmp": 312, "mount": 165, "personality": 135,
      "getpid": 39}

def load(program):
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(program, len(program))
    prog = Fprog(len(program) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        sys.exit("load: " + os.strerror(ctypes.get_errno()))

def call(name, *args):
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    if r == 0 and name == "clone":
        os._exit(0)  # the new child: gone at once
    if r > 0 and name == "clone":
        os.waitpid(r, 0)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]

def probe(name, *args):
    # in a child of its own: a call that works (a new user namespace) changes nothing for the next
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, call(name, *args).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return os.read(r, 64).decode()

if sys.argv[1]:
    load(base64.b64decode(sys.argv[1]))
SIGCHLD = 17
print(json.dumps({
    "status": [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0],
    "getpid": probe("getpid"),
    "personality": probe("personality", 0xFFFFFFFF),
    "clone": probe("clone", SIGCHLD, 0, 0, 0, 0),
    "clone-newuts": probe("clone", SIGCHLD | 0x04000000, 0, 0, 0, 0),
    "clone-newnet-newpid": probe("clone", SIGCHLD | 0x40000000 | 0x20000000, 0, 0, 0, 0),
    "clone3": probe("clone3", 0, 0),
    "unshare-user": probe("unshare", 0x10000000),
    "keyctl": probe("keyctl", 0, -3, 0),
    "kcmp": probe("kcmp", os.getpid(), os.getpid(), 1, 0, 0),
    "mount": probe("mount", 0, 0, 0, 0, 0),
}))
"""


def run_probes(profile: dict[str, Any] | None) -> dict[str, str]:
    program = compile_filter(profile)[0] if profile is not None else ""
    r = subprocess.run([sys.executable, "-c", PROBES, program], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@x86_64
def test_the_default_filter_in_a_real_process() -> None:
    """The compiled profile loaded into a process here (as the agent loads it): the namespace flags of clone,
    unshare, keyctl, kcmp, mount fail with EPERM and clone3 with ENOSYS; plain clone, personality, getpid work.
    With SYS_ADMIN and SYS_PTRACE every call but keyctl does what it does without a filter."""
    free = run_probes(None)
    assert free["status"] == "0" and free["clone3"] != "ENOSYS" and free["keyctl"] != "EPERM"
    confined = run_probes(default_profile(set(DEFAULT_CAPABILITIES)))
    assert confined["status"] == "2"
    assert {k: confined[k] for k in ("clone-newuts", "clone-newnet-newpid", "unshare-user", "keyctl", "kcmp",
                                     "mount", "clone3")} == {
        "clone-newuts": "EPERM", "clone-newnet-newpid": "EPERM", "unshare-user": "EPERM", "keyctl": "EPERM",
        "kcmp": "EPERM", "mount": "EPERM", "clone3": "ENOSYS"}
    for k in ("getpid", "personality", "clone"):
        assert confined[k] == free[k] == "ok", (k, confined, free)
    lifted = run_probes(default_profile({*DEFAULT_CAPABILITIES, "SYS_ADMIN", "SYS_PTRACE"}))
    assert lifted["status"] == "2" and lifted["keyctl"] == "EPERM"
    assert {k: v for k, v in lifted.items() if k not in ("status", "keyctl")} == \
        {k: v for k, v in free.items() if k not in ("status", "keyctl")}, (lifted, free)


def test_malformed_lists_are_named() -> None:
    """What a Localhost file may hold: not-list architectures or args are InvalidArgument, not a TypeError."""
    with pytest.raises(InvalidArgument, match=r"linux\.seccomp\.architectures is not a list"):
        compile_filter({"defaultAction": "SCMP_ACT_ALLOW", "architectures": 5})
    with pytest.raises(InvalidArgument, match=r"syscalls\[0\]: args is not a list"):
        compile_filter({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "args": 5,
                                                                          "action": "SCMP_ACT_ERRNO"}]})


# ---- Docker's format, for Localhost profiles ----------------------------------------------------------------------
def test_docker_format_is_resolved_for_the_container() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"name": "getpid", "action": "SCMP_ACT_ALLOW", "comment": "one name"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]},
             "args": [{"index": 0, "value": ALL_NAMESPACES, "op": "SCMP_CMP_MASKED_EQ"}]}]}
    plain = resolve_docker_format(profile, set(DEFAULT_CAPABILITIES), machine="x86_64")
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert "archMap" not in plain and plain["defaultErrnoRet"] == 1
    assert [c["names"] for c in plain["syscalls"]] == [["read", "write", "exit_group"], ["getpid"], ["arch_prctl"],
                                                       ["clone"]]
    assert not any("includes" in c or "excludes" in c or "comment" in c for c in plain["syscalls"])
    admin = resolve_docker_format(profile, {"SYS_ADMIN"}, machine="aarch64")
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert [c["names"] for c in admin["syscalls"]] == [["read", "write", "exit_group"], ["getpid"], ["mount"]]
    assert compile_filter(resolve_docker_format(profile, set(), machine=platform.machine()))  # compiles
    assert resolve_docker_format(BLOCK_CHMOD, set()) == BLOCK_CHMOD  # the OCI form passes as it is


# ---- the CRI's choice ------------------------------------------------------------------------------------------------
def container(seccomp: Any = None, path: str = "", privileged: bool = False, add: tuple[str, ...] = (),
              drop: tuple[str, ...] = ()) -> Any:
    sc = pb.LinuxContainerSecurityContext(privileged=privileged, seccomp_profile_path=path,
                                          capabilities=pb.Capability(add_capabilities=add, drop_capabilities=drop))
    if seccomp is not None:
        sc.seccomp.CopyFrom(seccomp)
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="busybox"),
                              linux=pb.LinuxContainerConfig(security_context=sc))


def plan(config: Any) -> Any:
    from hypercontainer.cri import convert
    return convert.container(config, "c", "f" * 64, {})


def program(profile: dict[str, Any]) -> str:
    return compile_filter(profile)[0]


@needs_api
def test_profile_choice(tmp_path: Path) -> None:
    SP = pb.SecurityProfile
    chmod = tmp_path / "block-chmod.json"
    chmod.write_text(json.dumps(BLOCK_CHMOD))
    default = program(default_profile(set(DEFAULT_CAPABILITIES)))
    for config, want in (
            (container(), None),  # nil: unconfined (critest: Seccomp: 0)
            (container(SP()), default),  # empty: the enum's zero value, RuntimeDefault (critest: Seccomp: 2)
            (container(SP(profile_type=SP.RuntimeDefault)), default),
            (container(SP(profile_type=SP.Unconfined)), None),
            (container(SP(profile_type=SP.Localhost, localhost_ref=str(chmod))), program(BLOCK_CHMOD)),
            (container(path="runtime/default"), default), (container(path="docker/default"), default),
            (container(path="unconfined"), None), (container(path=f"localhost/{chmod}"), program(BLOCK_CHMOD)),
            # the SecurityProfile wins over the deprecated path
            (container(SP(profile_type=SP.Unconfined), path="runtime/default"), None),
            (container(SP(), path="unconfined"), default),
            (container(SP(profile_type=SP.Localhost, localhost_ref=str(chmod)), path="runtime/default"),
             program(BLOCK_CHMOD)),
            # privileged: no filter, whatever the profile (critest: sethostname works under block-host-name)
            (container(SP(profile_type=SP.Localhost, localhost_ref=str(chmod)), privileged=True), None),
            (container(SP(), privileged=True), None)):
        p = plan(config)
        assert p.overrides.get("seccomp") == want, config
        assert "seccomp_flags" not in p.overrides
        assert not [n for n in p.unapplied if "seccomp" in n] or config.linux.security_context.privileged
    assert "privileged container runs without a seccomp filter" in " ".join(
        plan(container(SP(), privileged=True)).unapplied)


@needs_api
def test_the_default_follows_the_capabilities() -> None:
    SP = pb.SecurityProfile

    def got(**kw: Any) -> str:
        return plan(container(SP(), **kw)).overrides["seccomp"]

    assert got(add=("SYS_ADMIN",)) == program(default_profile({*DEFAULT_CAPABILITIES, "SYS_ADMIN"}))
    assert got(add=("CAP_SYS_PTRACE",), drop=("MKNOD",)) == program(default_profile({"SYS_PTRACE"}))
    assert got(add=("ALL",)) == got(add=("ALL",), drop=("KILL",)) == program(default_profile(set(CAPABILITIES)))
    assert got(add=("ALL",), drop=("SYS_ADMIN",)) == program(default_profile(set(CAPABILITIES) - {"SYS_ADMIN"}))
    assert got(drop=("ALL",), add=("SYS_ADMIN",)) == program(default_profile({"SYS_ADMIN"}))
    assert got(drop=("ALL",)) == program(default_profile(set()))
    assert got(add=("SYS_ADMIN",)) != got()


@needs_api
def test_localhost_profiles(tmp_path: Path) -> None:
    SP = pb.SecurityProfile

    def local(path: Path | str, **kw: Any) -> Any:
        return plan(container(SP(profile_type=SP.Localhost, localhost_ref=str(path)), **kw))

    flagged = tmp_path / "flagged.json"
    flagged.write_text(json.dumps({**BLOCK_HOSTNAME, "flags": ["SECCOMP_FILTER_FLAG_LOG"]}))
    assert local(flagged).overrides["seccomp_flags"] == 2
    docker = tmp_path / "docker.json"
    docker.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}}]}))
    assert local(docker).overrides["seccomp"] == program(BLOCK_HOSTNAME)
    # with SYS_ADMIN nothing is left but the default: a filter that allows all (still a filter, as runc loads it)
    assert local(docker, add=("SYS_ADMIN",)).overrides["seccomp"] == program({"defaultAction": "SCMP_ACT_ALLOW"})
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "bad.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_BOGUS"}))
    (tmp_path / "notify.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}))
    (tmp_path / "args.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": 5}))
    (tmp_path / "big.json").write_text(" " * (2 << 20))
    (tmp_path / "unreadable").mkdir()
    for path, why in ((tmp_path / "missing.json", "cannot be read: No such file or directory"),
                      (tmp_path / "unreadable", "cannot be read: Is a directory"),
                      (tmp_path / "text.json", "is not JSON"), (tmp_path / "list.json", "is not a JSON object"),
                      (tmp_path / "bad.json", "unknown action 'SCMP_ACT_BOGUS'"),
                      (tmp_path / "notify.json", "SCMP_ACT_NOTIFY cannot be honoured"),
                      (tmp_path / "args.json", "architectures is not a list"),
                      (tmp_path / "big.json", "is larger than"),
                      ("relative.json", "must be an absolute path"), ("", "must be an absolute path")):
        with pytest.raises(InvalidArgument, match=why) as e:
            local(path)
        assert f"seccomp Localhost profile '{path}'" in e.value.message
    with pytest.raises(InvalidArgument, match=r"missing\.json"):
        plan(container(path=f"localhost/{tmp_path / 'missing.json'}"))
    with pytest.raises(InvalidArgument, match="seccomp_profile_path 'other'"):
        plan(container(path="other"))
    # a privileged container's profile is not even read (containerd does not either)
    assert "seccomp" not in local(tmp_path / "missing.json", privileged=True).overrides


@needs_api
def test_the_overrides_reach_the_agent_protocol(tmp_path: Path) -> None:
    from hypercontainer.pod.container import with_overrides
    from hypercontainer.protocol.agent import ContainerRequest
    p = plan(container(pb.SecurityProfile()))
    fields = with_overrides({"arg": ["sh"]}, p.overrides)
    req = ContainerRequest.from_fields(fields, id="c", stream=2)
    assert req.process.seccomp == p.overrides["seccomp"] and base64.b64decode(req.process.seccomp)


# ---- on a real VM: critest's cases through crictl --------------------------------------------------------------
@needs_api
@pytest.mark.vm
def test_seccomp_in_a_vm(cri: Cri, tmp_path: Path) -> None:
    """One sandbox, one VM, a container per case; each `crictl exec` is a process of the container (it gets the
    container's filter)."""
    profiles = tmp_path / "seccomp-tests"
    profiles.mkdir()
    (profiles / "block-host-name.json").write_text(json.dumps(BLOCK_HOSTNAME))
    (profiles / "block-chmod.json").write_text(json.dumps(BLOCK_CHMOD))
    sandbox_json = cri.write("seccomp-sandbox.json", sandbox_config(cri, "seccomp"))
    sid = cri.crictl("runp", sandbox_json).stdout.strip()
    try:
        def start(name: str, **sc: Any) -> str:
            cfg = container_config(name, ["sleep", "3600"])
            cfg["linux"]["security_context"].update(sc)
            cid = cri.crictl("create", sid, cri.write(f"{name}.json", cfg), sandbox_json).stdout.strip()
            cri.crictl("start", cid)
            return cid

        def run(cid: str, *cmd: str) -> tuple[int, str]:
            r = cri.crictl("exec", "-s", cid, *cmd, check=False)
            return r.returncode, (r.stdout + r.stderr).strip()

        default = start("default", seccomp={})  # an empty SecurityProfile: RuntimeDefault
        nil = start("nil")
        local = start("local", seccomp={"profile_type": 2, "localhost_ref": str(profiles / "block-chmod.json")})
        host_blocked = start("hostblocked", seccomp={"profile_type": 2,
                                                     "localhost_ref": str(profiles / "block-host-name.json")},
                             capabilities={"add_capabilities": ["SYS_ADMIN"]})
        privileged = start("privileged", privileged=True,
                           seccomp={"profile_type": 2, "localhost_ref": str(profiles / "block-host-name.json")})
        admin = start("admin", seccomp={"profile_type": 0}, capabilities={"add_capabilities": ["SYS_ADMIN"]})

        status = ["grep", "Seccomp:", "/proc/self/status"]
        assert run(default, *status) == (0, "Seccomp:\t2")
        assert run(nil, *status) == (0, "Seccomp:\t0")
        assert run(privileged, *status) == (0, "Seccomp:\t0")
        assert run(local, *status) == (0, "Seccomp:\t2")
        # RuntimeDefault: a user namespace (which the kernel gives without any capability) is refused, as is mount
        code, out = run(default, "unshare", "-U", "true")
        assert code != 0 and "Operation not permitted" in out, out
        code, out = run(default, "mount", "-t", "tmpfs", "none", "/tmp")
        assert code != 0 and "permission denied" in out, out  # busybox's words for EPERM
        assert run(nil, "unshare", "-U", "true")[0] == 0  # without a filter it works
        assert run(admin, "unshare", "-U", "true")[0] == 0  # and with SYS_ADMIN under RuntimeDefault
        assert run(admin, "mount", "-t", "tmpfs", "none", "/tmp")[0] == 0
        # Localhost: critest's block-chmod, block-host-name with SYS_ADMIN; privileged ignores the profile
        code, out = run(local, "chmod", "400", "/")
        assert code != 0 and "Operation not permitted" in out, out
        assert run(nil, "chmod", "755", "/tmp")[0] == 0
        code, out = run(host_blocked, "hostname", "ANewHostName")
        assert code != 0, out
        assert run(privileged, "hostname", "ANewHostName")[0] == 0
    finally:
        cri.crictl("stopp", sid, check=False)
        cri.crictl("rmp", sid, check=False)


def compiled_in_a_process(kept: Path, profile: dict) -> tuple[str, int]:
    """compile_filter() in a new process that keeps compiled filters in `kept` (runv's shims: keep_compiled())."""
    code = ("import json, sys; from pathlib import Path; from hypercontainer.spec import seccomp; "
            "seccomp.keep_compiled(Path(sys.argv[1])); "
            "print(json.dumps(seccomp.compile_filter(json.loads(sys.argv[2]))))")
    r = subprocess.run([sys.executable, "-c", code, str(kept), json.dumps(profile)], capture_output=True, text=True,
                       timeout=60, check=True)
    program, flags = json.loads(r.stdout)
    return program, flags


def test_compiled_filters_kept_for_the_next_process(tmp_path: Path) -> None:
    """A filter one process compiled is read by the next (a file per profile and libseccomp version); a file that
    is not JSON of the right shape is compiled again, and a directory others may write is not used."""
    profile = default_profile(DEFAULT_CAPABILITIES)
    kept = tmp_path / "kept"
    first = compiled_in_a_process(kept, profile)
    assert first == compile_filter(profile)
    [file] = list(kept.iterdir())
    allow = compile_filter({"defaultAction": "SCMP_ACT_ALLOW"})
    file.write_text(json.dumps({"program": allow[0], "flags": 0}))  # what the next process gets is this file's
    assert compiled_in_a_process(kept, profile) == (allow[0], 0)
    file.write_text("not json")
    assert compiled_in_a_process(kept, profile) == first
    file.write_text(json.dumps({"program": allow[0], "flags": 0}))
    kept.chmod(0o777)  # anyone's to write: neither read nor written
    assert compiled_in_a_process(kept, profile) == first
