"""End to end through hyperctl -> hyperd -> QEMU -> agent, with real VMs (TCG here, KVM where it works)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import Daemon
from .layers import docker_archive, entry, layer

pytestmark = pytest.mark.vm


def run(d: Daemon, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return d.hyperctl("run", "--rm", *args, input=input)


def qemu_pids(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return out.split()


def test_echo_runs_in_a_vm(hyperd: Daemon) -> None:
    r = run(hyperd, "busybox", "echo", "hello from a VM")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hello from a VM\n", b"")


def test_exit_code(hyperd: Daemon) -> None:
    assert run(hyperd, "busybox", "sh", "-c", "exit 17").returncode == 17


def test_stdout_and_stderr_apart(hyperd: Daemon) -> None:
    r = run(hyperd, "busybox", "sh", "-c", "echo to-out; echo to-err >&2")
    assert (r.stdout, r.stderr) == (b"to-out\n", b"to-err\n")


def test_stdin_piped(hyperd: Daemon) -> None:
    r = run(hyperd, "-i", "busybox", "cat", input=b"abc\n")
    assert (r.returncode, r.stdout) == (0, b"abc\n")


def test_stdin_closed_without_i(hyperd: Daemon) -> None:
    r = run(hyperd, "busybox", "cat", input=b"ignored")
    assert (r.returncode, r.stdout) == (0, b"")


def test_env_workdir_user_hostname(hyperd: Daemon) -> None:
    r = run(hyperd, "-e", "GREETING=hi there", "-w", "/srv/app", "-u", "1000", "--hostname", "podhost",
            "busybox", "sh", "-c", 'echo "$GREETING"; pwd; id -u; id -g; hostname')
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\n")[:5] == ["hi there", "/srv/app", "1000", "0", "podhost"]


def test_user_by_name_from_image(hyperd: Daemon) -> None:
    r = run(hyperd, "-u", "nobody", "busybox", "id")
    assert r.stdout.startswith(b"uid=65534(nobody) gid=65534(nogroup)")


def test_killed_by_signal(hyperd: Daemon) -> None:
    # not its own shell: PID 1 of the container's PID namespace ignores signals from inside it (as in docker)
    assert run(hyperd, "busybox", "sh", "-c", "sh -c 'kill -9 $$'; exit $?").returncode == 128 + 9


def test_signal_forwarded_from_client(hyperd: Daemon) -> None:
    p = hyperd.popen("run", "--rm", "busybox", "sh", "-c", "echo ready; exec sleep 60", stdout=subprocess.PIPE)
    assert p.stdout and p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 128 + signal.SIGTERM


def test_ten_megabytes_intact(hyperd: Daemon) -> None:
    r = run(hyperd, "busybox", "sh", "-c", "yes 0123456789abcdef | head -c 10485760")
    expected = (b"0123456789abcdef\n" * (10485760 // 17 + 1))[:10485760]
    assert r.returncode == 0
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_big_stdin_intact(hyperd: Daemon) -> None:
    data = os.urandom(3 << 20)
    r = run(hyperd, "-i", "busybox", "sha256sum", input=data)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_tty(hyperd: Daemon) -> None:
    r = run(hyperd, "-t", "busybox", "sh", "-c", "tty; echo $TERM")
    assert r.returncode == 0
    assert r.stdout.replace(b"\r", b"").split(b"\n")[:2] == [b"/dev/pts/0", b"xterm"]


def test_two_pods_at_once(hyperd: Daemon) -> None:
    procs = [hyperd.popen("run", "--rm", "busybox", "sh", "-c", "hostname; sleep 1", stdout=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] != outs[1]


def test_guest_kernel_is_not_the_host_kernel(hyperd: Daemon) -> None:
    info = json.loads(hyperd.hyperctl("info", "--json", check=True).stdout)
    r = run(hyperd, "busybox", "uname", "-r")
    assert r.stdout.decode().strip() == info["guest"]["kernel_release"] != platform.release()
    assert info["accelerator"]["name"] in ("kvm", "tcg")


def test_rm_f_of_running_pod_leaves_nothing(hyperd: Daemon) -> None:
    pod_id = hyperd.hyperctl("run", "-d", "--name", "sleeper", "busybox", "sleep", "300", check=True)
    pod_id_s = pod_id.stdout.decode().strip()
    rundir = hyperd.rundir / "pods" / pod_id_s[:16]
    assert qemu_pids(str(rundir)), "the pod's qemu should be running"
    ps = hyperd.hyperctl("ps", check=True).stdout.decode()
    assert "sleeper" in ps and "Up" in ps
    assert hyperd.hyperctl("rm", "sleeper").returncode == 1  # running: needs -f
    hyperd.hyperctl("rm", "-f", "sleeper", check=True)
    assert qemu_pids(str(rundir)) == []
    assert not rundir.exists()
    assert str(hyperd.statedir / "pods" / pod_id_s) not in hyperd.mountinfo()
    assert not (hyperd.statedir / "pods" / pod_id_s).exists()
    assert "sleeper" not in hyperd.hyperctl("ps", "-a", check=True).stdout.decode()


def test_logs_and_ps_after_exit(hyperd: Daemon) -> None:
    hyperd.hyperctl("run", "--name", "talker", "busybox", "sh", "-c", "echo one; echo two >&2; exit 3")
    for _ in range(50):
        if "Exited (3)" in hyperd.hyperctl("ps", "-a").stdout.decode():
            break
        time.sleep(0.1)
    assert "Exited (3)" in hyperd.hyperctl("ps", "-a").stdout.decode()
    logs = hyperd.hyperctl("logs", "talker", check=True)
    assert (logs.stdout, logs.stderr) == (b"one\n", b"two\n")
    hyperd.hyperctl("rm", "talker", check=True)


# ---- bad input -----------------------------------------------------------------------------------------------

def no_leftovers(d: Daemon) -> None:
    assert qemu_pids(str(d.rundir)) == []
    assert str(d.statedir / "pods") not in d.mountinfo()
    pods_run = d.rundir / "pods"
    assert not pods_run.exists() or not any(pods_run.iterdir())


def test_unknown_image(hyperd: Daemon) -> None:
    r = run(hyperd, "no-such-image", "true")
    assert r.returncode == 125 and b"no such image: no-such-image" in r.stderr
    no_leftovers(hyperd)


def test_missing_command(hyperd: Daemon) -> None:
    r = run(hyperd, "busybox", "no-such-command")
    assert r.returncode == 127
    assert b"exec no-such-command: No such file or directory" in r.stderr
    no_leftovers(hyperd)
    assert b"no-such-command" not in hyperd.hyperctl("ps", "-a").stdout


def test_image_without_command(hyperd: Daemon, tmp_path: Path) -> None:
    tar = tmp_path / "nocmd.tar"
    tar.write_bytes(docker_archive([layer(entry("x", data=b"1"))], tag="nocmd:1"))
    hyperd.hyperctl("load", "-i", str(tar), check=True)
    r = run(hyperd, "nocmd:1")
    assert r.returncode == 125 and b"no command specified" in r.stderr
    no_leftovers(hyperd)


def test_invalid_flags(hyperd: Daemon) -> None:
    r = run(hyperd, "--hostname", "Not_Valid", "busybox", "true")
    assert r.returncode == 125 and b"hostname" in r.stderr
    r = run(hyperd, "-e", "=x", "busybox", "true")
    assert r.returncode == 125 and b"env" in r.stderr


def test_malformed_tarball(hyperd: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"definitely not a tarball" * 100)
    before = hyperd.hyperctl("images", "-q").stdout
    r = hyperd.hyperctl("load", "-i", str(bad))
    assert r.returncode == 1 and b"not a tar archive" in r.stderr
    assert hyperd.hyperctl("images", "-q").stdout == before
    assert not any((hyperd.statedir / "images" / "tmp").iterdir())


@pytest.mark.parametrize(("name", "entries", "why"), [
    ("dotdot", [entry("../../../../tmp/hc-escape-dotdot", data=b"x")], b"with '..'"),
    ("symlink", [entry("esc", __import__("tarfile").SYMTYPE, link="/tmp"), entry("esc/hc-escape-symlink", data=b"x")],
     b"through the symlink"),
])
def test_escaping_image(hyperd: Daemon, tmp_path: Path, name: str, entries: list, why: bytes) -> None:
    tar = tmp_path / f"{name}.tar"
    tar.write_bytes(docker_archive([layer(*entries)], tag=f"evil-{name}:1"))
    r = hyperd.hyperctl("load", "-i", str(tar))
    assert r.returncode == 1 and why in r.stderr
    assert not Path(f"/tmp/hc-escape-{name}").exists()
    assert f"evil-{name}".encode() not in hyperd.hyperctl("images").stdout
    assert not any((hyperd.statedir / "images" / "tmp").iterdir())


def test_hyperctl_without_daemon(tmp_path: Path) -> None:
    env = dict(os.environ, HYPERCONTAINER_SOCKET=str(tmp_path / "none.sock"))
    r = subprocess.run([str(Path(__import__("sys").executable).parent / "hyperctl"), "ps"], env=env,
                       capture_output=True)
    assert r.returncode == 1
    assert b"cannot reach hyperd" in r.stderr and b"hyperd &" in r.stderr


def test_hyperd_restarts_cleanly(busybox_tar: Path, tmp_path: Path) -> None:
    """With --no-live-restore: a stopping hyperd stops its pods; one killed with -9 leaves pods that the next
    hyperd releases (VM stopped, mounts gone) and lists as exited."""
    d = Daemon(tmp_path)
    d.env["HYPERCONTAINER_LIVE_RESTORE"] = "0"
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        for n in ("graceful", "killed"):
            d.hyperctl("run", "-d", "--name", n, "busybox", "sleep", "600", check=True)
            vm_pid = json.loads(d.hyperctl("inspect", n, check=True).stdout)["vm"]["pid"]
            assert d.proc
            d.proc.terminate() if n == "graceful" else d.proc.kill()
            d.proc.wait()
            if n == "graceful":
                assert not Path(f"/proc/{vm_pid}/cmdline").exists() or not Path(f"/proc/{vm_pid}/cmdline").read_bytes()
            d.start()
            assert not Path(f"/proc/{vm_pid}/cmdline").exists() or not Path(f"/proc/{vm_pid}/cmdline").read_bytes()
            assert str(d.statedir) not in d.mountinfo()
            assert f"{n}" in d.hyperctl("ps", "-a", check=True).stdout.decode()
            d.hyperctl("rm", n, check=True)
    finally:
        d.stop()


def test_restarted_hyperd_takes_pods_over(busybox_tar: Path, tmp_path: Path) -> None:
    """Five pods running; hyperd restarted (SIGTERM, then kill -9): all still run in the same VMs, exec into each
    works, their output keeps arriving, and rm -f removes everything."""
    d = Daemon(tmp_path)
    d.start()
    names = [f"p{i}" for i in range(5)]
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        for n in names:
            d.hyperctl("run", "-d", "--name", n, "busybox", "sh", "-c",
                       "echo before; while [ ! -f /go ]; do sleep 0.5; done; echo after; exec sleep 600", check=True)
        pids = {n: json.loads(d.hyperctl("inspect", n, check=True).stdout)["vm"]["pid"] for n in names}
        for restart in ("terminate", "kill"):
            assert d.proc
            getattr(d.proc, restart)()
            d.proc.wait()
            d.start()
            ps = d.hyperctl("ps", check=True).stdout.decode()
            assert ps.count("Up") == 5, ps
            for n in names:
                assert json.loads(d.hyperctl("inspect", n, check=True).stdout)["vm"]["pid"] == pids[n]
                assert d.hyperctl("exec", n, "hostname", timeout=60).returncode == 0
        for n in names:
            d.hyperctl("exec", n, "touch", "/go", check=True)
        wait_for(lambda: all(d.hyperctl("logs", n).stdout == b"before\nafter\n" for n in names))
        for n in names:
            d.hyperctl("rm", "-f", n, check=True)
        assert qemu_pids(str(d.rundir / "pods")) == []
        assert str(d.statedir) not in d.mountinfo()
    finally:
        for n in names:
            d.hyperctl("rm", "-f", n)
        d.stop()


def test_vm_gone_while_hyperd_down(busybox_tar: Path, tmp_path: Path) -> None:
    """hyperd killed, then the pod's VM dies too: the next hyperd releases what is left and shows it exited."""
    d = Daemon(tmp_path)
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        pod_id = d.hyperctl("run", "-d", "--name", "orphan", "busybox", "sleep", "300", check=True).stdout.decode()
        vm_pid = json.loads(d.hyperctl("inspect", "orphan", check=True).stdout)["vm"]["pid"]
        assert d.proc
        d.proc.kill()
        d.proc.wait()
        os.kill(vm_pid, signal.SIGKILL)
        d.start()
        assert str(d.statedir) not in d.mountinfo()
        ps = d.hyperctl("ps", "-a", check=True).stdout.decode()
        assert "orphan" in ps and "Exited (255)" in ps
        d.hyperctl("rm", "orphan", check=True)
        assert not (d.statedir / "pods" / pod_id.strip()).exists()
    finally:
        d.stop()


def test_image_config_honoured(hyperd: Daemon, tmp_path: Path) -> None:
    """Entrypoint, Cmd, Env, WorkingDir, User (by name), Volumes and StopSignal from the image config."""
    import gzip
    import hashlib as h

    base = tarfile_layer_from(hyperd)
    lay = layer(entry("etc/motd", data=b"configured\n"))
    ids = ["sha256:" + h.sha256(x).hexdigest() for x in (base, lay)]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ids},
              "config": {"Entrypoint": ["/bin/sh", "-c"],
                         "Cmd": ['echo "$GREETING from $(pwd) as $(id -un)"; test -d /vol && cat /etc/motd'],
                         "Env": ["GREETING=hello", "PATH=/bin:/usr/bin"], "WorkingDir": "/data", "User": "nobody",
                         "Volumes": {"/vol": {}}, "StopSignal": "SIGUSR1"}}
    tar = tmp_path / "cfg.tar"
    tar.write_bytes(docker_archive([base, lay], tag="configured:1", compress=True, config=config))
    assert gzip  # layers travel gzip-compressed
    hyperd.hyperctl("load", "-i", str(tar), check=True)
    r = run(hyperd, "configured:1")
    assert (r.returncode, r.stdout) == (0, b"hello from /data as nobody\nconfigured\n"), r.stderr
    r = run(hyperd, "configured:1", "echo $GREETING-override")
    assert r.stdout == b"hello-override\n"
    hyperd.hyperctl("run", "-d", "--name", "stopper", "configured:1",
                    "trap 'echo got-usr1; exit 7' USR1; echo up; while :; do sleep 0.1; done", check=True)
    for _ in range(100):
        if b"up" in hyperd.hyperctl("logs", "stopper").stdout:
            break
        time.sleep(0.1)
    hyperd.hyperctl("stop", "-t", "20", "stopper", check=True)
    assert hyperd.hyperctl("logs", "stopper").stdout == b"up\ngot-usr1\n"
    assert "Exited (7)" in hyperd.hyperctl("ps", "-a").stdout.decode()
    hyperd.hyperctl("rm", "stopper", check=True)
    hyperd.hyperctl("rmi", "configured:1", check=True)


def tarfile_layer_from(d: Daemon) -> bytes:
    """The busybox layer, as an uncompressed tar, from the bundled archive."""
    import tarfile

    from .conftest import _build_busybox_archive

    with tarfile.open(_build_busybox_archive()) as tf:
        f = tf.extractfile("layer/layer.tar")
        assert f
        return f.read()


# ---- exec --------------------------------------------------------------------------------------------------

@pytest.fixture
def sleeper(hyperd: Daemon):
    name = f"sleeper{os.getpid()}{time.monotonic_ns() % 100000}"
    hyperd.hyperctl("run", "-d", "--name", name, "busybox", "sleep", "600", check=True)
    yield name
    hyperd.hyperctl("rm", "-f", name)


def test_exec_exit_code_env_user(hyperd: Daemon, sleeper: str) -> None:
    assert hyperd.hyperctl("exec", sleeper, "sh", "-c", "exit 37").returncode == 37
    r = hyperd.hyperctl("exec", "-u", "nobody", "-e", "X=1", "-w", "/tmp", f"{sleeper}/{sleeper}",
                        "sh", "-c", 'id -un; echo $X; pwd; echo $HOSTNAME; echo err >&2')
    assert r.stdout.decode().split()[:3] == ["nobody", "1", "/tmp"]
    assert r.stderr == b"err\n"
    assert hyperd.hyperctl("exec", "-i", sleeper, "cat", input=b"piped\n").stdout == b"piped\n"
    missing = hyperd.hyperctl("exec", sleeper, "no-such-cmd")
    assert missing.returncode == 127 and b"exec no-such-cmd" in missing.stderr
    assert hyperd.hyperctl("exec", f"{sleeper}/other", "true").returncode == 125


def test_exec_sees_the_container(hyperd: Daemon, sleeper: str) -> None:
    hyperd.hyperctl("exec", sleeper, "sh", "-c", "echo written > /tmp/mark", check=True)
    assert hyperd.hyperctl("exec", sleeper, "cat", "/tmp/mark").stdout == b"written\n"
    ps = hyperd.hyperctl("exec", sleeper, "ps").stdout
    assert b"sleep 600" in ps


def test_exec_tty_and_resize(hyperd: Daemon, sleeper: str) -> None:
    """exec -t in a real terminal: a pty inside, its initial size from ours, and a SIGWINCH-driven resize."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def ctty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen([str(Path(__import__("sys").executable).parent / "hyperctl"), "exec", "-it", sleeper,
                          "sh", "-c", "tty; stty size; read x; stty size"], stdin=slave, stdout=slave,
                         stderr=slave, env=hyperd.env, preexec_fn=ctty)
    os.close(slave)
    out = b""

    def read_until(marker: bytes) -> None:
        """What the terminal shows until `marker` (never blocking past 60 s: a failure says what was seen)."""
        nonlocal out
        deadline = time.monotonic() + 60
        while marker not in out and (left := deadline - time.monotonic()) > 0:
            if not select.select([master], [], [], left)[0]:
                break
            try:
                out += os.read(master, 4096)
            except OSError:
                break

    read_until(b"30 100")
    assert b"/dev/pts/" in out and b"30 100" in out, out
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
    time.sleep(0.5)
    os.write(master, b"go\r")
    read_until(b"50 132")
    assert b"50 132" in out, out
    assert p.wait(30) == 0
    os.close(master)


# ---- pod specs, volumes, files, restarts ------------------------------------------------------------------

def wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def container_state(d: Daemon, pod: str, name: str) -> dict:
    info = json.loads(d.hyperctl("inspect", pod, check=True).stdout)
    return next(c for c in info["containers"] if c["name"] == name)


def test_two_container_kubernetes_pod(hyperd: Daemon, tmp_path: Path) -> None:
    """A Kubernetes v1 Pod: two containers share localhost, the hostname and an emptyDir volume."""
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("""
apiVersion: v1
kind: Pod
metadata: {name: webpair}
spec:
  restartPolicy: Never
  volumes: [{name: shared, emptyDir: {}}]
  containers:
    - name: web
      image: busybox
      command: [sh, -c]
      args: ["echo served-$(hostname) > /www/index.html; exec httpd -f -p 8080 -h /www"]
      volumeMounts: [{name: shared, mountPath: /www}]
    - name: client
      image: busybox
      command: [sh, -c, "until wget -qO- http://localhost:8080/; do sleep 0.2; done; cat /www/index.html; hostname"]
      volumeMounts: [{name: shared, mountPath: /www, readOnly: true}]
""")
    hyperd.hyperctl("run", "-f", str(manifest), check=True)
    try:
        wait_for(lambda: container_state(hyperd, "webpair", "client")["state"] == "exited")
        assert container_state(hyperd, "webpair", "client")["exit_code"] == 0
        assert hyperd.hyperctl("logs", "-c", "client", "webpair").stdout == b"served-webpair\n" * 2 + b"webpair\n"
        assert container_state(hyperd, "webpair", "web")["state"] == "running"
    finally:
        hyperd.hyperctl("rm", "-f", "webpair", check=True)


def test_host_volume_and_read_only(hyperd: Daemon, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    r = run(hyperd, "-v", f"{vol}:/data", "busybox", "sh", "-c", "echo from-guest > /data/out")
    assert r.returncode == 0, r.stderr
    assert (vol / "out").read_text() == "from-guest\n"
    r = run(hyperd, "-v", f"{vol}:/data:ro", "busybox", "sh", "-c", "cat /data/out; echo x > /data/new")
    assert r.returncode == 1 and r.stdout == b"from-guest\n"
    assert b"Read-only file system" in r.stderr and not (vol / "new").exists()
    assert (vol / "out").exists()  # removing the pods never reaches into the host directory


def test_injected_file(hyperd: Daemon, tmp_path: Path) -> None:
    spec = {"name": "withfile", "containers": [{
        "name": "c", "image": "busybox", "command": ["stat", "-c", "%a %u %g %s", "/etc/app/app.conf"],
        "files": [{"path": "/etc/app/app.conf", "content": "key=value\n", "mode": "0640", "uid": 1000, "gid": 50}]}]}
    f = tmp_path / "spec.json"
    f.write_text(json.dumps(spec))
    hyperd.hyperctl("run", "-f", str(f), check=True)
    wait_for(lambda: container_state(hyperd, "withfile", "c")["state"] == "exited")
    assert hyperd.hyperctl("logs", "withfile").stdout == b"640 1000 50 10\n"
    hyperd.hyperctl("rm", "withfile", check=True)


def test_on_failure_restarts_until_success(hyperd: Daemon) -> None:
    script = 'n=$(cat /count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /count; echo run $n; [ $n -ge 3 ]'
    hyperd.hyperctl("run", "-d", "--name", "flaky", "--restart", "on-failure", "busybox", "sh", "-c", script,
                    check=True)
    wait_for(lambda: "Exited (0)" in hyperd.hyperctl("ps", "-a").stdout.decode())
    assert hyperd.hyperctl("logs", "flaky").stdout == b"run 1\nrun 2\nrun 3\n"
    assert container_state(hyperd, "flaky", "flaky")["restarts"] == 2
    hyperd.hyperctl("rm", "flaky", check=True)


@pytest.mark.parametrize(("spec", "why"), [
    ({"hostname": "Bad_Name", "containers": [{"name": "a", "image": "busybox"}]}, b"hostname"),
    ({"containers": [{"name": "a", "image": "busybox"}, {"name": "a", "image": "busybox"}]},
     b"duplicate container names: a"),
    ({"containers": [{"name": "a", "image": "busybox"}], "colour": "red"}, b"colour: unknown field"),
    ({"resources": {"memory": 16}, "containers": [{"name": "a", "image": "busybox"}]}, b"resources.memory"),
    ({"containers": [{"name": f"c{i}", "image": "busybox"} for i in range(1000)]}, b"containers"),
    ({"volumes": [{"name": "v", "hostPath": "/tmp/../etc"}],
      "containers": [{"name": "a", "image": "busybox", "volumes": [{"name": "v", "path": "/v"}]}]}, b".."),
    ({"volumes": [{"name": "v", "hostPath": "/tmp"}],
      "containers": [{"name": "a", "image": "busybox", "volumes": [{"name": "v", "path": "/x/../etc"}]}]}, b".."),
    ({"containers": [{"name": "a", "image": "busybox", "volumes": [{"name": "nope", "path": "/v"}]}]},
     b"does not define"),
])
def test_bad_pod_specs(hyperd: Daemon, tmp_path: Path, spec: dict, why: bytes) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(spec))
    before = hyperd.hyperctl("ps", "-aq").stdout
    r = hyperd.hyperctl("run", "-f", str(f))
    assert r.returncode == 125 and why in r.stderr, r.stderr
    assert hyperd.hyperctl("ps", "-aq").stdout == before
    no_leftovers(hyperd)


def test_symlinked_host_volume_refused(hyperd: Daemon, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    r = run(hyperd, "-v", f"{tmp_path / 'link'}:/data", "busybox", "true")
    assert r.returncode == 125 and b"goes through a symlink" in r.stderr
    r = run(hyperd, "-v", f"{tmp_path / 'missing'}:/data", "busybox", "true")
    assert r.returncode == 125 and b"not an existing directory" in r.stderr
    no_leftovers(hyperd)


def test_pause_logs_attach_events(hyperd: Daemon) -> None:
    since = time.time()
    hyperd.hyperctl("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
                    "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done", check=True)
    try:
        wait_for(lambda: hyperd.hyperctl("logs", "ticker").stdout.count(b"tick") >= 3)
        hyperd.hyperctl("pause", "ticker", check=True)
        assert "Up (Paused)" in hyperd.hyperctl("ps").stdout.decode()
        r = hyperd.hyperctl("exec", "ticker", "true")
        assert r.returncode == 125 and b"not running" in r.stderr
        n = hyperd.hyperctl("logs", "ticker").stdout.count(b"tick")
        time.sleep(1)
        assert hyperd.hyperctl("logs", "ticker").stdout.count(b"tick") == n  # its CPUs are stopped
        hyperd.hyperctl("unpause", "ticker", check=True)
        wait_for(lambda: hyperd.hyperctl("logs", "ticker").stdout.count(b"tick") > n + 2)
        last2 = hyperd.hyperctl("logs", "--tail", "2", "ticker").stdout.split(b"\n")
        assert len(last2) == 3 and last2[0].startswith(b"tick")
        assert hyperd.hyperctl("logs", "--since", "1h", "ticker").stdout.count(b"tick") > n
        assert hyperd.hyperctl("logs", "--since", "2099-01-01T00:00:00", "ticker").stdout == b""
        att = hyperd.popen("attach", "ticker", stdout=subprocess.PIPE)
        assert att.stdout and att.stdout.readline().startswith(b"tick")
        hyperd.hyperctl("stop", "-t", "1", "ticker", check=True)
        assert att.wait(30) == 143  # the container's exit code, from the attached client
        ev = hyperd.hyperctl("events", "--since", str(since), "--until", "0s", check=True).stdout.decode()
        for action in ("create", "start", "running", "pause", "unpause", "die"):
            assert f"pod {action} " in ev, ev
    finally:
        hyperd.hyperctl("rm", "-f", "ticker")


def local_timer_interrupts(d: Daemon, pod: str) -> int:
    text = d.hyperctl("exec", pod, "cat", "/proc/interrupts", check=True).stdout.decode()
    return int(next(line.split()[1] for line in text.splitlines() if line.strip().startswith("LOC:")))


def test_idle_guests_stay_tickless_on_a_busy_host(hyperd: Daemon) -> None:
    """Guests started while the host's CPUs are taken keep their TSC clocksource, and with it the tickless idle:
    the clocksource watchdog of a starved guest finds its TSC "skewed" against the jiffies and moves it to
    refined-jiffies and a timer tick at HZ for good (each idle pod ~6 x the CPU; without tsc=reliable, 4 of 8 here)."""
    names = [f"idler{i}" for i in range(8)]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: hyperd.hyperctl("run", "-d", "--name", n, "busybox", "sleep", "600", check=True),
                          names))
        time.sleep(1)  # the watchdog looks every 0.5 s
        for h in hogs:
            h.kill()
        sources = [hyperd.hyperctl("exec", n, "cat", "/sys/devices/system/clocksource/clocksource0/current_clocksource",
                                   check=True).stdout.strip() for n in names]
        assert set(sources) <= {b"tsc", b"kvm-clock"}, sources
        before = local_timer_interrupts(hyperd, names[0])
        time.sleep(3)
        ticks = local_timer_interrupts(hyperd, names[0]) - before  # an idle, tickless guest: a few a second
        assert ticks < 3 * 50, f"{ticks} timer interrupts in 3 s: the idle guest ticks periodically"
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        hyperd.hyperctl("rm", "-f", *names)


def test_dns_sysctls_ulimits_stop_signal_and_logs_follow(hyperd: Daemon, tmp_path: Path) -> None:
    spec = {"name": "tuned", "dns": ["192.0.2.53"], "dnsSearch": ["example.test"], "dnsOptions": ["ndots:2"],
            "containers": [{
                "name": "c", "image": "busybox", "stopSignal": "SIGUSR2",
                "ulimits": [{"name": "nofile", "soft": 512, "hard": 1024}],
                "sysctls": {"net.core.somaxconn": "777"},
                "command": ["sh", "-c", "cat /etc/resolv.conf; ulimit -n; cat /proc/sys/net/core/somaxconn; "
                            "trap 'echo got-usr2; exit 0' USR2; i=0; while :; do i=$((i+1)); echo line $i; "
                            "sleep 0.2; done"]}]}
    f = tmp_path / "tuned.json"
    f.write_text(json.dumps(spec))
    hyperd.hyperctl("run", "-f", str(f), check=True)
    try:
        follow = hyperd.popen("logs", "-f", "tuned", stdout=subprocess.PIPE)
        assert follow.stdout
        head = [follow.stdout.readline() for _ in range(7)]
        assert head[:6] == [b"nameserver 192.0.2.53\n", b"search example.test\n", b"options ndots:2\n",
                            b"512\n", b"777\n", b"line 1\n"]
        assert head[6] == b"line 2\n"  # streamed while the container runs
        assert follow.poll() is None
        hyperd.hyperctl("stop", "-t", "20", "tuned", check=True)
        rest = follow.stdout.read()
        assert follow.wait(30) == 0 and rest.endswith(b"got-usr2\n")  # logs -f ends with the container
        assert "Exited (0)" in hyperd.hyperctl("ps", "-a").stdout.decode()
    finally:
        hyperd.hyperctl("rm", "-f", "tuned")


def test_add_container_to_running_pod(hyperd: Daemon) -> None:
    """create -c: a second container in the same VM, no reboot: same hostname and localhost, its own root."""
    hyperd.hyperctl("run", "-d", "--name", "grow", "--hostname", "grow", "busybox", "sh", "-c",
                    "echo hello > /www; exec httpd -f -p 8081 -h /", check=True)
    try:
        vm_pid = json.loads(hyperd.hyperctl("inspect", "grow", check=True).stdout)["vm"]["pid"]
        r = hyperd.hyperctl("create", "-c", "grow", "--name", "side", "busybox", "sh", "-c",
                            "hostname; until wget -qO- http://localhost:8081/www; do sleep 0.2; done; "
                            "test -e /www || echo own-root")
        assert r.returncode == 0 and r.stdout == b"side\n", r.stderr
        wait_for(lambda: container_state(hyperd, "grow", "side")["state"] == "exited")
        assert hyperd.hyperctl("logs", "-c", "side", "grow").stdout == b"grow\nhello\nown-root\n"
        info = json.loads(hyperd.hyperctl("inspect", "grow", check=True).stdout)
        assert info["vm"]["pid"] == vm_pid and info["state"] == "running"
        dup = hyperd.hyperctl("create", "-c", "grow", "--name", "side", "busybox", "true")
        assert dup.returncode == 1 and b"duplicate container names: side" in dup.stderr
    finally:
        hyperd.hyperctl("rm", "-f", "grow")


def test_block_volume(hyperd: Daemon, tmp_path: Path) -> None:
    """A raw ext4 image attached as a virtio disk: its files are seen in the container, writes land in it."""
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "hello.txt").write_text("from the image\n")
    img = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(seed), str(img), "16M"], check=True)
    spec = {"name": "blk", "volumes": [{"name": "disk", "block": str(img)}], "containers": [{
        "name": "c", "image": "busybox", "volumes": [{"name": "disk", "path": "/data"}],
        "command": ["sh", "-c", "cat /data/hello.txt; echo written > /data/new.txt; sync"]}]}
    f = tmp_path / "blk.json"
    f.write_text(json.dumps(spec))
    hyperd.hyperctl("run", "-f", str(f), check=True)
    try:
        wait_for(lambda: "Exited (0)" in hyperd.hyperctl("ps", "-a").stdout.decode())
        assert hyperd.hyperctl("logs", "blk").stdout == b"from the image\n"
        out = subprocess.run(["debugfs", "-R", "cat /new.txt", str(img)], capture_output=True, check=True).stdout
        assert out == b"written\n"
    finally:
        hyperd.hyperctl("rm", "-f", "blk")
    bad = dict(spec, volumes=[{"name": "disk", "block": str(tmp_path / "missing.img")}])
    f.write_text(json.dumps(bad))
    r = hyperd.hyperctl("run", "-f", str(f))
    assert r.returncode == 125 and b"not an existing, non-empty regular file" in r.stderr
