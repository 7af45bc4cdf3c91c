"""hyperctl push (through a real registry with token auth), images --filter/--format, system df and prune,
completion: against a hyperd of this module's own (prune must not take other tests' pods and images)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from .conftest import BIN, Daemon
from .layers import entry, layer
from .registry import PASSWORD, USER, Registry

needs_registry = pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                                    reason="needs docker-registry and skopeo (make test installs them)")


@pytest.fixture(scope="module")
def daemon(busybox_tar: Path):
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (overlay mounts, QEMU)")
    root = Path(tempfile.mkdtemp(prefix="hc-test-system-"))
    d = Daemon(root, HYPERCONTAINER_AUTH_FILE=str(root / "auth.json"))
    d.start()
    d.hyperctl("load", "-i", str(busybox_tar), check=True)
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def tiny_archive(dest: Path, marker: str, tags: list[str], created: str = "2001-01-01T00:00:00Z") -> Path:
    """A docker-archive of a one-file image (`tags` may be empty: an unnamed image)."""
    lay = layer(entry("marker", data=marker.encode()))
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": created, "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(lay).hexdigest()]}})
    with tarfile.open(dest, "w") as tf:
        for name, data in (("config.json", config.encode()), ("layer.tar", lay),
                           ("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": tags,
                                                          "Layers": ["layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return dest


def lines(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().splitlines()


def test_completion_scripts(daemon: Daemon) -> None:
    for shell, mark in (("bash", "complete -o nosort -F"), ("zsh", "#compdef hyperctl"), ("fish", "complete ")):
        out = "\n".join(lines(daemon.hyperctl("completion", shell)))
        assert mark in out and "_HYPERCTL_COMPLETE" in out
    r = subprocess.run([str(BIN / "hyperctl")], capture_output=True, check=True,
                       env=dict(daemon.env, _HYPERCTL_COMPLETE="bash_complete", COMP_WORDS="hyperctl sys",
                                COMP_CWORD="1"))
    assert r.stdout.decode().split() == ["plain,system"]
    assert daemon.hyperctl("completion", "tcsh").returncode == 2


@needs_registry
def test_push_then_pull_with_token_auth(daemon: Daemon) -> None:
    reg = Registry(token_auth=True)
    try:
        name = f"{reg.host}/pushed/box:v1"
        lines(daemon.hyperctl("tag", "busybox", name))
        r = daemon.hyperctl("push", name)  # not logged in: the token server gives anonymous users nothing
        assert r.returncode == 125 and b"denied" in r.stderr, r.stderr
        lines(daemon.hyperctl("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD.encode()))
        out = lines(daemon.hyperctl("push", name))
        assert out[-1].startswith(f"{name}: digest: sha256:")
        digest = out[-1].split()[2]
        assert reg.tokens and any(r["user"] == USER and any("push" in s for s in r["scopes"])
                                  for r in reg.tokens.requests)
        busybox_id = json.loads(daemon.hyperctl("image", "inspect", "busybox", check=True).stdout)["id"]
        lines(daemon.hyperctl("rmi", name))
        pulled = daemon.hyperctl("pull", name)
        assert lines(pulled) == [name] and f"Digest: {digest}".encode() in pulled.stderr
        info = json.loads(daemon.hyperctl("image", "inspect", name, check=True).stdout)
        assert info["id"] == busybox_id and f"{reg.host}/pushed/box@{digest}" in info["digests"]
        lines(daemon.hyperctl("rmi", name))
    finally:
        reg.stop()


def test_push_missing_image(daemon: Daemon) -> None:
    r = daemon.hyperctl("push", "127.0.0.1:9/no/such:image")
    assert r.returncode == 125
    assert b"no such image: 127.0.0.1:9/no/such:image" in r.stderr


def test_images_filter_and_format(daemon: Daemon, tmp_path: Path) -> None:
    for t in ("flt/a:1", "flt/a:2", "flt/b:1"):
        lines(daemon.hyperctl("tag", "busybox", t))
    lines(daemon.hyperctl("load", "-i", str(tiny_archive(tmp_path / "old.tar", "old", ["flt/old:1"]))))
    lines(daemon.hyperctl("load", "-i", str(tiny_archive(tmp_path / "none.tar", "none", []))))
    try:
        fmt = "{{.Repository}}:{{.Tag}}"
        got = lines(daemon.hyperctl("images", "--filter", "reference=flt/a:*", "--format", fmt))
        assert sorted(got) == ["flt/a:1", "flt/a:2"]
        got = lines(daemon.hyperctl("images", "-f", "reference=flt/a", "-f", "reference=flt/b:*", "--format", fmt))
        assert sorted(got) == ["flt/a:1", "flt/a:2", "flt/b:1"]
        assert lines(daemon.hyperctl("images", "-f", "reference=flt", "--format", fmt)) == []  # * stops at /
        rows = [json.loads(x) for x in lines(daemon.hyperctl("images", "-f", "reference=flt/*:*", "--format", "json"))]
        assert len(rows) == 4 and set(rows[0]) == {"Repository", "Tag", "Digest", "ID", "CreatedAt", "Size"}
        busybox_id = json.loads(daemon.hyperctl("image", "inspect", "busybox", check=True).stdout)["id"][7:19]
        assert {r["ID"] for r in rows if r["Repository"] != "flt/old"} == {busybox_id}
        tabbed = lines(daemon.hyperctl("images", "-f", "reference=flt/b:1", "--format", r"{{.Repository}}\t{{ .ID }}"))
        assert tabbed == [f"flt/b\t{busybox_id}"]
        table = lines(daemon.hyperctl("images", "-f", "reference=flt/b:1", "--format", "table {{.Tag}} {{.Size}}"))
        assert table[0] == "TAG SIZE" and table[1].startswith("1 ")
        dangling = lines(daemon.hyperctl("images", "-f", "dangling=true", "--format", fmt))
        assert dangling == ["<none>:<none>"]
        assert "<none>:<none>" not in lines(daemon.hyperctl("images", "-f", "dangling=false", "--format", fmt))
        older = lines(daemon.hyperctl("images", "-f", "before=busybox", "-f", "reference=flt/*", "--format", fmt))
        assert older == ["flt/old:1"]
        newer = lines(daemon.hyperctl("images", "-f", "since=flt/old:1", "-f", "reference=flt/*", "--format", fmt))
        assert sorted(newer) == ["flt/a:1", "flt/a:2", "flt/b:1"]
        r = daemon.hyperctl("images", "--format", "{{.Repository}} {{.Nope}}")
        assert r.returncode == 125 and b"no field .Nope" in r.stderr and not r.stdout
        r = daemon.hyperctl("images", "--filter", "label=x")
        assert r.returncode == 125 and b"invalid filter" in r.stderr
    finally:
        for t in ("flt/a:1", "flt/a:2", "flt/b:1", "flt/old:1"):
            daemon.hyperctl("rmi", t)
        daemon.hyperctl("image", "prune")


def df(daemon: Daemon) -> dict:
    return json.loads(daemon.hyperctl("system", "df", "--format", "json", check=True).stdout)


def test_system_df_and_prune(daemon: Daemon, tmp_path: Path) -> None:
    lines(daemon.hyperctl("load", "-i", str(tiny_archive(tmp_path / "unused.tar", "unused", ["unused:1"]))))
    lines(daemon.hyperctl("load", "-i", str(tiny_archive(tmp_path / "none.tar", "dangling", []))))
    lines(daemon.hyperctl("run", "--name", "done", "busybox", "true"))
    running = lines(daemon.hyperctl("run", "-d", "--name", "busy", "busybox", "sleep", "600"))[0]
    usage = df(daemon)
    ids = set(lines(daemon.hyperctl("images", "-q")))
    assert usage["images"]["total"] == len(ids) == 3
    assert usage["images"]["active"] == 1
    ps = lines(daemon.hyperctl("ps", "-aq"))
    assert usage["pods"]["total"] == len(ps) == 2 and usage["pods"]["active"] == 1
    assert usage["pods"]["reclaimable"] > 0 and usage["layers"]["total"] >= 3 and usage["images"]["size"] > 0
    table = "\n".join(lines(daemon.hyperctl("system", "df")))
    for word in ("TYPE", "RECLAIMABLE", "Images", "Pods", "Local Volumes", "Logs", "Layers", "Templates"):
        assert word in table

    r = daemon.hyperctl("system", "prune", input=b"n\n")  # asks first; no: nothing goes
    assert r.returncode == 0 and b"Are you sure" in r.stderr
    assert len(lines(daemon.hyperctl("ps", "-aq"))) == 2

    out = "\n".join(lines(daemon.hyperctl("system", "prune", "-f")))
    assert "Deleted Pods:" in out and "Total reclaimed space:" in out
    assert [p[:12] for p in lines(daemon.hyperctl("ps", "-aq"))] == [running[:12]]
    left = lines(daemon.hyperctl("images", "--format", "{{.Repository}}:{{.Tag}}"))
    assert sorted(left) == ["busybox:latest", "unused:1"]  # the dangling one went

    lines(daemon.hyperctl("system", "prune", "-a", "-f"))  # every unused image: busybox is the running pod's
    assert lines(daemon.hyperctl("images", "--format", "{{.Repository}}:{{.Tag}}")) == ["busybox:latest"]
    assert df(daemon)["images"]["total"] == 1
    assert lines(daemon.hyperctl("image", "check"))[-1] == "image store is consistent"
    lines(daemon.hyperctl("rm", "-f", running))
