"""What config.json asks of the container's security, applied in the guest through runv: the memory limit (an OOM
kill in the container's own cgroup), maskedPaths / readonlyPaths (runc's lists without them), and linux.seccomp
compiled on the host to the BPF program the agent loads, for the container and for `runv exec`. Real VMs (the
runv fixtures of test_runv.py); the compiler and the config's fields without one."""

from __future__ import annotations

import base64
import errno
import json
import time
from pathlib import Path

import pytest

from hypercontainer.cli.runv.state import Store
from hypercontainer.errors import InvalidArgument
from hypercontainer.protocol.agent import ContainerRequest, check_seccomp
from hypercontainer.spec import oci
from hypercontainer.spec.seccomp import compile_filter
from hypercontainer.storage.mount import mounts_under

from .test_runv import Runv, bundle, configure, rootfs_tar, runv, sandbox_and_member  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(600)

NO_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}

# A profile in the manner of docker's default: everything refused (EPERM) but an allow list of what ordinary
# programs use; clone without namespace flags; clone3 answered ENOSYS so that libcs fall back to clone.
ALLOWED_NAMES = """
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_getres clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fallocate fchdir fchmod fchmodat fchown fchownat fcntl fdatasync
fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex futex_waitv futimesat
getcpu getcwd getdents getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid
getppid getpriority getrandom getresgid getresuid getrlimit get_robust_list getrusage getsid getsockname getsockopt
gettid gettimeofday getuid getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl
io_destroy io_getevents io_pgetevents ioprio_get ioprio_set io_setup io_submit kill lchown lgetxattr link linkat
listen listxattr llistxattr lremovexattr lseek lsetxattr lstat madvise membarrier memfd_create mincore mkdir mkdirat
mknod mknodat mlock mlock2 mlockall mmap modify_ldt mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedsend mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat open
openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 poll ppoll prctl pread64 preadv preadv2 prlimit64
pselect6 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg rename
renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop sendfile
sendmmsg sendmsg sendto setfsgid setfsuid setgid setgroups setitimer setpgid setpriority setregid setresgid
setresuid setreuid setrlimit set_robust_list setsid setsockopt set_tid_address setuid setxattr shmat shmctl shmdt
shmget shutdown sigaltstack signalfd signalfd4 socket socketpair splice stat statfs statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
timer_settime timerfd_create timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat utime
utimensat utimes vfork vmsplice wait4 waitid write writev
"""
ALLOWED = ALLOWED_NAMES.split()
DOCKER_LIKE = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ALLOWED, "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
    ],
}


def linux(bundle: Path, **settings: object) -> None:  # noqa: F811
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"].update(settings)
    (bundle / "config.json").write_text(json.dumps(cfg))


def processes_of(runv: Runv, cid: str) -> list[str]:  # noqa: F811
    """Processes (a shim, QEMU, virtiofsd) whose command line names the container's state or runtime dir."""
    marks = (str(runv.root / cid).encode(), str(Store(runv.root).rundir(cid)).encode())
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if any(m in cmdline for m in marks):
            found.append(cmdline.decode(errors="replace"))
    return found


# ---- no VM: the config's fields, the compiler ---------------------------------------------------------------------
def _config(tmp_path: Path, **linux_: object) -> oci.Config:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                                      "process": {"args": ["sh"]}, "linux": linux_}))
    return oci.load(tmp_path)


def test_container_fields_from_the_config(tmp_path: Path) -> None:
    cfg = _config(tmp_path, resources={"memory": {"limit": 15 << 20, "swap": 15 << 20}}, maskedPaths=[],
                  readonlyPaths=["/data//x/", "/proc/sys"], seccomp=NO_MKDIR)
    f = oci.container_security(cfg)
    assert f["memory_limit"] == 15 << 20 and f["masked_paths"] == [] and f["readonly_paths"] == ["/data/x", "/proc/sys"]
    assert check_seccomp(f["seccomp"]) > 3 and "seccomp_flags" not in f
    assert not any("seccomp" in w or "memory" in w or "Paths" in w for w in oci.unsupported(cfg))
    req = ContainerRequest.from_fields({"arg": ["sh"], **f}, id="ctr", stream=2)  # what the agent gets
    assert req.masked_paths == () and req.to_fields()["masked_paths"] == [""]
    assert oci.container_security(_config(tmp_path, resources={"memory": {"limit": -1}})) == {}  # none of it
    for bad, why in ((dict(maskedPaths=["relative"]), "linux.maskedPaths: want a list of absolute paths"),
                     (dict(readonlyPaths=["/x/.."]), "cannot apply to / itself"),
                     (dict(seccomp={"defaultAction": "SCMP_ACT_NOTIFY"}), "SCMP_ACT_NOTIFY cannot be honoured")):
        with pytest.raises(InvalidArgument, match=why):
            _config(tmp_path, **bad)


@pytest.mark.parametrize(("profile", "why"), [
    ({"defaultAction": "SCMP_ACT_BOGUS"}, "defaultAction: unknown action 'SCMP_ACT_BOGUS'"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY cannot be honoured"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]},
     r"syscalls\[0\]: SCMP_ACT_NOTIFY"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]},
     "unknown operator 'SCMP_CMP_ABOUT'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "argument index 6"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_LOG",
                                                       "errnoRet": 5}]}, "errnoRet with SCMP_ACT_LOG"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}, "unknown architecture"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}, "unknown flag"),
])
def test_bad_profiles_are_named(profile: dict, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        compile_filter(profile)


def test_compiled_filters() -> None:
    """Unknown names are skipped (runc does so too), rules equal to the default left out, LOG/SPEC_ALLOW passed
    on, TSYNC needs nothing; the docker-like profile fits the kernel's limit."""
    known, _ = compile_filter(NO_MKDIR)
    with_unknown, _ = compile_filter({**NO_MKDIR, "syscalls": [
        {**NO_MKDIR["syscalls"][0], "names": ["mkdir", "no_such_call", "mkdirat"]},  # type: ignore[dict-item]
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})
    assert with_unknown == known
    _, flags = compile_filter({**NO_MKDIR, "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                                     "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]})
    assert flags == 2 | 4
    program, flags = compile_filter(DOCKER_LIKE)
    assert 100 < check_seccomp(program) <= 4096 and flags == 0
    assert len(base64.b64decode(program)) % 8 == 0


# ---- in VMs -----------------------------------------------------------------------------------------------------
def test_memory_limit_oom_kills_the_container(runv: Runv, bundle: Path) -> None:  # noqa: F811
    """critest's case: 15 MiB and a dd with a 20 MiB buffer: the guest's OOM killer ends it, 137; the shim's
    state records the OOM kill; the VM itself is sized as before (it must hold the limit and the guest)."""
    configure(bundle, ["dd", "if=/dev/zero", "of=/dev/null", "bs=20M"])
    linux(bundle, resources={"memory": {"limit": 15 << 20}})
    t0 = time.monotonic()
    assert runv.detached("run", "-d", "--bundle", str(bundle), "oom1").returncode == 0
    runv.wait_status("oom1", "stopped", timeout=60)
    st = json.loads((runv.root / "oom1" / "state.json").read_text())
    assert (st["exit_code"], st["oom_killed"]) == (137, True), st
    assert time.monotonic() - t0 < 60
    assert "linux.resources.memory" not in runv.log.read_text()  # applied, not reported as ignored
    # one 20 MiB block without the limit: the VM (256 MiB) has room for it
    configure(bundle, ["dd", "if=/dev/zero", "of=/dev/null", "bs=20M", "count=1"])
    linux(bundle, resources={})
    r = runv("run", "--bundle", str(bundle), "oom2")
    assert r.returncode == 0, r.stderr


def test_masked_and_readonly_paths(runv: Runv, bundle: Path) -> None:  # noqa: F811
    root = bundle / "rootfs"
    (root / "etc" / "secret-file").write_text("password\n")
    (root / "etc" / "secret-dir").mkdir()
    (root / "etc" / "secret-dir" / "key").write_text("key\n")
    (root / "data-path").mkdir()
    script = ("cat /etc/secret-file; ls /etc/secret-dir; touch /data-path/x && echo WROTE-DATA; "
              "for p in /proc/timer_list /proc/sys; do grep -c \" $p \" /proc/self/mountinfo; done; true")
    configure(bundle, ["sh", "-c", script], readonly=False)
    linux(bundle, maskedPaths=["/etc/secret-file", "/etc/secret-dir"], readonlyPaths=["/data-path"])
    r = runv("run", "--bundle", str(bundle), "p1")
    # masked: empty; read-only: refused; runc's defaults replaced (nothing mounted on timer_list or /proc/sys)
    assert (r.returncode, r.stdout.split()) == (0, [b"0", b"0"]), r
    assert b"Read-only file system" in r.stderr
    # Without the keys: runc's defaults, as before
    cfg = json.loads((bundle / "config.json").read_text())
    del cfg["linux"]["maskedPaths"], cfg["linux"]["readonlyPaths"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(bundle), "p2")
    assert (r.returncode, r.stdout.split()) == (0, [b"password", b"key", b"WROTE-DATA", b"1", b"1"]), r
    configure(bundle, ["sh", "-c", "wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/domainname || echo RO"])
    r = runv("run", "--bundle", str(bundle), "p3")
    assert r.stdout.split() == [b"0", b"RO"], r


def test_seccomp_for_the_container_and_exec(runv: Runv, bundle: Path) -> None:  # noqa: F811
    """mkdir refused with EPERM in the container and in `runv exec` into it (with and without no_new_privs:
    the filter goes in before or after the capability steps); a docker-like default-deny profile still runs a
    shell."""
    configure(bundle, ["sh", "-c", "mkdir /tmp/x; grep ^Seccomp: /proc/self/status; sleep 300"], readonly=False)
    linux(bundle, seccomp=NO_MKDIR)
    assert runv.detached("run", "-d", "--bundle", str(bundle), "sc1").returncode == 0
    r = runv("exec", "sc1", "sh", "-c", "mkdir /tmp/y || echo refused; grep ^Seccomp: /proc/self/status")
    assert r.stdout.split() == [b"refused", b"Seccomp:", b"2"] and b"Operation not permitted" in r.stderr, r
    proc = {"args": ["mkdir", "/tmp/z"], "cwd": "/", "noNewPrivileges": True}
    (bundle / "p.json").write_text(json.dumps(proc))
    r = runv("exec", "--process", str(bundle / "p.json"), "sc1")
    assert r.returncode == 1 and b"Operation not permitted" in r.stderr, r
    assert runv("exec", "sc1", "ls", "/tmp").stdout == b""  # nothing was made
    assert "linux.seccomp" not in runv.log.read_text()
    assert runv("delete", "--force", "sc1").returncode == 0

    configure(bundle, ["sh", "-c", "echo ok; mkdir /tmp/d && echo made; grep ^Seccomp: /proc/self/status"],
              readonly=False, noNewPrivileges=True)
    linux(bundle, seccomp=DOCKER_LIKE)
    r = runv("run", "--bundle", str(bundle), "sc2")
    assert (r.returncode, r.stdout.split()) == (0, [b"ok", b"made", b"Seccomp:", b"2"]), r.stderr
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["noNewPrivileges"] = False  # the filter goes in before setuid and capset: they must pass it
    (bundle / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(bundle), "sc3")
    assert (r.returncode, r.stdout.split()[0]) == (0, b"ok"), r.stderr


def test_a_bad_seccomp_profile_fails_create_and_leaves_nothing(runv: Runv, bundle: Path) -> None:  # noqa: F811
    configure(bundle, ["true"])
    linux(bundle, seccomp={"defaultAction": "SCMP_ACT_ALLOW",
                           "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_SOMETIMES"}]})
    r = runv.detached("create", "--bundle", str(bundle), "bad1")
    assert r.returncode == 1 and b"unknown action 'SCMP_ACT_SOMETIMES'" in r.stderr, r.stderr
    assert b"linux.seccomp.syscalls[0]" in r.stderr
    assert not (runv.root / "bad1").exists() and runv("state", "bad1").returncode == 1
    assert not Store(runv.root).rundir("bad1").exists() and not processes_of(runv, "bad1")
    assert not mounts_under(runv.root)


def test_a_member_of_a_sandbox_gets_them_too(runv: Runv, bundle: Path, tmp_path: Path,  # noqa: F811
                                             rootfs_tar: Path) -> None:  # noqa: F811
    """A container joining a CRI sandbox's VM: its own filter, masked paths and memory limit (its cgroup in the
    sandbox's VM), none of which the sandbox's container has."""
    cfg, member = sandbox_and_member(runv, bundle, tmp_path, rootfs_tar)
    (member / "rootfs" / "etc" / "secret-file").write_text("password\n")
    cfg["process"]["args"] = ["sh", "-c", "cat /etc/secret-file; mkdir /tmp/m || echo refused"]
    cfg["linux"].update(seccomp=NO_MKDIR, maskedPaths=["/etc/secret-file"])
    (member / "config.json").write_text(json.dumps(cfg))
    r = runv("run", "--bundle", str(member), "m1")
    assert (r.returncode, r.stdout) == (0, b"refused\n") and b"Operation not permitted" in r.stderr, r
    cfg["process"]["args"] = ["dd", "if=/dev/zero", "of=/dev/null", "bs=20M"]
    cfg["linux"]["resources"] = {"memory": {"limit": 15 << 20}}
    (member / "config.json").write_text(json.dumps(cfg))
    assert runv.detached("run", "-d", "--bundle", str(member), "m2").returncode == 0
    runv.wait_status("m2", "stopped", timeout=60)
    st = json.loads((runv.root / "m2" / "state.json").read_text())
    assert (st["exit_code"], st["oom_killed"]) == (137, True), st
    r = runv("exec", "sb", "sh", "-c", "mkdir /tmp/s && cat /etc/passwd >/dev/null && echo sandbox-free")
    assert r.stdout == b"sandbox-free\n", r
