"""docker's create (issue 19): hyperctl create IMAGE makes a pod from run's flags without starting it; start boots
it, rm of one never started leaves nothing; create -c POD still adds a container to a running pod (its tests are in
test_pods.py and test_container_lifecycle.py). Real VMs, one boot per test that starts one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import Daemon
from .test_docker_habits import inspect, ok, until

pytestmark = pytest.mark.vm


def row(d: Daemon, name: str) -> str:
    """The pod's line in ps -a ('' if it is not listed)."""
    return next((line for line in ok(d.hyperctl("ps", "-a")).splitlines() if line.split()[1:2] == [name]), "")


def qemu_of(pod_id: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", pod_id[:16]], capture_output=True, text=True).stdout.split()


def nothing_left(d: Daemon, pod_id: str) -> bool:
    return not (d.statedir / "pods" / pod_id).exists() and not (d.rundir / "pods" / pod_id[:16]).exists()


def test_create_shows_created_then_start_runs_it(hyperd: Daemon, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pod_id = ok(hyperd.hyperctl("create", "--name", "made", "-e", "GREETING=hi", "-l", "tier=web", "--add-host",
                                "db.local:10.1.2.3", "-v", f"{data}:/data", "busybox", "sh", "-c",
                                "grep db.local /etc/hosts > /data/hosts; echo logged $GREETING")).strip()
    try:
        assert re.fullmatch(r"[0-9a-f]{64}", pod_id), pod_id
        # created: listed as docker lists it, inspected, no VM and nothing on disk
        assert "Created" in row(hyperd, "made")
        assert ok(hyperd.hyperctl("ps", "-aq", "--filter", "status=created", "--filter", "name=made")).split() \
            == [pod_id[:12]]
        assert "made" not in ok(hyperd.hyperctl("ps"))  # not running
        info = inspect(hyperd, "made")
        assert info["state"] == "created" and info["labels"] == {"tier": "web"}
        assert info["spec"]["containers"][0]["env"] == ["GREETING=hi"]
        assert qemu_of(pod_id) == [] and nothing_left(hyperd, pod_id)
        assert not (data / "hosts").exists()

        # start boots it: its command runs, as run's flags made it
        assert ok(hyperd.hyperctl("start", "made")) == "made\n"
        r = hyperd.hyperctl("wait", "made")
        assert (r.returncode, r.stdout) == (0, b"0\n"), r.stderr
        assert ok(hyperd.hyperctl("logs", "made")) == "logged hi\n"
        assert (data / "hosts").read_text() == "10.1.2.3\tdb.local\n"
        until(lambda: inspect(hyperd, "made")["state"] == "exited", "the pod's stop")
        assert inspect(hyperd, "made")["id"] == pod_id
    finally:
        hyperd.hyperctl("rm", "-f", "made")
    assert row(hyperd, "made") == "" and qemu_of(pod_id) == [] and nothing_left(hyperd, pod_id)


def test_create_refuses_whole_and_rm_of_a_never_started_pod_leaves_nothing(hyperd: Daemon) -> None:
    # a bad image: 125, one clear line, nothing made
    r = hyperd.hyperctl("create", "--name", "bad", "no-such-image:1", "true")
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1, r.stderr
    assert b"no such image: no-such-image:1" in r.stderr
    assert row(hyperd, "bad") == ""
    # create -c is the old verb: run's pod options do not go with it
    r = hyperd.hyperctl("create", "-c", "any", "-p", "80", "--rm", "busybox", "true")
    assert r.returncode == 125 and b"--rm, --publish cannot be given with it" in r.stderr, r.stderr
    r = hyperd.hyperctl("create", "-c", "no-such-pod", "busybox", "true")
    assert r.returncode == 1 and b"no such pod: no-such-pod" in r.stderr, r.stderr

    # created, never started: rm (no -f needed) leaves nothing, and the name is free again
    pod_id = ok(hyperd.hyperctl("create", "--name", "never", "busybox", "true")).strip()
    assert "Created" in row(hyperd, "never")
    r = hyperd.hyperctl("create", "--name", "never", "busybox", "true")
    assert r.returncode == 125 and b"already in use" in r.stderr
    assert ok(hyperd.hyperctl("rm", "never")).strip() == "never"
    assert row(hyperd, "never") == "" and nothing_left(hyperd, pod_id)
    again = ok(hyperd.hyperctl("create", "--name", "never", "busybox", "true")).strip()
    assert again != pod_id
    ok(hyperd.hyperctl("rm", "never"))
    assert row(hyperd, "never") == "" and qemu_of(pod_id) == [] and qemu_of(again) == []
    assert nothing_left(hyperd, again)


def test_a_created_pod_outlives_hyperd_and_starts_later(busybox_tar: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d")
    (tmp_path / "d").mkdir()
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        pod_id = ok(d.hyperctl("create", "--name", "later", "busybox", "sh", "-c", "echo booted; exit 6")).strip()
        assert d.proc
        d.proc.terminate()  # hyperd goes; its created pod stays recorded
        d.proc.wait(30)
        d.start()
        assert "Created" in row(d, "later")
        assert inspect(d, "later")["state"] == "created" and nothing_left(d, pod_id)
        assert ok(d.hyperctl("start", "later")) == "later\n"
        r = d.hyperctl("wait", "later")
        assert (r.returncode, r.stdout) == (6, b"6\n"), r.stderr
        assert ok(d.hyperctl("logs", "later")) == "booted\n"
        assert inspect(d, "later")["id"] == pod_id
    finally:
        d.stop()
