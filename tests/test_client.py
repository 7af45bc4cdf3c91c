"""The Python client (hypercontainer.client) against a real hyperd, no hyperctl involved: pods through their life,
exec, logs, wait, events, images, errors; and the README's example, run as written."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from hypercontainer import __version__
from hypercontainer.client import Client, CommandNotRunnable, ExecResult, InvalidArgument, NotFound, Pod, Unavailable
from hypercontainer.client.filters import normalize
from hypercontainer.client.specs import pod_spec

from .conftest import REPO, Daemon
from .test_docker_habits import until

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def client(hyperd: Daemon) -> Client:
    return Client(socket=hyperd.rundir / "hyperd.sock")


def test_run_options_make_the_spec() -> None:
    spec = pod_spec("busybox", "sh -c 'echo hi'", {
        "name": "web", "env": {"A": "1"}, "volumes": ["/srv:/data:ro", "cache:/cache"], "ports": ["8080:80"],
        "memory": 512, "cpus": 2, "entrypoint": "", "restart_policy": "on-failure", "network": "mine",
        "labels": {"tier": "web"}, "workdir": "/data"})
    assert spec["containers"] == [{"name": "main", "image": "busybox", "env": ["A=1"], "entrypoint": [],
                                   "command": ["sh", "-c", "echo hi"], "workdir": "/data", "volumes": [
                                       {"name": "v0", "path": "/data", "readonly": True},
                                       {"name": "v1", "path": "/cache", "readonly": False}]}]
    assert spec["volumes"] == [{"name": "v0", "host_path": "/srv"}, {"name": "v1", "named": "cache"}]
    assert spec["ports"] == [{"protocol": "tcp", "container_port": 80, "host_port": 8080}]
    assert (spec["name"], spec["network"], spec["resources"], spec["restart_policy"], spec["labels"]) == (
        "web", {"name": "mine"}, {"memory": 512, "vcpu": 2}, "OnFailure", {"tier": "web"})
    for bad in ({"volumes": ["/only-one-part"]}, {"restart_policy": "sometimes"}, {"memroy": 1}):
        with pytest.raises(InvalidArgument):
            pod_spec("busybox", None, bad)  # type: ignore[arg-type]
    assert normalize({"label": "a=b", "status": ["exited", "running"]}) == {"label": ["a=b"],
                                                                           "status": ["exited", "running"]}
    for bad_filter in ({"colour": "red"}, {"status": "sleeping"}):
        with pytest.raises(InvalidArgument):
            normalize(bad_filter)


def test_a_pod_runs_execs_logs_lists_and_goes(client: Client) -> None:
    t0 = time.time()
    pod = client.pods.run("busybox", ["sh", "-c", "echo out; echo err >&2; sleep 600"], name="pyc-main",
                          labels={"suite": "client"}, env={"GREETING": "hi there"})
    assert isinstance(pod, Pod) and pod.name == "pyc-main" and pod.reload().status == "running"
    assert pod.labels == {"suite": "client"} and len(pod.id) > 12 and pod.short_id == pod.id[:12]

    r = pod.exec(["sh", "-c", "echo $GREETING; echo oops >&2; exit 4"])
    assert r == ExecResult(4, b"hi there\noops\n") and r.exit_code == 4
    assert pod.exec("cat", stdin=b"piped in").output == b"piped in"
    assert pod.exec("echo a 'b c'").output == b"a b c\n"  # a string is split as a shell would
    with pytest.raises(CommandNotRunnable) as e:
        pod.exec(["/no/such/command"])
    assert e.value.exit_code == 127

    until(lambda: b"err\n" in pod.logs(), "the output in the log")
    assert pod.logs() == b"out\nerr\n"
    assert list(pod.logs(stream=True)) == [b"out\n", b"err\n"]
    assert pod.logs(tail=1) == b"err\n"
    assert [(r.stream, r.data) for r in pod.log_records()] == [("stdout", b"out\n"), ("stderr", b"err\n")]
    assert re.match(rb"^\d{4}-\d\d-\d\dT\S+ out\n", pod.logs(timestamps=True))

    assert pod in client.pods.list() and pod in client.pods.list(filters={"label": "suite=client"})
    assert client.pods.list(filters={"name": "pyc-main", "status": "exited"}) == []
    assert client.pods.get("pyc-main") == pod == client.pods.get(pod.id[:12])
    assert client.pods.get("pyc-main").attrs["spec"]["containers"][0]["image"] == "busybox"

    events = list(client.events(since=t0, until=time.time()))
    assert {"create", "start"} <= {ev["action"] for ev in events if ev["id"] == pod.id}, events

    assert pod.remove(force=True) == pod.id
    with pytest.raises(NotFound, match="no such pod: pyc-main"):
        client.pods.get("pyc-main")
    assert pod not in client.pods.list(all=True)


def test_wait_gives_the_exit_code_and_follow_streams_to_the_end(client: Client) -> None:
    pod = client.pods.run("busybox", ["sh", "-c", "echo one; sleep 1; echo two; exit 3"], name="pyc-wait")
    assert b"".join(pod.logs(stream=True, follow=True)) == b"one\ntwo\n"  # ends as the container does
    assert pod.wait() == 3
    until(lambda: pod.reload().status == "exited", "the pod to stop")  # the VM goes down after the container
    assert pod.exit_code == 3
    assert pod in client.pods.list(all=True) and pod not in client.pods.list()
    assert pod in client.pods.list(filters={"status": "exited"})  # a status filter looks at every pod
    pod.remove()
    assert pod not in client.pods.list(all=True)


def test_files_and_processes(client: Client) -> None:
    """put_archive / stat_path / get_archive (hyperctl cp's calls) and top, without the CLI."""
    pod = client.pods.run("busybox", ["sleep", "600"], name="pyc-files")
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("dir/note")
            info.size, info.mode, info.uid = 3, 0o640, 1000
            tf.addfile(info, io.BytesIO(b"hi\n"))
        pod.put_archive("/tmp", buf.getvalue(), owners=True)
        assert pod.stat_path("/tmp/dir/note") == {"mode": 0o100640, "size": 3, "dir": False}
        with pod.get_archive("/tmp/dir") as r, tarfile.open(fileobj=r, mode="r|") as tf:
            got = {m.name.rstrip("/"): (m.uid, tf.extractfile(m).read() if m.isreg() else None) for m in tf}  # type: ignore[union-attr]
        assert got == {"dir": (0, None), "dir/note": (1000, b"hi\n")}, got
        with pytest.raises(NotFound):
            pod.stat_path("/no/such")
        bad = io.BytesIO()
        with tarfile.open(fileobj=bad, mode="w") as tf:
            tf.addfile(tarfile.TarInfo("../escape"))
        with pytest.raises(InvalidArgument, match="escape"):
            pod.put_archive("/tmp", bad.getvalue())
        top = pod.top()
        assert top["titles"][1] == "PID" and top["processes"][0][:3] == ["root", "1", "0"], top
        assert top["processes"][0][-1] == "sleep 600"
    finally:
        pod.remove(force=True)


def test_create_start_rename_stop_restart_kill(client: Client) -> None:
    pod = client.pods.create("busybox", "sleep 600", name="pyc-life")
    assert pod.reload().status == "created"
    pod.start()
    assert pod.reload().status == "running"
    pod.rename("pyc-life2")
    assert client.pods.get("pyc-life2").id == pod.id and pod.reload().name == "pyc-life2"
    pod.stop(timeout=1)
    assert pod.reload().status == "exited"
    pod.restart()
    assert pod.reload().status == "running"
    pod.kill()
    assert pod.wait() == 137  # SIGKILL
    pod.remove(force=True)  # the VM may still be going down


def test_run_attached_returns_the_output_and_code(client: Client) -> None:
    r = client.pods.run("busybox", ["sh", "-c", "echo attached; exit 2"], detach=False, auto_remove=True,
                        name="pyc-attached")
    assert r == ExecResult(2, b"attached\n")
    until(lambda: not client.pods.list(all=True, filters={"name": "pyc-attached"}), "the pod's removal")


def test_images_list_tag_remove(client: Client) -> None:
    busybox = client.images.get("busybox")
    assert "busybox:latest" in busybox.tags and busybox in client.images.list()
    client.images.tag("busybox", "pyc/tagged:1")
    assert client.images.get("pyc/tagged:1") == busybox
    assert "pyc/tagged:1" in busybox.reload().tags
    assert client.images.remove("pyc/tagged:1") == ["Untagged: pyc/tagged:1"]
    with pytest.raises(NotFound):
        client.images.get("pyc/tagged:1")
    assert "busybox:latest" in client.images.get(busybox.id).tags  # the image itself stays


def test_errors_and_server_info(client: Client, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such pod: pyc-nope"):
        client.pods.get("pyc-nope")
    with pytest.raises(NotFound):
        client.pods.handle("pyc-nope").stop()
    with pytest.raises(NotFound):
        client.images.get("pyc/none:1")
    with pytest.raises(Unavailable, match="cannot reach hyperd"):
        Client(socket=tmp_path / "nobody.sock").version()
    assert client.version()["version"] == __version__
    assert client.info()["pods"]["total"] >= 0


def readme_example() -> str:
    """The ```python block of the README's "Python client" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Python client\n", 1)[1].split("\n#", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs(hyperd: Daemon, tmp_path: Path) -> None:
    env = {k: v for k, v in hyperd.env.items() if k not in ("HYPERCONTAINER_HOST", "HYPERCONTAINER_TOKEN")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no current context: the socket HYPERCONTAINER_SOCKET names
    r = subprocess.run([sys.executable, "-c", readme_example()], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["py-demo running", "3 b'hi\\n'", "['py-demo']", "b'hello\\n'",
                                              "no such pod: py-demo"]


def test_a_stream_whose_handshake_was_dropped_is_tried_once_more(tmp_path: Path) -> None:
    """A connection closed before the server answered the websocket handshake (nothing happened on its side) is
    tried once more; a second drop is an error naming it."""
    import threading

    from websockets.sync.server import unix_serve

    from hypercontainer.client.endpoint import Endpoint
    from hypercontainer.client.transport import Transport
    from hypercontainer.errors import HCError

    seen = {"n": 0, "drop": 1}

    def drop_first(conn, request):  # type: ignore[no-untyped-def]
        seen["n"] += 1
        if seen["n"] <= seen["drop"]:
            conn.socket.close()
        return None

    sock = tmp_path / "s.sock"
    with unix_serve(lambda ws: ws.send("hello"), str(sock), process_request=drop_first) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        t = Transport(Endpoint(socket=sock))
        with t.websocket("/v1/pods/run") as ws:
            assert ws.recv() == "hello"
        assert seen["n"] == 2
        seen.update(n=0, drop=2)
        with pytest.raises(HCError, match="hyperd refused the stream"):
            t.websocket("/v1/pods/run")
        assert seen["n"] == 2
        server.shutdown()
