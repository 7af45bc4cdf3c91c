"""The container boundary inside the VM (issue 12, the guest side), each test written as the attacker: root in a
busybox container, trying to reach the agent, to use capabilities, /proc paths and device nodes it should not
have, and the records the host keeps of a guest OOM kill."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from hypercontainer.spec.pod import CAPABILITIES

from .conftest import Daemon

pytestmark = pytest.mark.vm

DEFAULT_CAPS = 0xA80425FB  # docker's and runc's default set
ALL_CAPS = (1 << len(CAPABILITIES)) - 1
MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware")


def sh(d: Daemon, script: str, *flags: str) -> subprocess.CompletedProcess:
    return d.hyperctl("run", "--rm", *flags, "busybox", "sh", "-c", script)


def status(out: bytes) -> dict[str, str]:
    """'Key:\\tvalue' lines of /proc/PID/status."""
    return dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)


def wait_exited(d: Daemon, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = json.loads(d.hyperctl("inspect", name, check=True).stdout)
        if all(c["state"] == "exited" for c in info["containers"]):
            return info
        time.sleep(0.3)
    raise AssertionError(f"{name} did not exit")


def test_pid_1_is_the_container_and_the_agent_is_out_of_reach(hyperd: Daemon) -> None:
    """Before: PID 1 was the agent (/init), and /proc/1/root/run/hc/share was the pod share, writable."""
    r = sh(hyperd, "tr '\\0' ' ' < /proc/1/cmdline; echo; "
                   "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done; "
                   "ls /proc/1/root/run/hc/share >/dev/null 2>&1 && echo SHARE-REACHABLE; "
                   "echo x > /proc/1/root/run/hc/share/x 2>/dev/null && echo SHARE-WRITABLE; "
                   "grep -c . /proc/1/root/proc/1/cmdline; true")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("sh -c tr"), lines  # our own shell is PID 1
    cmdlines = [line for line in lines[1:] if line and not line.isdigit()]
    assert not any(c.split(" ")[0] in ("/init", "init") for c in cmdlines), cmdlines  # the agent is no PID here
    assert "SHARE-REACHABLE" not in lines and "SHARE-WRITABLE" not in lines


def test_default_capabilities_and_no_sys_admin(hyperd: Daemon) -> None:
    """Before: CapEff was every capability and mount(2) worked (CAP_SYS_ADMIN)."""
    r = sh(hyperd, "cat /proc/self/status; mount -t tmpfs none /tmp && echo MOUNTED; true")
    st = status(r.stdout)
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(st[key], 16) == DEFAULT_CAPS, (key, st[key])
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"] == "0"
    assert b"MOUNTED" not in r.stdout and b"permission denied" in r.stderr  # busybox's words for EPERM
    # A non-root user has none in effect, as with docker.
    st = status(sh(hyperd, "cat /proc/self/status", "-u", "1000").stdout)
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == DEFAULT_CAPS


def test_cap_add_drop_privileged_and_no_new_privileges(hyperd: Daemon) -> None:
    r = sh(hyperd, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; mount -t tmpfs none /tmp && echo MOUNTED",
           "--cap-add", "SYS_ADMIN", "--cap-drop", "CAP_NET_RAW", "--security-opt", "no-new-privileges")
    st = status(r.stdout)
    assert int(st["CapEff"], 16) == (DEFAULT_CAPS | 1 << 21) & ~(1 << 13), st
    assert st["NoNewPrivs"] == "1" and b"MOUNTED" in r.stdout
    st = status(sh(hyperd, "cat /proc/self/status", "--cap-drop", "ALL", "--cap-add", "chown").stdout)
    assert int(st["CapEff"], 16) == 1 and int(st["CapBnd"], 16) == 1
    st = status(sh(hyperd, "cat /proc/self/status", "--privileged").stdout)
    assert int(st["CapEff"], 16) & ALL_CAPS == ALL_CAPS


def test_exec_gets_the_containers_capabilities_and_pid_namespace(hyperd: Daemon) -> None:
    name = "sec-exec"
    hyperd.hyperctl("run", "-d", "--name", name, "--cap-add", "SYS_PTRACE", "--security-opt", "no-new-privileges",
                    "busybox", "sleep", "600", check=True)
    try:
        r = hyperd.hyperctl("exec", name, "sh", "-c", "cat /proc/self/status; tr '\\0' ' ' < /proc/1/cmdline")
        assert r.returncode == 0, r.stderr
        st = status(r.stdout)
        assert int(st["CapEff"], 16) == DEFAULT_CAPS | 1 << 19 and st["NoNewPrivs"] == "1"
        assert r.stdout.decode().splitlines()[-1].strip() == "sleep 600"  # PID 1 of the ns it joined
        # The host's signals still work on the container's PID 1 (no handler for TERM): exit 143 as before.
        hyperd.hyperctl("kill", "-s", "TERM", name, check=True)
        info = wait_exited(hyperd, name, 60)
        assert info["containers"][0]["exit_code"] == 143
    finally:
        hyperd.hyperctl("rm", "-f", name)


def test_masked_and_read_only_paths(hyperd: Daemon) -> None:
    """Before: /proc/timer_list & co. were readable and /proc/sys, /proc/sysrq-trigger writable."""
    probe = "for p in " + " ".join(MASKED) + "; do [ -e $p ] && echo $p $(cat $p 2>/dev/null | wc -c); done"
    privileged = dict(line.split() for line in sh(hyperd, probe, "--privileged").stdout.decode().splitlines())
    present = [p for p, n in privileged.items() if int(n) > 0]
    assert present, privileged  # at least one masked path with content exists in this guest kernel
    default = dict(line.split() for line in sh(hyperd, probe).stdout.decode().splitlines())
    assert all(default.get(p, "0") == "0" for p in present), default
    # Read-only: /proc/sys, /proc/irq (and /proc/sysrq-trigger, /proc/bus, /proc/fs where the kernel has them), /sys.
    targets = ["/proc/sys/vm/drop_caches", "/proc/irq/default_smp_affinity", "/proc/sysrq-trigger",
               "/sys/class/net/lo/mtu"]
    r = sh(hyperd, "for f in " + " ".join(targets) + "; do [ -e $f ] || continue; echo $f; "
                   "cat $f > /tmp/v; cat /tmp/v > $f && echo WRITTEN $f; done")
    present = [t for t in targets if t.encode() + b"\n" in r.stdout]
    assert len(present) >= 3 and b"WRITTEN" not in r.stdout, r.stdout
    assert r.stderr.count(b"Read-only file system") == len(present), r.stderr


def test_device_nodes_a_container_makes_cannot_be_used(hyperd: Daemon) -> None:
    """Before: a node for the serial console (4:64) took writes, flooding the host's console.log."""
    # On /dev (the container's tmpfs, not nodev): the root filesystem on the pod share refuses nodes anyway.
    r = sh(hyperd, "mknod /dev/s c 4 64 && echo MADE; echo x > /dev/s && echo SERIAL-WRITTEN; "
                   "mknod /dev/k c 1 11; head -c 1 /dev/k >/dev/null && echo KMSG-READ; "
                   "echo ok > /dev/null && head -c 4 /dev/urandom | wc -c")
    out = r.stdout.decode().split()
    assert "MADE" in out and "SERIAL-WRITTEN" not in out and "KMSG-READ" not in out, (out, r.stderr)
    assert out[-1] == "4" and b"Operation not permitted" in r.stderr
    # Privileged: all devices.
    r = sh(hyperd, "mknod /dev/k c 1 11 && head -c 1 /dev/k >/dev/null && echo KMSG-READ", "--privileged")
    assert b"KMSG-READ" in r.stdout, r.stderr


def _two_container_pod(tmp_path: Path, name: str, shared: bool) -> Path:
    watcher = ("for i in $(seq 50); do ps -o pid,comm,args | grep -q '[s]leep 400' && break; sleep 0.1; done; "
               "ps -o pid,user,args; echo; head -2 /proc/1/status; grep -E '^(Uid|CapEff)' /proc/1/status; "
               "ls /proc/1/root/ 2>&1 | head -3; echo end")
    spec = {"name": name, "share_process_namespace": shared, "containers": [
        {"name": "a", "image": "busybox", "command": ["sleep", "400"]},
        {"name": "b", "image": "busybox", "command": ["sh", "-c", watcher]}]}
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(spec))
    return f


def test_shared_process_namespace_option(hyperd: Daemon, tmp_path: Path) -> None:
    """share_process_namespace: b sees a's processes; PID 1 is a pause process (nobody, no capabilities, an empty
    root), not the agent. Without it, b sees only its own."""
    for shared in (True, False):
        name = f"pidns-{int(shared)}"
        hyperd.hyperctl("run", "-f", str(_two_container_pod(tmp_path, name, shared)), check=True)
        try:
            deadline = time.monotonic() + 120
            while not (logs := hyperd.hyperctl("logs", "-c", "b", name)).stdout.endswith(b"\nend\n"):
                assert time.monotonic() < deadline, (logs, hyperd.hyperctl("inspect", name).stdout)
                time.sleep(0.5)
            out = logs.stdout
            text = out.decode()
            if shared:
                assert "sleep 400" in text, text
                st = status(out)
                assert st["Name"] == "pause" and st["Uid"].split()[0] == "65534", text
                assert int(st["CapEff"], 16) == 0
                assert "/init" not in text and "hc" not in text.split("end")[0].split("CapEff")[-1], text
            else:
                assert "sleep 400" not in text and "Name:\tsh" in text, text
        finally:
            hyperd.hyperctl("rm", "-f", name)


def test_guest_oom_kill_is_recorded(hyperd: Daemon) -> None:
    """A container that eats the VM's memory: the guest kernel OOM-kills it; exit 137 and OOMKilled in inspect.
    Before: 137 alone, indistinguishable from kill -9."""
    name = "oomer"
    eat = "mkfifo /dev/f; cat /dev/zero > /dev/f & exec tail /dev/f"  # a line that never ends, all in tail's memory
    hyperd.hyperctl("run", "-d", "--name", name, "--memory", "64", "busybox", "sh", "-c", eat, check=True)
    try:
        info = wait_exited(hyperd, name, 300)
        c = info["containers"][0]
        assert c["exit_code"] == 137 and c["OOMKilled"] is True, c
        events = hyperd.hyperctl("events", "--since", "10m", "--until", "0s", check=True).stdout.decode()
        assert any(f" pod oom {info['id'][:12]} " in line and "container=oomer" in line
                   for line in events.splitlines()), events
    finally:
        hyperd.hyperctl("rm", "-f", name)
    # A plain SIGKILL is not an OOM kill.
    hyperd.hyperctl("run", "-d", "--name", "killed9", "busybox", "sleep", "300", check=True)
    try:
        hyperd.hyperctl("kill", "-s", "KILL", "killed9", check=True)
        c = wait_exited(hyperd, "killed9", 120)["containers"][0]
        assert c["exit_code"] == 137 and c["OOMKilled"] is False, c
    finally:
        hyperd.hyperctl("rm", "-f", "killed9")
