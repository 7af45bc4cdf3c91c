"""Pod spec validation: errors name the field; users resolve like docker's."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from hypercontainer.errors import InvalidArgument
from hypercontainer.pod.users import resolve
from hypercontainer.spec import oci
from hypercontainer.spec.errors import invalid_spec
from hypercontainer.spec.pod import PodSpec
from hypercontainer.spec.publish import parse_publish


def err(raw: dict) -> str:
    with pytest.raises(ValidationError) as e:
        PodSpec.model_validate(raw)
    return invalid_spec(e.value).message


def ok(**over: object) -> dict:
    return {"containers": [{"name": "a", "image": "busybox"}], **over}


def test_valid() -> None:
    spec = PodSpec.model_validate(ok(hostname="web-1", resources={"memory": 128, "vcpu": 2}))
    assert spec.resources.memory == 128 and spec.containers[0].tty is False


@pytest.mark.parametrize(("raw", "why"), [
    (ok(hostname="Bad_Host"), "hostname: "),
    (ok(hostname="x" * 64), "hostname: "),
    (ok(bogus=1), "bogus: unknown field"),
    ({"containers": [{"name": "a", "image": "b", "colour": 1}]}, "containers.0.colour: unknown field"),
    ({"containers": [{"name": "a", "image": "b"}, {"name": "a", "image": "c"}]}, "duplicate container names: a"),
    (ok(resources={"memory": 16}), "resources.memory"),
    ({"containers": []}, "containers: "),
    ({"containers": [{"name": "a", "image": "b"}] * 65}, "containers: "),
    ({"containers": [{"name": "a", "image": "b", "env": ["NOEQUALS"]}]}, "containers.0.env: "),
    ({"containers": [{"name": "a", "image": "b", "workdir": "relative"}]}, "containers.0.workdir: "),
    ({"containers": [{"name": "a", "image": "b", "workdir": "/a/../b"}]}, "containers.0.workdir: "),
    ({"containers": [{"name": "../a", "image": "b"}]}, "containers.0.name: "),
    ({"containers": [{"name": "a", "image": "b", "user": "x y"}]}, "containers.0.user: "),
])
def test_invalid(raw: dict, why: str) -> None:
    assert why in err(raw)


def test_user_resolution(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:app\napp:x:1001:\n")
    assert resolve(tmp_path, None).home == "/root"
    u = resolve(tmp_path, "app")
    assert (u.uid, u.gid, u.groups, u.home) == (1000, 1001, (50,), "/home/app")
    assert (resolve(tmp_path, "1000:50").gid, resolve(tmp_path, "4242").gid) == (50, 0)
    with pytest.raises(InvalidArgument, match="unable to find user nobody"):
        resolve(tmp_path, "nobody")


def test_user_lookup_does_not_follow_symlinks_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/etc")
    assert os.path.exists("/etc/passwd")
    with pytest.raises(InvalidArgument):
        resolve(tmp_path, "root")


@pytest.mark.parametrize(("text", "want"), [
    ("80", {"protocol": "tcp", "container_port": 80}),
    ("8080:80", {"protocol": "tcp", "container_port": 80, "host_port": 8080}),
    ("127.0.0.1:8080:80/udp", {"protocol": "udp", "container_port": 80, "host_port": 8080, "host_ip": "127.0.0.1"}),
    ("127.0.0.1::80", {"protocol": "tcp", "container_port": 80, "host_ip": "127.0.0.1"}),
])
def test_publish_syntax(text: str, want: dict) -> None:
    assert parse_publish(text) == want


@pytest.mark.parametrize(("text", "why"), [
    ("0", "container port '0'"), ("65536:80", "host port '65536'"), ("80/sctp", "unknown protocol 'sctp'"),
    ("1.2.3:80:80", "'1.2.3' is not an IPv4 address"), ("x:80", "host port 'x'"),
])
def test_publish_syntax_errors(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(why)):
        parse_publish(text)


def test_oci_config_reports_what_it_does_not_honour(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
           "process": {"args": ["sh"], "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]},
           "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                      {"destination": "/data", "type": "bind", "source": str(tmp_path), "options": ["rbind"]},
                      {"destination": "/etc/hosts", "type": "bind", "source": str(hosts), "options": ["rbind"]},
                      {"destination": "/dev/x", "type": "bind", "source": "/dev/null", "options": ["rbind"]},
                      {"destination": "/mnt", "type": "nfs", "source": "server:/x"}],
           "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}], "seccomp": {"defaultAction": "x"},
                     "resources": {"memory": {"limit": 512 << 20}}}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = oci.load(tmp_path)
    assert [m.destination for m in oci.bind_mounts(c)] == ["/data", "/etc/hosts", "/dev/x"]
    reported = " | ".join(oci.unsupported(c))
    assert "/etc/hosts" not in reported  # copied in
    for what in ("/dev/null on /dev/x", "/mnt of type nfs", "network namespace /run/netns/x", "linux.seccomp",
                 "linux.resources.memory"):
        assert what in reported
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgument, match="unknown rlimit RLIMIT_BOGUS"):
        oci.load(tmp_path)
