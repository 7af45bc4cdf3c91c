"""Pod spec validation: errors name the field; users resolve like docker's."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click
import pytest
from pydantic import ValidationError

from hypercontainer.cli.hyperctl.run import security_options
from hypercontainer.errors import InvalidArgument
from hypercontainer.pod.users import resolve
from hypercontainer.spec import oci
from hypercontainer.spec.errors import invalid_spec
from hypercontainer.spec.kube import from_kube
from hypercontainer.spec.pod import CAPABILITIES, PodSpec
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
    ({"containers": []}, "at least one container"),
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
           "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}],
                     "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"},
                     "resources": {"memory": {"limit": 512 << 20, "reservation": 1 << 20}, "pids": {"limit": 9}}}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = oci.load(tmp_path)
    assert [m.destination for m in oci.bind_mounts(c)] == ["/data", "/etc/hosts", "/dev/x"]
    reported = " | ".join(oci.unsupported(c))
    assert "/etc/hosts" not in reported  # copied in
    for what in ("/dev/null on /dev/x", "/mnt of type nfs", "linux.resources.memory.reservation",
                 "linux.resources.pids"):
        assert what in reported
    assert "linux.seccomp" not in reported and "memory.limit" not in reported  # applied in the guest
    assert "network" not in reported  # the namespace's interfaces are carried into the VM
    assert oci.network_namespace(c) == ("path", "/run/netns/x")
    cfg["linux"]["namespaces"] = [{"type": "network"}]
    cfg["hooks"] = {"prestart": [{"path": "/bin/true"}], "createContainer": [{"path": "/bin/true"}]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = oci.load(tmp_path)
    reported = " | ".join(oci.unsupported(c))
    assert oci.network_namespace(c) == ("new", None) and "network" not in reported
    assert "hooks.createContainer" in reported and "prestart" not in reported  # run on the host, as runc does
    cfg["linux"]["namespaces"] = []
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert "the host's network namespace" in " | ".join(oci.unsupported(oci.load(tmp_path)))
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgument, match="unknown rlimit RLIMIT_BOGUS"):
        oci.load(tmp_path)


def test_capabilities_like_docker() -> None:
    default = 0xA80425FB
    every = (1 << len(CAPABILITIES)) - 1

    def mask(add: list[str] = [], drop: list[str] = [], privileged: bool = False) -> int:  # noqa: B006
        spec = PodSpec.model_validate(ok(containers=[{"name": "a", "image": "b", "privileged": privileged,
                                                       "capabilities": {"add": add, "drop": drop}}]))
        return spec.containers[0].capabilities.mask(spec.containers[0].privileged)

    assert mask() == default
    assert mask(add=["sys_admin"], drop=["CAP_NET_RAW"]) == (default | 1 << 21) & ~(1 << 13)
    assert mask(drop=["ALL"], add=["CHOWN"]) == 1
    assert mask(add=["ALL"], drop=["SYS_MODULE"]) == every & ~(1 << 16)
    assert mask(drop=["all"]) == 0 and mask(privileged=True) == every
    assert "unknown capability 'CAP_FLY'" in err(ok(containers=[{"name": "a", "image": "b",
                                                                   "capabilities": {"add": ["CAP_FLY"]}}]))


def test_share_process_namespace_reaches_every_container() -> None:
    two = [{"name": "a", "image": "b"}, {"name": "c", "image": "b"}]
    spec = PodSpec.model_validate(ok(containers=two, shareProcessNamespace=True))
    assert [c.pid_namespace for c in spec.containers] == ["pod", "pod"]
    assert PodSpec.model_validate(spec.model_dump(mode="json")) == spec  # stored and read back alike
    assert [c.pid_namespace for c in PodSpec.model_validate(ok(containers=two)).containers] == ["container"] * 2


def test_kube_security_context() -> None:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "shareProcessNamespace": True,
        "containers": [{"name": "a", "image": "busybox", "securityContext": {
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}, "allowPrivilegeEscalation": False,
            "privileged": False, "seccompProfile": {"type": "RuntimeDefault"}}}]}}
    ours, ignored = from_kube(doc)
    spec = PodSpec.model_validate(ours)
    c = spec.containers[0]
    assert spec.share_process_namespace and c.pid_namespace == "pod"
    assert c.capabilities.mask() == 1 << 12 and c.no_new_privileges and not c.privileged
    assert ignored == ["spec.containers[0].securityContext.seccompProfile"]


def test_oci_capabilities_and_no_new_privileges(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    cfg = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "linux": {"namespaces": [{"type": "network"}]},
           "process": {"args": ["sh"], "noNewPrivileges": True, "capabilities": {
               "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_TELEPATHY"], "effective": ["CAP_KILL"],
               "permitted": ["CAP_KILL", "CAP_CHOWN"], "ambient": ["CAP_KILL"]}}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = oci.load(tmp_path)
    assert c.process
    assert oci.process_security(c.process) == {"cap_bounding": 0b100001, "cap_effective": 0b100000,
                                               "cap_permitted": 0b100001, "cap_inheritable": 0,
                                               "cap_ambient": 0b100000, "no_new_privs": 1}
    assert oci.unsupported(c) == ["process.capabilities: unknown capability CAP_TELEPATHY"]
    # An exec's process without them takes the container's; a config without any gets docker's default set.
    bare = oci.Process.model_validate({"args": ["true"]})
    inherited = oci.process_security(bare, inherit={"cap_bounding": 1, "cap_effective": 1, "no_new_privs": 1})
    assert inherited == {"cap_bounding": 1, "cap_effective": 1, "no_new_privs": 1}
    assert oci.process_security(bare)["cap_effective"] == 0xA80425FB
    cfg["linux"] = {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert any("pid namespace /proc/1/ns/pid" in w for w in oci.unsupported(oci.load(tmp_path)))


def test_hyperctl_security_flags() -> None:
    assert security_options(("SYS_ADMIN",), ("NET_RAW",), True, ("no-new-privileges",)) == {
        "capabilities": {"add": ["SYS_ADMIN"], "drop": ["NET_RAW"]}, "privileged": True, "no_new_privileges": True}
    assert security_options((), (), False, ("no-new-privileges=false",)) == {"no_new_privileges": False}
    with pytest.raises(click.BadParameter):
        security_options((), (), False, ("seccomp=unconfined",))
