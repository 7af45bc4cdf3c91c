"""docker's habits (issue 19): wait, exec -d, start, restart, rename, ps --filter/--format, run's --label,
--env-file and --add-host; with real VMs, a few pods each doing several checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import Daemon

pytestmark = pytest.mark.vm

# Counts its runs in the volume, then waits for /data/go (the test's signal) and exits 3.
LOOP = "echo run >> /data/runs; while [ ! -e /data/go ]; do sleep 0.1; done; rm /data/go; exit 3"


def inspect(d: Daemon, ref: str) -> dict:
    r = d.hyperctl("inspect", ref)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def until(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ok(r) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_one_pod_through_wait_exec_start_rename_restart(hyperd: Daemon, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    envfile = tmp_path / "env"
    envfile.write_text("# settings\nGREETING=hello world\n\n  SPACED=a=b\nFROM_HOST\nNOT_SET_ANYWHERE\n")
    hyperd.env["FROM_HOST"] = "host-value"
    try:
        ok(hyperd.hyperctl("run", "-d", "--name", "habits", "--label", "tier=web", "--label", "team",
                           "--env-file", str(envfile), "-e", "GREETING=overridden", "--add-host", "db.local:10.1.2.3",
                           "--add-host", "v6.local:fd00::7", "-v", f"{data}:/data", "busybox", "sh", "-c", LOOP))
    finally:
        del hyperd.env["FROM_HOST"]
    until(lambda: (data / "runs").exists(), "the first run")

    # what run's flags made, inside the container and in inspect
    env = ok(hyperd.hyperctl("exec", "habits", "env")).splitlines()
    assert {"GREETING=overridden", "SPACED=a=b", "FROM_HOST=host-value"} <= set(env), env
    assert not any(e.startswith("NOT_SET_ANYWHERE") for e in env)
    hosts = ok(hyperd.hyperctl("exec", "habits", "cat", "/etc/hosts")).splitlines()
    assert "10.1.2.3\tdb.local" in hosts and "fd00::7\tv6.local" in hosts and "127.0.0.1\tlocalhost" in hosts
    info = inspect(hyperd, "habits")
    assert info["labels"] == {"tier": "web", "team": ""} == info["spec"]["labels"]
    assert info["spec"]["hosts"] == [{"hostname": "db.local", "ip": "10.1.2.3"},
                                     {"hostname": "v6.local", "ip": "fd00::7"}]

    # exec -d: runs on by itself; inspect keeps its exit code
    exec_id = ok(hyperd.hyperctl("exec", "-d", "habits", "sh", "-c", "sleep 0.3; exit 5")).strip()
    done = until(lambda: [e for e in inspect(hyperd, "habits")["execs"] if e["id"] == exec_id and not e["running"]],
                 "the detached exec's exit")
    assert done[0]["exit_code"] == 5 and done[0]["command"] == ["sh", "-c", "sleep 0.3; exit 5"]

    # wait: blocks until the container exits, prints and exits with its code
    waiter = hyperd.popen("wait", "habits", stdout=-1, stderr=-1)
    time.sleep(0.5)
    assert waiter.poll() is None, "wait returned while the container ran"
    (data / "go").touch()
    out, err = waiter.communicate(timeout=60)
    assert (waiter.returncode, out) == (3, b"3\n"), err
    until(lambda: inspect(hyperd, "habits")["state"] == "exited", "the pod's stop")

    # start: the same pod (id, name, volume, labels) runs its command again
    pod_id = inspect(hyperd, "habits")["id"]
    assert ok(hyperd.hyperctl("start", "habits")) == "habits\n"
    until(lambda: (data / "runs").read_text() == "run\nrun\n", "the second run")
    info = inspect(hyperd, "habits")
    assert (info["id"], info["state"], info["labels"]) == (pod_id, "running", {"tier": "web", "team": ""})
    assert "10.1.2.3\tdb.local" in ok(hyperd.hyperctl("exec", "habits", "cat", "/etc/hosts"))

    # rename: the new name finds it, the old one no longer does; the name sticks across a start
    assert ok(hyperd.hyperctl("rename", "habits", "habits-2")) == ""
    assert inspect(hyperd, "habits-2")["id"] == pod_id
    assert hyperd.hyperctl("inspect", "habits").returncode != 0
    (data / "go").touch()
    assert hyperd.hyperctl("wait", "habits-2").returncode == 3

    # restart: a stopped pod starts; a running one stops (SIGKILL after -t) and starts again
    assert ok(hyperd.hyperctl("restart", "habits-2")) == "habits-2\n"
    until(lambda: (data / "runs").read_text().count("run") == 3, "the third run")
    assert ok(hyperd.hyperctl("restart", "-t", "1", "habits-2")) == "habits-2\n"
    until(lambda: (data / "runs").read_text().count("run") == 4, "the fourth run")
    info = inspect(hyperd, "habits-2")
    assert (info["id"], info["name"], info["state"]) == (pod_id, "habits-2", "running")
    ok(hyperd.hyperctl("rm", "-f", "habits-2"))


def test_ps_filters_and_formats(hyperd: Daemon) -> None:
    made = {}
    for name, labels, cmd in (("psh-a", ["tier=web", "env=prod"], ["true"]),
                              ("psh-b", ["tier=web", "env=dev"], ["sleep", "600"]),
                              ("psh-c", ["tier=db"], ["true"]),
                              ("psh-d", [], ["sleep", "600"]),
                              ("psh-e", ["env=prod"], ["sh", "-c", "exit 2"])):
        args = [a for kv in labels for a in ("--label", kv)]
        made[name] = ok(hyperd.hyperctl("run", "-d", "--name", name, *args, "busybox", *cmd)).strip()
    until(lambda: all(inspect(hyperd, n)["state"] == "exited" for n in ("psh-a", "psh-c", "psh-e")), "exits")

    def names(*filters: str, all_: bool = True) -> set[str]:
        named = any(f.startswith("name=") for f in filters)
        args = [a for f in (*(() if named else ("name=psh-",)), *filters) for a in ("--filter", f)]
        out = ok(hyperd.hyperctl("ps", *(["-a"] if all_ else []), *args, "--format", "{{.Names}}"))
        return set(out.split())

    assert names() == set(made)
    assert names(all_=False) == {"psh-b", "psh-d"}
    assert names("label=tier") == {"psh-a", "psh-b", "psh-c"}
    assert names("label=tier=web") == {"psh-a", "psh-b"}
    assert names("label=tier=web", "label=env=prod") == {"psh-a"}  # labels: all of them (docker's AND)
    assert names("label=tier=web", "label=tier=db") == set()
    assert names("label=tier", "status=exited") == {"psh-a", "psh-c"}  # different keys: AND
    assert names("status=exited", all_=False) == {"psh-a", "psh-c", "psh-e"}  # status looks at every pod
    assert names("status=running") == {"psh-b", "psh-d"}
    assert names("status=created") == set()
    assert names(f"id={made['psh-c'][:6]}") == {"psh-c"}
    assert names("ancestor=busybox", "status=running") == {"psh-b", "psh-d"}
    assert names("ancestor=nosuchimage") == set()
    assert names("name=psh-e", "name=psh-d") == {"psh-d", "psh-e"}  # the same key: OR
    assert names("name=psh-e", "name=psh-d", "status=running") == {"psh-d"}
    assert names("status=running", "status=exited") == set(made)
    q = ok(hyperd.hyperctl("ps", "-aq", "--filter", "name=psh-a")).split()
    assert q == [made["psh-a"][:12]]

    rows = [json.loads(line) for line in ok(hyperd.hyperctl("ps", "-a", "--filter", "name=psh-",
                                                            "--format", "json")).splitlines()]
    by_name = {r["Names"]: r for r in rows}
    assert set(by_name) == set(made)
    e = by_name["psh-e"]
    assert (e["ID"], e["Image"], e["Command"], e["State"], e["Labels"]) == \
        (made["psh-e"][:12], "busybox", '"sh -c exit 2"', "exited", "env=prod")
    assert e["Status"].startswith("Exited (2)") and by_name["psh-b"]["Status"] == "Up"
    assert by_name["psh-a"]["Labels"] == "env=prod,tier=web" and e["CreatedAt"][:2] == "20"

    out = ok(hyperd.hyperctl("ps", "-a", "--filter", "name=psh-c", "--format", r"{{.ID}}\t{{.Names}}|{{.Labels}}"))
    assert out == f"{made['psh-c'][:12]}\tpsh-c|tier=db\n"
    table = ok(hyperd.hyperctl("ps", "-a", "--filter", "name=psh-d", "--format",
                               r"table {{.Names}}\t{{.Status}}")).splitlines()
    assert table[0].split() == ["NAMES", "STATUS"] and table[1].split() == ["psh-d", "Up"]
    assert ok(hyperd.hyperctl("ps", "--filter", "name=psh-d", "--format", "table")).splitlines()[0].split()[:2] \
        == ["POD", "ID"]

    for args, why in ((["--format", "{{.Nope}}"], b"no field .Nope"),
                      (["--format", "{{if .ID}}x{{end}}"], b"only {{.Field}}"),
                      (["--filter", "colour=red"], b"invalid filter 'colour=red'"),
                      (["--filter", "status=sleeping"], b"the status is one of"),
                      (["--filter", "name"], b"invalid filter 'name'")):
        r = hyperd.hyperctl("ps", *args)
        assert r.returncode == 125 and r.stdout == b"" and len(r.stderr.splitlines()) == 1 and why in r.stderr, \
            (args, r.stderr)

    # rename: per-tenant unique, a valid name; nothing changes when refused
    r = hyperd.hyperctl("rename", "psh-a", "psh-b")
    assert r.returncode == 1 and b"already in use" in r.stderr
    r = hyperd.hyperctl("rename", "psh-a", "bad name!")
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1 and b"invalid name" in r.stderr
    assert inspect(hyperd, "psh-a")["id"] == made["psh-a"]
    # wait on several: each code printed, the first one's is the exit status
    r = hyperd.hyperctl("wait", "psh-e", "psh-a")
    assert (r.returncode, r.stdout) == (2, b"2\n0\n")
    ok(hyperd.hyperctl("rm", "-f", *made.values()))


def test_bad_input_is_refused_whole(hyperd: Daemon, tmp_path: Path) -> None:
    bad_env = tmp_path / "bad.env"
    bad_env.write_text("GOOD=1\nBAD KEY=2\n")
    for args, why in ((["--add-host", "db.local"], b"expected NAME:IP"),
                      (["--add-host", "db.local:999.1.1.1"], b"expected NAME:IP"),
                      (["--add-host", "bad_host!:10.0.0.1"], b"not a host name"),
                      (["--label", "=v"], b"expected KEY=VALUE"),
                      (["--env-file", str(tmp_path / "missing")], b"cannot read it"),
                      (["--env-file", str(bad_env)], b"line 2")):
        r = hyperd.hyperctl("run", "-d", "--name", "refused", *args, "busybox", "true")
        assert r.returncode == 125 and len(r.stderr.splitlines()) == 1 and why in r.stderr, (args, r.stderr)
    r = hyperd.hyperctl("run", "-d", "--name", "refused", "--label", "a=b=c", "-l", "k", "busybox", "true")
    assert r.returncode == 0, r.stderr  # KEY=VALUE splits at the first '='; KEY alone: an empty value
    assert inspect(hyperd, "refused")["labels"] == {"a": "b=c", "k": ""}
    ok(hyperd.hyperctl("rm", "-f", "refused"))
    assert b"refused" not in hyperd.hyperctl("ps", "-a").stdout
    for verb in ("wait", "start", "restart"):
        r = hyperd.hyperctl(verb, "no-such-pod")
        assert r.returncode == 1 and b"no such pod: no-such-pod" in r.stderr, (verb, r.stderr)
    r = hyperd.hyperctl("exec", "-d", "-t", "no-such-pod", "true")
    assert r.returncode == 125 and b"exec -d runs without a terminal" in r.stderr


def test_a_pod_an_earlier_hyperd_left_stopped_starts_again(busybox_tar: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d")
    (tmp_path / "d").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    d.start()
    try:
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        ok(d.hyperctl("run", "-d", "--name", "old", "--label", "k=v", "-v", f"{data}:/data", "busybox", "sh", "-c",
                      "echo run >> /data/runs; exit 4"))
        assert d.hyperctl("wait", "old").returncode == 4
        until(lambda: inspect(d, "old")["state"] == "exited", "the pod's stop")
        assert d.proc
        d.proc.terminate()  # hyperd goes; its stopped pod stays recorded
        d.proc.wait(30)
        d.start()
        assert d.hyperctl("wait", "old").returncode == 4  # from the record
        assert ok(d.hyperctl("rename", "old", "older")) == ""
        short = ok(d.hyperctl("ps", "-aq", "--filter", "name=older")).split()
        assert len(short) == 1
        assert ok(d.hyperctl("start", "older")) == "older\n"
        r = d.hyperctl("wait", "older")
        assert (r.returncode, r.stdout) == (4, b"4\n")
        assert (data / "runs").read_text() == "run\nrun\n"
        info = inspect(d, "older")
        assert (info["id"][:12], info["name"], info["labels"]) == (short[0], "older", {"k": "v"})
    finally:
        d.stop()


def test_start_attach_prints_this_run_and_exits_with_its_code(hyperd: Daemon) -> None:
    ok(hyperd.hyperctl("run", "-d", "--name", "again", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"))
    try:
        assert hyperd.hyperctl("wait", "again").stdout == b"3\n"
        for _ in range(2):  # each start: its own run's output only, stdout and stderr apart
            r = hyperd.hyperctl("start", "-a", "again")
            assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n"), r
        r = hyperd.hyperctl("start", "-a", "again", "other")
        assert r.returncode == 125 and b"one pod at a time" in r.stderr, r
    finally:
        hyperd.hyperctl("rm", "-f", "again")
