"""hyperd as a Kubernetes CRI v1 runtime, driven by crictl v1.37.0 (built from the Go module proxy) on real VMs, and
by a gRPC client of our own where the exact status code matters. One sandbox (one VM) serves the flow tests, in
file order; a hyperd of this module's own is restarted to show the CRI state survives it.

That hyperd runs in a network namespace the module makes (its "host"), with a CNI configuration of its own (bridge
hcri0 on 10.67.0.0/24, portmap, firewall, loopback; IPAM data, result cache and sandbox namespaces in its temporary
directory): the plugins' bridge, veths and iptables rules stay in there, never on this machine's network or in
/etc/cni/net.d. crictl runs in that namespace too (the streaming server listens on its loopback)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from hypercontainer import nsenter
from hypercontainer.network import cni as hcni

from . import netns as tnetns
from .conftest import Daemon, _build_busybox_archive
from .crictl import build_crictl
from .registry import PASSWORD, USER, Registry

pytestmark = pytest.mark.vm

LOG_LINE = re.compile(rb"^(\S+) (stdout|stderr) (F|P) (.*)$")
PLUGINS = Path("/usr/lib/cni")
NETWORK, BRIDGE, SUBNET = "hct-cri", "hcri0", ipaddress.IPv4Network("10.67.0.0/24")
HOST_PORT = 18080  # the sandbox's hostPort -> 80, through portmap
TRANSPORTS = ["spdy", "websocket"]

try:
    import grpc

    from hypercontainer.cri.api import pb, rpc
except Exception as e:  # the generated modules are missing: say what to run
    pytest.skip(f"the CRI API is not built ({e}): run `make cri-api`", allow_module_level=True)




class Cri:
    """crictl and a gRPC client against one hyperd's CRI socket; hyperd's network namespace (`host`), its CNI
    directories."""

    def __init__(self, daemon: Daemon, crictl: Path, workdir: Path, host: tnetns.Netns, root: Path) -> None:
        self.d, self.bin, self.dir, self.host = daemon, crictl, workdir, host
        self.endpoint = f"unix://{daemon.cri_socket}"
        self.channel: Any = None
        self.conf_dir, self.ipam, self.netns_dir = root / "net.d", root / "ipam", root / "netns"
        self.cache = daemon.statedir / "cni"  # hyperd's default: <root>/cni

    def argv(self, *args: str) -> list[str]:
        """crictl in hyperd's network namespace (the streaming URLs point at its loopback)."""
        return self.host.argv(str(self.bin), "--config", "/dev/null", "-r", self.endpoint, "-i", self.endpoint,
                              "-t", "120s", *args)

    def crictl(self, *args: str, check: bool = True, timeout: float = 180,
               input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    # ---- the host namespace's network, as CNI left it ----------------------------------------------------------
    def links(self) -> list[str]:
        return sorted(self.host.links())

    def rules(self) -> str:
        return subprocess.run(self.host.argv("iptables-save"), capture_output=True, text=True, check=True).stdout

    def ipam_files(self) -> list[str]:
        d = self.ipam / NETWORK
        return sorted(n for n in os.listdir(d) if n[0].isdigit()) if d.exists() else []

    def namespaces(self) -> list[str]:
        return sorted(p.name for p in self.netns_dir.iterdir()) if self.netns_dir.exists() else []

    def attachments(self) -> list[str]:
        return sorted(e.container_id for e in hcni.attachments(self.cache))

    def fetch(self, url: str, tries: int = 80) -> str:
        """GET from hyperd's network namespace (the node), retrying while the server comes up."""
        code = ("import sys, urllib.request; "
                "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
        r = None
        for _ in range(tries):
            r = subprocess.run(self.host.argv(sys.executable, "-c", code, url), capture_output=True, text=True,
                               timeout=30)
            if r.returncode == 0:
                return r.stdout
            time.sleep(0.25)
        raise AssertionError(f"{url}: {r.stderr[-500:] if r else ''}")

    def json(self, *args: str) -> Any:
        return json.loads(self.crictl(*args).stdout)

    def write(self, name: str, obj: dict) -> str:
        path = self.dir / name
        path.write_text(json.dumps(obj))
        return str(path)

    @property
    def runtime(self) -> Any:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.endpoint)
        return rpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> Any:
        self.runtime  # noqa: B018 - opens the channel
        return rpc.ImageServiceStub(self.channel)

    def code(self, call: Any, request: Any) -> Any:
        """The status code (and message) a call fails with; OK if it does not."""
        try:
            call(request, timeout=120)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    def pod_count(self) -> int:
        return len(self.d.hyperctl("ps", "-aq", check=True).stdout.split())


@pytest.fixture(scope="module")
def crictl_bin() -> Path:
    return build_crictl()


def conflist(root: Path, *extra: dict[str, Any]) -> dict[str, Any]:
    """The module's CNI network: the default conflist's shape on a bridge, subnet and IPAM directory of its own."""
    return {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": str(SUBNET)}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": str(root / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}}, {"type": "firewall"}, {"type": "loopback"},
        *extra]}


def write_conflist(root: Path, *extra: dict[str, Any]) -> None:
    d = root / "net.d"
    d.mkdir(exist_ok=True)
    (d / "10-hct-cri.conflist").write_text(json.dumps(conflist(root, *extra)))


@pytest.fixture(scope="module")
def cri(crictl_bin: Path):
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (overlay mounts, QEMU)")
    if not (PLUGINS / "bridge").exists():
        pytest.skip("the CNI plugins (Debian package containernetworking-plugins) are not installed")
    root = Path(tempfile.mkdtemp(prefix="hc-cri-"))
    host = tnetns.Netns(f"hct-cri-{os.getpid()}")
    write_conflist(root)
    d = Daemon(root, netns=host.path, HYPERCONTAINER_CNI_CONF_DIR=str(root / "net.d"),
               HYPERCONTAINER_CNI_NETNS_DIR=str(root / "netns"), HYPERCONTAINER_CNI_NETWORK=NETWORK,
               HYPERCONTAINER_CNI_BIN_DIR=str(PLUGINS))
    d.env["HYPERCONTAINER_NETWORK"] = "none"  # hyperd's own pod network is not the CRI's: CNI gives sandboxes theirs
    try:
        d.start()
        d.hyperctl("load", "-i", str(_build_busybox_archive()), check=True)
        (root / "work").mkdir()
        c = Cri(d, crictl_bin, root / "work", host, root)
        yield c
        if c.channel is not None:
            c.channel.close()
    finally:
        d.stop()
        netns_dir = root / "netns"
        if netns_dir.exists():  # what `hyperctl rm -f` left (it knows nothing of CNI): the mounts go
            for p in netns_dir.iterdir():
                hcni.netns.remove(p)
            subprocess.run(["umount", str(netns_dir)], capture_output=True)
        host.delete()  # the bridge, veths and iptables rules with it
        shutil.rmtree(root, ignore_errors=True)


STATE: dict[str, Any] = {}  # what the flow tests hand on, in file order: the sandbox and its containers


def sandbox_config(cri: Cri, name: str = "web", attempt: int = 0, **extra: Any) -> dict:
    logs = cri.dir / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    return {"metadata": {"name": name, "namespace": "test", "uid": f"uid-{name}", "attempt": attempt},
            "hostname": name, "log_directory": str(logs), "labels": {"app": name, "tier": "front"},
            "annotations": {"note": "a sandbox"},
            "dns_config": {"servers": ["192.0.2.53"], "searches": ["example.test"], "options": ["ndots:2"]},
            "linux": {"security_context": {"namespace_options": {"pid": 1}}}, **extra}


def container_config(name: str, command: list[str], attempt: int = 0, **extra: Any) -> dict:
    return {"metadata": {"name": name, "attempt": attempt}, "image": {"image": "busybox"}, "command": command,
            "log_path": f"{name}/{attempt}.log", "labels": {"container": name},
            "annotations": {"why": "test"}, "linux": {"security_context": {"namespace_options": {"pid": 1}}},
            **extra}


def wait_for(pred: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition never held")


# ---- hyperd's flags -------------------------------------------------------------------------------------------
def test_cri_flags(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hypercontainer.daemon.config import build, command

    assert build(run=tmp_path).cri_socket == tmp_path / "cri.sock"  # default: under --run
    assert build(cri_socket=tmp_path / "k.sock").cri_socket == tmp_path / "k.sock"
    assert build(cri=False).cri_socket is None
    got: list[Any] = []
    r = CliRunner().invoke(command(got.append), ["--no-cri"], env={"HYPERCONTAINER_CRI_SOCKET": str(tmp_path / "x")})
    assert r.exit_code == 0 and got[0].cri_socket is None
    r = CliRunner().invoke(command(got.append), [], env={"HYPERCONTAINER_CRI_SOCKET": "/" + "c" * 120})
    assert r.exit_code == 2 and "--cri-socket" in r.output and "HYPERCONTAINER_CRI_SOCKET" in r.output
    # the streaming server's address
    assert build().cri_streaming == ("127.0.0.1", 0)
    assert build(cri_streaming_address="0.0.0.0:10010").cri_streaming == ("0.0.0.0", 10010)
    assert build(cri_streaming_address="[::1]:9").cri_streaming == ("::1", 9)
    assert build(cri_streaming_address="::1").cri_streaming == ("::1", 0)
    assert build(cri_streaming_address="node-1.example").cri_streaming == ("node-1.example", 0)
    for bad in ("1.2.3.4:99999", ":80", "[::1", "a b", "[nope]:1"):
        with pytest.raises(Exception, match="--cri-streaming-address"):
            build(cri_streaming_address=bad)
    # CNI: defaults, and the flags with their variables
    cfg = build(root=tmp_path)
    assert (cfg.cni_conf_dir, cfg.cni_bin_dirs, cfg.cni_cache_dir, cfg.cni_netns_dir, cfg.cni_network) == (
        Path("/etc/cni/net.d"), (Path("/usr/lib/cni"), Path("/opt/cni/bin")), tmp_path / "cni", Path("/run/netns"),
        "hypercontainer")
    r = CliRunner().invoke(command(got.append), ["--cni-conf-dir", "/x/net.d", "--cni-cache-dir", "/x/cache",
                                                 "--cni-network", "", "--cri-streaming-address", "127.0.0.2:0"],
                           env={"HYPERCONTAINER_CNI_BIN_DIR": "/a:/b", "HYPERCONTAINER_CNI_NETNS_DIR": "/x/ns"})
    assert r.exit_code == 0, r.output
    c = got[-1]
    assert (c.cni_conf_dir, c.cni_bin_dirs, c.cni_cache_dir, c.cni_netns_dir, c.cni_network, c.cri_streaming) == (
        Path("/x/net.d"), (Path("/a"), Path("/b")), Path("/x/cache"), Path("/x/ns"), None, ("127.0.0.2", 0))
    r = CliRunner().invoke(command(got.append), [], env={"HYPERCONTAINER_CNI_BIN_DIR": "relative/bin"})
    assert r.exit_code == 2 and "--cni-bin-dir" in r.output and "HYPERCONTAINER_CNI_BIN_DIR" in r.output
    r = CliRunner().invoke(command(got.append), ["--cni-network", "no spaces"])
    assert r.exit_code == 2 and "--cni-network" in r.output


# ---- config translation (no VM) -------------------------------------------------------------------------------
def test_sandbox_config_mapping() -> None:
    from hypercontainer.cri import convert
    from hypercontainer.errors import InvalidArgument

    cfg = json_format.ParseDict({
        "metadata": {"name": "web", "namespace": "prod", "uid": "u", "attempt": 2}, "hostname": "web-0",
        "dns_config": {"servers": ["192.0.2.1"], "searches": ["svc.test"], "options": ["ndots:5"]},
        "linux": {"sysctls": {"net.core.somaxconn": "1024"}, "cgroup_parent": "/kubepods/x",
                  "resources": {"memory_limit_in_bytes": str(512 << 20), "cpu_quota": "150000", "cpu_period": "100000"},
                  "overhead": {"memory_limit_in_bytes": str(64 << 20)}}}, pb.PodSandboxConfig())
    plan = convert.sandbox(cfg, "a" * 64, set())
    assert plan.spec["name"] == "web_prod_2" and plan.spec["hostname"] == "web-0" and plan.spec["keep_alive"]
    assert plan.spec["resources"] == {"memory": 512 + 64 + 64, "vcpu": 2}
    assert (plan.spec["dns"], plan.spec["dns_search"], plan.spec["dns_options"]) == (
        ["192.0.2.1"], ["svc.test"], ["ndots:5"])
    assert plan.sysctls == {"net.core.somaxconn": "1024"} and "cgroup_parent" in plan.unapplied[0]
    assert convert.sandbox(cfg, "b" * 64, {"web_prod_2"}).spec["name"] == "cri-bbbbbbbbbbbb"  # name taken
    for kind in ("network", "pid", "ipc"):
        node = pb.PodSandboxConfig()
        node.CopyFrom(cfg)
        setattr(node.linux.security_context.namespace_options, kind, pb.NODE)
        with pytest.raises(InvalidArgument, match=f"host's {kind} namespace"):
            convert.sandbox(node, "c" * 64, set())


def test_container_config_mapping(tmp_path: Path) -> None:
    from hypercontainer.cri import convert
    from hypercontainer.errors import InvalidArgument
    from hypercontainer.protocol.agent import check_seccomp

    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    cfg = json_format.ParseDict({
        "metadata": {"name": "app", "attempt": 1}, "image": {"image": "busybox"},
        "command": ["/bin/app"], "args": ["--flag"], "working_dir": "/srv",
        "envs": [{"key": "A", "value": base64.b64encode(b"1").decode()}], "tty": True, "stop_signal": "SIGNAL_SIGINT",
        "mounts": [{"container_path": "/data", "host_path": str(tmp_path / "new"), "readonly": True,
                    "propagation": "PROPAGATION_BIDIRECTIONAL"},
                   {"container_path": "/etc/hosts", "host_path": str(tmp_path / "hosts")}],
        "linux": {"resources": {"memory_limit_in_bytes": str(128 << 20), "cpu_shares": "512"},
                  "security_context": {
                      "run_as_user": {"value": "1000"}, "run_as_group": {"value": "2000"},
                      "supplemental_groups": ["3000"], "readonly_rootfs": True, "no_new_privs": True,
                      "capabilities": {"add_capabilities": ["NET_ADMIN"], "drop_capabilities": ["CAP_MKNOD"]},
                      "masked_paths": ["/proc/kcore"], "readonly_paths": ["/proc/sys"],
                      "namespace_options": {"pid": "CONTAINER"}, "seccomp": {"profile_type": "RuntimeDefault"}}}},
        pb.ContainerConfig())
    plan = convert.container(cfg, "app.1", "d" * 64, {"kernel.shm_rmid_forced": "1"})
    sp = plan.spec
    assert (sp["entrypoint"], sp["command"], sp["workdir"], sp["env"], sp["tty"]) == (
        ["/bin/app"], ["--flag"], "/srv", ["A=1"], True)
    assert (sp["user"], sp["readonly"], sp["no_new_privileges"], sp["pid_namespace"], sp["stop_signal"]) == (
        "1000:2000", True, True, "container", "SIGINT")
    assert sp["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["MKNOD"]}
    assert sp["sysctls"] == {"kernel.shm_rmid_forced": "1"}
    assert (tmp_path / "new").is_dir()  # made, as containerd does
    assert plan.volumes == [{"name": "vdddddddddddd-0", "host_path": str(tmp_path / "new")}]
    assert sp["volumes"] == [{"name": "vdddddddddddd-0", "path": "/data", "readonly": True,
                              "recursive_readonly": False}]
    assert sp["files"][0]["path"] == "/etc/hosts" and base64.b64decode(sp["files"][0]["base64"]).startswith(b"127")
    assert check_seccomp(plan.overrides.pop("seccomp")) > 10  # RuntimeDefault: the default profile, compiled
    assert plan.overrides == {"memory_limit": 128 << 20, "group": [3000], "masked_paths": ["/proc/kcore"],
                              "readonly_paths": ["/proc/sys"]}
    notes = " ".join(plan.unapplied)
    for word in ("propagation", "copied in", "CPU"):
        assert word in notes, word
    assert "seccomp" not in notes
    for bad, why in (({"devices": [{"container_path": "/dev/x", "host_path": "/dev/null"}]}, "devices"),
                     ({"linux": {"security_context": {"run_as_group": {"value": "1"}}}}, "run_as_group"),
                     ({"linux": {"security_context": {"seccomp": {"profile_type": "Localhost",
                                                                  "localhost_ref": "/x.json"}}}},
                      "Localhost profile '/x.json' cannot be read"),
                     ({"mounts": [{"container_path": "/x", "host_path": "/", "recursive_read_only": True}]},
                      "recursive"),
                     ({"linux": {"security_context": {"namespace_options": {"network": "NODE"}}}}, "network")):
        c = json_format.ParseDict({"metadata": {"name": "x"}, "image": {"image": "busybox"}, **bad},
                                  pb.ContainerConfig())
        with pytest.raises(InvalidArgument, match=why):
            convert.container(c, "x", "e" * 64, {})


def test_sandbox_network_arguments_and_readiness(tmp_path: Path) -> None:
    """What RunPodSandbox hands CNI (capability arguments as containerd passes them), NetworkReady from the
    configuration and its plugins, and the refusals without a network. No VM."""
    from hypercontainer.cri import network
    from hypercontainer.errors import InvalidArgument

    cfg = json_format.ParseDict({
        "metadata": {"name": "web", "namespace": "prod", "uid": "u"},
        "port_mappings": [{"container_port": 80, "host_port": 8080, "host_ip": "127.0.0.1"},
                          {"protocol": "UDP", "container_port": 53, "host_port": 5353}, {"container_port": 81}],
        "dns_config": {"servers": ["192.0.2.1"], "searches": ["svc.test"], "options": ["ndots:5"]},
        "annotations": {"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1Mi"}},
        pb.PodSandboxConfig())
    assert network.capability_args(cfg) == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                         {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}],
        "dns": {"servers": ["192.0.2.1"], "searches": ["svc.test"], "options": ["ndots:5"]},
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 10_000_000, "egressRate": 1 << 20,
                      "egressBurst": 1 << 20}}
    assert network.capability_args(pb.PodSandboxConfig()) == {}
    assert network.quantity("1.5k", "x") == 1500 and network.quantity("2Gi", "x") == 2 << 30
    for bad in ("ten", "0", "-1M", "1Q"):
        with pytest.raises(InvalidArgument, match="x: "):
            network.quantity(bad, "x")
    assert network.netns_name("ab" * 32) == "hc-cri-" + "ab" * 16

    async def run() -> None:
        step = network.CniNetwork(tmp_path / "none", [PLUGINS], tmp_path / "cache", tmp_path / "ns", "hct-x")
        r = await step.readiness()
        assert (r.ready, r.reason) == (False, "NetworkPluginNotReady") and "no CNI network configuration named " \
            "'hct-x'" in r.message
        d = tmp_path / "net.d"
        d.mkdir()
        (d / "10-x.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "hct-x", "plugins": [
            {"type": "bridge"}, {"type": "hc-no-such-plugin"}]}))
        step.conf_dir = d
        r = await step.readiness()
        assert not r.ready and "hc-no-such-plugin" in r.message and "not found" in r.message
        (d / "10-x.conflist").write_text(json.dumps(conflist(tmp_path)).replace(NETWORK, "hct-x"))
        if (PLUGINS / "bridge").exists():
            assert (await step.readiness()).ready
        step.network = None  # the first valid configuration
        assert (await step.readiness()).ready == (PLUGINS / "bridge").exists()
        with pytest.raises(InvalidArgument, match=r"hostPort mappings .8080->80.* need a CNI network"):
            await network.NoNetwork(lambda: network.Readiness(True)).setup("s", cfg)
        await step.teardown("s" * 64, {})  # a sandbox without a CNI network: nothing to do

    asyncio.run(run())


def test_make_cni_installs_the_default_network_by_name(tmp_path: Path) -> None:
    """`make cni`: the default network goes in unless one named `hypercontainer` is there; podman's (or anyone's)
    other networks do not count and stay as they are."""
    d = tmp_path / "net.d"
    d.mkdir()
    podman = d / "87-podman-bridge.conflist"
    podman.write_text(json.dumps({"cniVersion": "0.4.0", "name": "podman", "plugins": [{"type": "bridge"}]}))

    def install() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hypercontainer.network.cni", "install", "--by-name",
                               "--conf-dir", str(d)], capture_output=True, text=True)

    r = install()
    assert r.returncode == 0 and r.stdout.startswith("installed"), r
    assert hcni.load(d, "hypercontainer").source == str(d / "10-hypercontainer.conflist")
    assert hcni.load(d).name == "hypercontainer"  # first in lexical order too
    r = install()
    assert r.returncode == 0 and "already has a CNI network named 'hypercontainer'" in r.stdout
    (d / "10-hypercontainer.conflist").write_text("{not json")  # someone else's file of that name: never overwritten
    r = install()
    assert r.returncode == 1 and "holds no valid 'hypercontainer' network" in r.stderr
    assert (d / "10-hypercontainer.conflist").read_text() == "{not json"
    assert json.loads(podman.read_text())["name"] == "podman"
    make = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert re.search(r"^cni:.*\n\t.*hypercontainer\.network\.cni install --by-name", make, re.M)
    assert re.search(r"^demo:.* cni\b", make, re.M) and re.search(r"^test:.* cni\b", make, re.M)


def test_port_forward_needs_a_ready_sandbox() -> None:
    """Port-forward goes through the sandbox's guest agent: a sandbox that is not ready is refused with the
    reason. No VM."""
    from hypercontainer.cri.network import NoNetwork, Readiness
    from hypercontainer.cri.runtime import RuntimeService

    sid = "c" * 64
    info = {"id": sid, "name": "p", "state": "stopped",
            "meta": {"cri": {"config": {"metadata": {"name": "p"}}, "network": {"ips": [], "state": {}},
                             "containers": {}}}}

    class Manager:
        pods = {sid: object()}
        network = None

        def list(self) -> list[dict[str, Any]]:
            return [info]

    rt = RuntimeService(Manager(), None, NoNetwork(lambda: Readiness(True)))  # type: ignore[arg-type]

    async def run() -> None:
        with pytest.raises(Exception, match="not ready"):
            await rt.dial(sid, 80)

    asyncio.run(run())


# ---- the runtime ----------------------------------------------------------------------------------------------
def test_version_status_runtime_config(cri: Cri) -> None:
    v = cri.crictl("version").stdout
    assert "RuntimeName:  hypercontainer" in v and "RuntimeApiVersion:  v1" in v
    st = cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=60)
    cond = {c.type: c for c in st.status.conditions}
    assert cond["RuntimeReady"].status
    assert cond["NetworkReady"].status, cond["NetworkReady"].message  # the module's CNI network and its plugins
    assert {h.name for h in st.runtime_handlers} == {"", "hypercontainer"}
    cfg = cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=60)
    assert cfg.linux.cgroup_driver == pb.CGROUPFS
    assert "unix://" + str(cri.d.cri_socket) in cri.d.hyperctl("info", check=True).stdout.decode()


# ---- one sandbox, its containers --------------------------------------------------------------------------------
def test_runp_inspectp_pods(cri: Cri) -> None:
    before = cri.pod_count()
    config = sandbox_config(cri, port_mappings=[{"container_port": 80, "host_port": HOST_PORT}])
    sid = cri.crictl("runp", cri.write("sandbox.json", config)).stdout.strip()
    STATE["sandbox"] = sid
    assert re.fullmatch(r"[0-9a-f]{64}", sid)
    assert cri.pod_count() == before + 1
    st = cri.json("inspectp", sid)
    assert st["status"]["state"] == "SANDBOX_READY"
    ip = st["status"]["network"]["ip"]  # the CNI ADD's address, in the module's subnet
    assert ipaddress.IPv4Address(ip) in SUBNET and ip != str(SUBNET[1]), ip
    STATE["ip"] = ip
    assert cri.namespaces() == ["hc-cri-" + sid[:32]] and cri.attachments() == [sid]
    assert cri.ipam_files() == [ip] and BRIDGE in cri.links()
    assert st["info"]["cni"]["netns"] == str(cri.netns_dir / ("hc-cri-" + sid[:32]))
    assert hcni.netns.is_netns(st["info"]["cni"]["netns"])  # in the host's mount namespace too (`ip netns exec`)
    assert st["status"]["labels"] == {"app": "web", "tier": "front"}
    assert st["status"]["annotations"] == {"note": "a sandbox"}
    assert st["status"]["metadata"] == {"name": "web", "uid": "uid-web", "namespace": "test", "attempt": 0}
    assert st["status"]["linux"]["namespaces"]["options"]["pid"] == "CONTAINER"
    assert st["info"]["pod"] == "web_test_0" and st["info"]["vm"]["pid"]  # crictl shows the verbose info parsed
    for args in (["--label", "app=web"], ["--state", "ready"], ["--id", sid[:8]], ["--name", "web"]):
        assert cri.crictl("pods", "-q", *args).stdout.split() == [sid], args
    assert cri.crictl("pods", "-q", "--label", "app=other").stdout.split() == []
    assert cri.crictl("pods", "-q", "--state", "notready").stdout.split() == []
    assert "web_test_0 (CRI)" in cri.d.hyperctl("ps", check=True).stdout.decode()


def test_create_start_ps_inspect(cri: Cri) -> None:
    sid = STATE["sandbox"]
    data = cri.dir / "data"
    data.mkdir()
    (data / "file").write_text("from the host\n")
    cfg = container_config("app", ["sh", "-c", "echo hello; echo oops >&2; printf 'no newline'; "
                                               "trap 'exit 0' USR1; while true; do sleep 1; done"],
                           envs=[{"key": "MODE", "value": "prod"}],  # crictl sends the string as the bytes
                           mounts=[{"container_path": "/data", "host_path": str(data), "readonly": True}],
                           stop_signal=29)  # SIGNAL_SIGUSR1 (crictl reads its JSON as Go does)
    sandbox_json = str(cri.dir / "sandbox.json")
    cid = cri.crictl("create", sid, cri.write("app.json", cfg), sandbox_json).stdout.strip()
    STATE["app"] = cid
    assert [c["state"] for c in cri.json("ps", "-a", "-o", "json")["containers"]] == ["CONTAINER_CREATED"]
    log = cri.dir / "logs" / "web" / "app" / "0.log"
    assert not log.exists()  # opened at start, as containerd does
    cri.crictl("start", cid)
    assert cri.crictl("ps", "-q", "--state", "running").stdout.split() == [cid]
    assert cri.crictl("ps", "-q", "--label", "container=app", "-p", sid[:10]).stdout.split() == [cid]
    st = cri.json("inspect", cid)
    s = st["status"]
    assert s["state"] == "CONTAINER_RUNNING" and s["labels"] == {"container": "app"}
    assert s["annotations"] == {"why": "test"} and s["logPath"] == str(log)
    assert s["mounts"][0]["containerPath"] == "/data" and s["mounts"][0]["readonly"]
    assert s["imageId"].startswith("sha256:") and s["startedAt"] != "1970-01-01T00:00:00Z"
    assert s["stopSignal"] == "SIGUSR1" or s["stopSignal"] == "SIGNAL_SIGUSR1"


def test_exec_sync(cri: Cri) -> None:
    cid = STATE["app"]
    r = cri.crictl("exec", "-s", cid, "sh", "-c", "echo $MODE; cat /data/file; hostname; cat /etc/resolv.conf")
    assert r.stdout.split("\n")[:6] == ["prod", "from the host", "web", "nameserver 192.0.2.53",
                                        "search example.test", "options ndots:2"]
    r = cri.crictl("exec", "-s", cid, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert r.returncode != 0 and "exited with 3: err" in r.stderr  # crictl prints no stdout then
    r = cri.crictl("exec", "-s", cid, "sh", "-c", "touch /data/x", check=False)
    assert r.returncode != 0  # the mount is read-only
    resp = cri.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo a; echo b >&2; exit 7"]),
                                timeout=120)
    assert (resp.stdout, resp.stderr, resp.exit_code) == (b"a\n", b"b\n", 7)
    resp = cri.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["no-such-command"]), timeout=120)
    assert resp.exit_code == 127 and resp.stderr


def test_exec_sync_timeout_kills_the_process(cri: Cri) -> None:
    cid = STATE["app"]
    code, msg = cri.code(cri.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "47"], timeout=1))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "killed" in msg
    ps = cri.crictl("exec", "-s", cid, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "sleep 47" not in ps and "while true" in ps


def test_logs_in_the_cri_format(cri: Cri) -> None:
    cid = STATE["app"]
    r = cri.crictl("logs", cid)
    assert r.stdout == "hello\n" and r.stderr.endswith("oops\n")
    lines = (cri.dir / "logs" / "web" / "app" / "0.log").read_bytes().splitlines()
    parsed = [LOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m.group(2), m.group(3), m.group(4)) for m in parsed if m] == [
        (b"stdout", b"F", b"hello"), (b"stderr", b"F", b"oops")]
    for m in parsed:
        assert m and re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", m.group(1))
        assert abs(dt.datetime.fromisoformat(m.group(1)[:26].decode() + "+00:00").timestamp() - time.time()) < 600


def test_stats(cri: Cri) -> None:
    cid, sid = STATE["app"], STATE["sandbox"]
    cri.crictl("exec", "-s", cid, "dd", "if=/dev/zero", "of=/written", "bs=1024", "count=600")
    stats = cri.json("stats", "-o", "json", "--id", cid)["stats"]
    layer = stats[0]["writableLayer"]
    assert int(layer["usedBytes"]["value"]) >= 600 * 1024 and int(layer["inodesUsed"]["value"]) >= 1
    # the container's own cgroups in the guest
    assert int(stats[0]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert int(stats[0]["memory"]["workingSetBytes"]["value"]) > 0
    pod = cri.json("statsp", "-o", "json", "--id", sid)["stats"][0]
    assert pod["attributes"]["id"] == sid
    assert int(pod["linux"]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert int(pod["linux"]["memory"]["workingSetBytes"]["value"]) > 16 << 20  # the VM's resident memory
    assert [c["attributes"]["id"] for c in pod["linux"]["containers"]] == [cid]


def test_stop_container_uses_its_stop_signal(cri: Cri) -> None:
    cid = STATE["app"]
    t0 = time.monotonic()
    cri.crictl("stop", "-t", "30", cid)
    assert time.monotonic() - t0 < 20  # USR1 ended it: no waiting for the timeout
    s = cri.json("inspect", cid)["status"]
    assert s["state"] == "CONTAINER_EXITED" and s["exitCode"] == 0 and s["reason"] == "Completed"
    assert s["finishedAt"] >= s["startedAt"]
    # the unterminated last line was written when the stream ended
    assert (cri.dir / "logs" / "web" / "app" / "0.log").read_bytes().splitlines()[-1].endswith(
        b" stdout F no newline")
    cri.crictl("stop", cid)  # again: not an error


def test_container_exit_code_reason_and_events(cri: Cri) -> None:
    sid = STATE["sandbox"]
    events = cri.runtime.GetContainerEvents(pb.GetEventsRequest())
    seen: list[tuple[str, int]] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled below
            for ev in events:
                seen.append((ev.container_id, ev.container_event_type))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)  # subscribed
    cid = cri.crictl("create", sid, cri.write("fail.json", container_config("fail", ["sh", "-c", "exit 4"])),
                     str(cri.dir / "sandbox.json")).stdout.strip()
    cri.crictl("start", cid)
    wait_for(lambda: cri.json("inspect", cid)["status"]["state"] == "CONTAINER_EXITED")
    s = cri.json("inspect", cid)["status"]
    assert (s["exitCode"], s["reason"]) == (4, "Error")
    cri.crictl("rm", cid)
    assert cid not in cri.crictl("ps", "-aq").stdout
    assert cri.code(cri.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid))[0] == \
        grpc.StatusCode.NOT_FOUND
    wait_for(lambda: len([e for e in seen if e[0] == cid]) == 4, timeout=10)
    events.cancel()
    assert [t for c, t in seen if c == cid] == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                                                pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]


# ---- the pod's network (CNI) and the streaming server ----------------------------------------------------------
HELLO = "hello from the pod\n"


def network_snapshot(cri: Cri) -> tuple[Any, ...]:
    """What CNI made on the node: namespaces, links, IPAM files, cache entries, the namespace journal, iptables
    chains and rules (without counters)."""
    rules = {line.split()[0] if line.startswith(":") else line for line in cri.rules().splitlines()
             if not line.startswith("#")}
    journal = cri.cache / "hypercontainer-netns"
    return (cri.namespaces(), cri.links(), cri.ipam_files(), cri.attachments(),
            sorted(os.listdir(journal)) if journal.exists() else [], sorted(rules))


def test_the_pods_ip_answers_and_its_host_port(cri: Cri) -> None:
    sid, ip = STATE["sandbox"], STATE["ip"]
    cfg = container_config("www", ["sh", "-c", "mkdir -p /www && echo hello from the pod > /www/index.html && "
                                               "exec httpd -f -p 80 -h /www"])
    cid = cri.crictl("create", sid, cri.write("www.json", cfg), str(cri.dir / "sandbox.json")).stdout.strip()
    cri.crictl("start", cid)
    STATE["www"] = cid
    assert cri.fetch(f"http://{ip}/") == HELLO  # the node reaches the pod at its IP, over the CNI bridge
    assert cri.fetch(f"http://127.0.0.1:{HOST_PORT}/") == HELLO  # its hostPort, through portmap
    rules = cri.rules()
    assert "CNI-DN-" in rules and sid in rules
    # from the pod: its address on eth0 is the CNI one, its gateway the bridge
    r = cri.crictl("exec", "-s", cid, "sh", "-c", f"ip -o -4 addr show eth0; ping -c 1 -W 5 {SUBNET[1]}")
    assert f"inet {ip}/{SUBNET.prefixlen}" in r.stdout and "1 packets received" in r.stdout


def tty_session(cri: Cri, args: list[str], steps: list[tuple[bytes, bytes | None]], size: tuple[int, int],
                timeout: float = 90) -> tuple[int, bytes]:
    """crictl from a terminal (a pty of `size`): for each step, wait for its output, then type its input."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    p = subprocess.Popen(["setsid", "-c", *cri.argv(*args)], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout

    def read() -> bool:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: crictl exited, the terminal is gone
            return False
        out.extend(chunk)
        return bool(chunk)

    try:
        for expect, send in steps:
            while expect not in out:
                assert read(), f"no {expect!r} in {bytes(out)!r}"
            if send is not None:
                os.write(master, send)
        rc = p.wait(max(1.0, deadline - time.monotonic()))
        while read():
            pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return rc, bytes(out).replace(b"\r\n", b"\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_through_the_streaming_server(cri: Cri, transport: str) -> None:
    """crictl exec (not -s): the Exec RPC's URL, then SPDY or WebSocket to hyperd's streaming server."""
    cid = STATE["www"]
    r = cri.crictl("exec", "--transport", transport, cid, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert r.returncode == 1 and r.stdout == "out\n", r  # crictl exits 1, saying what the status frame said
    assert r.stderr.startswith("err\n") and "command terminated with exit code 3" in r.stderr, r.stderr
    r = cri.crictl("exec", "-i", "--transport", transport, cid, "sh", "-c", "tr a-z A-Z; echo done",
                   input="hello\nworld\n")
    assert (r.stdout, r.stderr) == ("HELLO\nWORLD\ndone\n", "")
    r = cri.crictl("exec", "--transport", transport, cid, "/nonexistent/binary", check=False)
    assert r.returncode == 1 and "command terminated with exit code 127" in r.stderr, r.stderr
    # -it from a terminal: its size first, stdin to the process's terminal, stderr merged into it. (Under load the
    # first tcgetattr of a freshly exec'd terminal process in the guest can fail, hyperctl exec -it's as well: the
    # script asks again, quietly, until the size is there.)
    script = ('i=0; while [ "$(stty size 2>/dev/null)" != "33 97" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); '
              'done; echo "size $(stty size)"; read line; echo "got:$line" >&2; [ -t 0 ] && echo on-a-tty; exit 0')
    rc, out = tty_session(cri, ["exec", "-it", "--transport", transport, cid, "sh", "-c", script],
                          [(b"size 33 97", b"hi\r"), (b"on-a-tty", None)], (33, 97))
    assert rc == 0 and b"got:hi\n" in out, out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach(cri: Cri, transport: str) -> None:
    """crictl attach -i to a container whose config says stdin and stdin_once: its output from then on, the client's
    stdin to its main process, closed when the client's ends (StdinOnce), the session over when it exits."""
    sid = STATE["sandbox"]
    name = f"reader-{transport}"
    cfg = container_config(name, ["sh", "-c", 'while read l; do echo "got:$l"; echo "err:$l" >&2; done; echo bye; '
                                              "exit 5"], stdin=True, stdin_once=True)
    cid = cri.crictl("create", sid, cri.write(f"{name}.json", cfg), str(cri.dir / "sandbox.json")).stdout.strip()
    cri.crictl("start", cid)
    r = cri.crictl("attach", "-i", "--transport", transport, cid, input="x\ny\n")
    assert (r.returncode, r.stdout) == (0, "got:x\ngot:y\nbye\n") and "err:x\nerr:y\n" in r.stderr, r
    wait_for(lambda: cri.json("inspect", cid)["status"]["state"] == "CONTAINER_EXITED")
    assert cri.json("inspect", cid)["status"]["exitCode"] == 5
    cri.crictl("rm", cid)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward(cri: Cri, transport: str) -> None:
    """crictl port-forward to the pod's httpd, and to a server bound to the pod's own loopback (the guest's agent
    relays the connection inside the VM, as the kubelet reaches a pod's localhost)."""
    sid = STATE["sandbox"]
    local = 28080 + TRANSPORTS.index(transport)

    def forward(remote: int) -> subprocess.Popen:
        p = subprocess.Popen(cri.argv("port-forward", "--transport", transport, sid, f"{local}:{remote}"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 60)
        line = p.stdout.readline() if ready else ""
        assert line.startswith(f"Forwarding from 127.0.0.1:{local} -> {remote}"), (line, p.poll())
        return p

    p = forward(80)
    try:
        assert cri.fetch(f"http://127.0.0.1:{local}/") == HELLO
        assert cri.fetch(f"http://127.0.0.1:{local}/index.html") == HELLO  # the same forward serves more
    finally:
        p.send_signal(2)  # SIGINT: crictl stops forwarding
        p.wait(20)
    loopback = 8080 + TRANSPORTS.index(transport)
    cri.crictl("exec", "-s", STATE["www"], "httpd", "-p", f"127.0.0.1:{loopback}", "-h", "/www")  # daemonizes
    p = forward(loopback)
    try:
        assert cri.fetch(f"http://127.0.0.1:{local}/") == HELLO
    finally:
        p.send_signal(2)
        p.wait(20)
    p = forward(9)  # nothing listens there: the error stream says so, crictl gives up
    try:
        with pytest.raises(AssertionError):
            cri.fetch(f"http://127.0.0.1:{local}/", tries=1)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert f"error forwarding port 9 to pod {sid}" in err and "nothing listens on port 9 of pod sandbox" in err, err


def test_errors_leave_nothing(cri: Cri) -> None:
    sid, rt = STATE["sandbox"], cri.runtime
    nf = grpc.StatusCode.NOT_FOUND
    assert cri.code(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="f" * 64))[0] == nf
    assert cri.code(rt.ContainerStatus, pb.ContainerStatusRequest(container_id="f" * 64))[0] == nf
    assert cri.code(rt.StartContainer, pb.StartContainerRequest(container_id="f" * 64))[0] == nf
    assert cri.code(rt.ExecSync, pb.ExecSyncRequest(container_id="f" * 64, cmd=["true"]))[0] == nf
    for call, req in ((rt.StopContainer, pb.StopContainerRequest(container_id="f" * 64)),
                      (rt.RemoveContainer, pb.RemoveContainerRequest(container_id="f" * 64)),
                      (rt.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id="f" * 64)),
                      (rt.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))):
        assert cri.code(call, req)[0] == grpc.StatusCode.OK  # idempotent, as the CRI says
    pods, ctrs = cri.pod_count(), cri.crictl("ps", "-aq").stdout.split()
    logs = sorted(p for p in (cri.dir / "logs").rglob("*"))
    net = network_snapshot(cri)
    sandbox = json.loads((cri.dir / "sandbox.json").read_text())
    cfg = json_format.ParseDict(sandbox, pb.PodSandboxConfig())
    code, msg = cri.code(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg))
    assert code == grpc.StatusCode.ALREADY_EXISTS and sid in msg
    node = pb.PodSandboxConfig()
    node.CopyFrom(cfg)
    node.metadata.attempt = 1
    node.linux.security_context.namespace_options.network = pb.NODE
    code, msg = cri.code(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=node))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "VM" in msg and "network" in msg
    ports = pb.PodSandboxConfig()
    ports.CopyFrom(cfg)
    ports.metadata.attempt = 2
    ports.port_mappings.add(container_port=0, host_port=8080)
    assert cri.code(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=ports))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert cri.code(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg, runtime_handler="kata"))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    host = pb.PodSandboxConfig()
    host.CopyFrom(cfg)
    host.metadata.attempt = 3
    host.hostname = "Not_A_Label"
    code, msg = cri.code(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=host))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "hostname" in msg  # found once its network was there
    assert cri.pod_count() == pods  # none of these left a pod record
    assert network_snapshot(cri) == net  # nor a namespace, veth, address, cache entry or iptables rule

    def create(name: str, image: str = "busybox", attempt: int = 0) -> tuple[Any, str]:
        c = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name, attempt=attempt),
                               image=pb.ImageSpec(image=image), command=["sleep", "60"], log_path=f"{name}.log")
        return cri.code(rt.CreateContainer, pb.CreateContainerRequest(pod_sandbox_id=sid, config=c,
                                                                     sandbox_config=cfg))

    code, msg = create("app")  # app, attempt 0 exists (exited, not removed)
    assert code == grpc.StatusCode.ALREADY_EXISTS and STATE["app"] in msg
    code, msg = create("missing", image="registry.invalid/none:1")
    assert code == grpc.StatusCode.NOT_FOUND and "registry.invalid/none:1" in msg
    dev = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="dev"), image=pb.ImageSpec(image="busybox"),
                             devices=[pb.Device(container_path="/dev/x", host_path="/dev/null")])
    assert cri.code(rt.CreateContainer, pb.CreateContainerRequest(pod_sandbox_id=sid, config=dev))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    # fails once its root is mounted (no such user in the image): its root and writable layer go again
    layers = cri.d.statedir / "pods" / sid / "containers"
    had = sorted(p.name for p in layers.iterdir())
    who = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="who"), image=pb.ImageSpec(image="busybox"),
                             linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                                 run_as_username="nosuchuser")))
    code, msg = cri.code(rt.CreateContainer, pb.CreateContainerRequest(pod_sandbox_id=sid, config=who))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nosuchuser" in msg
    assert sorted(p.name for p in layers.iterdir()) == had
    assert not [m for m in cri.d.mountinfo().splitlines() if "/share/who" in m]
    assert cri.pod_count() == pods and cri.crictl("ps", "-aq").stdout.split() == ctrs
    assert sorted(p for p in (cri.dir / "logs").rglob("*")) == logs  # no log file for what never ran


def test_a_cni_add_failure_leaves_nothing(cri: Cri) -> None:
    """The network's configuration names a plugin that is not installed (after portmap, which ran): RunPodSandbox
    fails saying so, and nothing is left: no pod, namespace, veth, address, cache entry or iptables rule."""
    pods, net = cri.pod_count(), network_snapshot(cri)
    root = cri.conf_dir.parent
    write_conflist(root, {"type": "hc-no-such-plugin"})
    try:
        cfg = json_format.ParseDict(sandbox_config(cri, "broken", port_mappings=[
            {"container_port": 80, "host_port": HOST_PORT + 1}]), pb.PodSandboxConfig())
        code, msg = cri.code(cri.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg))
        assert code == grpc.StatusCode.UNAVAILABLE, (code, msg)
        assert "setting up the pod network failed: CNI ADD on network 'hct-cri': plugin 'hc-no-such-plugin' " \
               "failed: not found in /usr/lib/cni" in msg, msg
        assert "undone: DEL ran for loopback, firewall, portmap, bridge" in msg, msg
        st = cri.runtime.Status(pb.StatusRequest(), timeout=60)
        ready = {c.type: c for c in st.status.conditions}["NetworkReady"]
        assert not ready.status and ready.reason == "NetworkPluginNotReady" and "hc-no-such-plugin" in ready.message
    finally:
        write_conflist(root)
    assert cri.pod_count() == pods and network_snapshot(cri) == net
    st = cri.runtime.Status(pb.StatusRequest(), timeout=60)
    assert {c.type: c for c in st.status.conditions}["NetworkReady"].status


def test_a_run_pod_sandbox_given_up_leaves_nothing(cri: Cri) -> None:
    """Clients that give up early (during the CNI ADD, or the VM's start): what was made goes all the same. (One
    whose call finished on the server before its deadline did has a sandbox, as with any runtime: the kubelet
    finds and removes it; so does this test.)"""
    pods, net = cri.pod_count(), network_snapshot(cri)
    for i, deadline in enumerate((0.02, 0.1, 0.2)):
        cfg = json_format.ParseDict(sandbox_config(cri, f"quitter{i}"), pb.PodSandboxConfig())
        with contextlib.suppress(grpc.RpcError):
            cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=deadline)
        time.sleep(1)
        for sid in cri.crictl("pods", "-q", "--name", f"quitter{i}").stdout.split():
            cri.crictl("stopp", sid)
            cri.crictl("rmp", sid)
        wait_for(lambda: cri.pod_count() == pods and network_snapshot(cri) == net, timeout=60)
    assert cri.crictl("pods", "-q").stdout.split() == [STATE["sandbox"]]


def test_state_survives_a_hyperd_restart(cri: Cri) -> None:
    sid, app = STATE["sandbox"], STATE["app"]
    keeper = cri.crictl("create", sid, cri.write("keeper.json", container_config("keeper", [
        "sh", "-c", "echo before; while true; do [ -f /tmp/go ] && echo after && rm /tmp/go; sleep 0.2; done"])),
        str(cri.dir / "sandbox.json")).stdout.strip()
    cri.crictl("start", keeper)
    log = cri.dir / "logs" / "web" / "keeper" / "0.log"
    wait_for(lambda: log.exists() and b"stdout F before" in log.read_bytes())
    before = {c["id"]: c for c in cri.json("ps", "-a", "-o", "json")["containers"]}
    # an attachment no sandbox holds (what a crash between the ADD and the pod record leaves), made as hyperd does
    from hypercontainer.cri.network import CniNetwork

    step = CniNetwork(cri.conf_dir, [PLUGINS], cri.cache, cri.netns_dir, NETWORK)
    stale = "d" * 64
    _, made = nsenter.run_in(str(cri.host.path), lambda: step._setup(stale, hcni.PodRef("test", "stale"), {}))
    stale_ip = made.ips[0]
    assert stale in cri.attachments() and stale_ip in cri.ipam_files() and made.netns.path.exists()
    # a sandbox whose VM dies while hyperd is away: the next hyperd releases its network
    dies = cri.crictl("runp", cri.write("dies.json", sandbox_config(cri, "dies"))).stdout.strip()
    dies_ip = cri.json("inspectp", dies)["status"]["network"]["ip"]
    qemu = cri.json("inspectp", dies)["info"]["vm"]["pid"]
    assert dies in cri.attachments() and dies_ip in cri.ipam_files()
    assert cri.d.proc
    cri.d.proc.terminate()  # live restore: the VM keeps running, the next hyperd takes it over
    cri.d.proc.wait(60)
    os.kill(qemu, 9)
    if cri.channel is not None:
        cri.channel.close()
        cri.channel = None
    cri.d.start()
    # the stale attachment and the dead sandbox's went at start (DEL: address, veth and rules; the namespace); the
    # running sandbox's stayed
    assert cri.attachments() == [sid] and cri.ipam_files() == [STATE["ip"]]
    assert cri.namespaces() == ["hc-cri-" + sid[:32]]
    rules = cri.rules()
    assert stale not in rules and stale_ip not in rules and dies not in rules and dies_ip not in rules
    assert cri.json("inspectp", dies)["status"]["state"] == "SANDBOX_NOTREADY"
    cri.crictl("stopp", dies)
    cri.crictl("rmp", dies)
    assert cri.json("inspectp", sid)["status"]["network"]["ip"] == STATE["ip"]
    assert cri.fetch(f"http://{STATE['ip']}/") == HELLO
    assert cri.crictl("pods", "-q", "--label", "app=web", "--state", "ready").stdout.split() == [sid]
    after = {c["id"]: c for c in cri.json("ps", "-a", "-o", "json")["containers"]}
    assert after.keys() == before.keys()
    for cid, c in after.items():
        assert (c["state"], c["labels"], c["metadata"], c["createdAt"]) == (
            before[cid]["state"], before[cid]["labels"], before[cid]["metadata"], before[cid]["createdAt"])
    assert cri.json("inspect", app)["status"]["exitCode"] == 0
    assert after[keeper]["state"] == "CONTAINER_RUNNING"
    assert cri.crictl("exec", "-s", keeper, "touch", "/tmp/go").returncode == 0
    wait_for(lambda: b"stdout F after" in log.read_bytes())  # its output still reaches the CRI log
    # the kubelet rotates a log by renaming it and asking for a new one
    log.rename(log.with_name("0.log.1"))
    cri.crictl("logs", "-r", keeper)  # ReopenContainerLog
    assert cri.crictl("exec", "-s", keeper, "touch", "/tmp/go").returncode == 0
    wait_for(lambda: log.exists() and b"stdout F after" in log.read_bytes())
    assert log.read_bytes().count(b"\n") == 1
    # what a VM cannot do per container is accepted and reported
    res = pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_quota=50000, cpu_period=100000)
    cri.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=keeper, linux=res),
                                         timeout=60)
    st = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=keeper), timeout=60).status
    assert st.resources.linux.memory_limit_in_bytes == 64 << 20
    # the new hyperd's streaming server (another port) serves the containers it took over
    assert cri.crictl("exec", keeper, "echo", "streamed").stdout == "streamed\n"


def test_container_in_a_stopped_sandbox_then_remove(cri: Cri) -> None:
    sid = STATE["sandbox"]
    running = cri.crictl("ps", "-q", "--state", "running").stdout.split()
    assert running
    # a client that gives up at once (crictl's default deadline is 2 s): the stop is carried through all the same
    with contextlib.suppress(grpc.RpcError):
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=0.05)
    wait_for(lambda: cri.json("inspectp", sid)["status"]["state"] == "SANDBOX_NOTREADY")
    wait_for(lambda: cri.json("inspect", running[0])["status"]["state"] == "CONTAINER_EXITED")
    # its network went with it: no namespace, veth, address, cache entry, journal entry or iptables rule
    wait_for(lambda: cri.attachments() == [] and cri.namespaces() == [])
    wait_for(lambda: not [n for n in cri.links() if n.startswith("veth")], timeout=10)
    assert cri.ipam_files() == [] and not os.listdir(cri.cache / "hypercontainer-netns")
    rules = cri.rules()
    assert sid not in rules and STATE["ip"] not in rules and "CNI-DN-" not in rules, rules
    assert cri.json("inspectp", sid)["status"]["network"].get("ip", "") == ""
    cri.crictl("stopp", sid)  # again: not an error
    for cid in running:  # the VM went with them
        assert cri.json("inspect", cid)["status"]["state"] == "CONTAINER_EXITED"
    c = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="late"), image=pb.ImageSpec(image="busybox"))
    code, msg = cri.code(cri.runtime.CreateContainer, pb.CreateContainerRequest(pod_sandbox_id=sid, config=c))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not ready" in msg
    pods = cri.pod_count()
    code, msg = cri.code(cri.runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id=sid, port=[80]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not ready" in msg
    cri.crictl("rmp", sid)
    assert network_snapshot(cri)[:5] == ([], [BRIDGE, "lo"], [], [], [])  # Remove's teardown again: nothing
    assert cri.crictl("pods", "-q").stdout.split() == [] and cri.crictl("ps", "-aq").stdout.split() == []
    assert cri.pod_count() == pods - 1
    assert cri.code(cri.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=sid))[0] == \
        grpc.StatusCode.OK


# ---- images ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                    reason="needs docker-registry and skopeo (make test installs them)")
def test_images_pull_list_status_remove(cri: Cri) -> None:
    busybox = _build_busybox_archive()
    ns = str(cri.host.path)  # where hyperd reaches them: its namespace's loopback
    reg, private = Registry(netns=ns), Registry(token_auth=True, netns=ns)
    try:
        reg.push(f"docker-archive:{busybox}", "library/bb:1")
        private.push(f"docker-archive:{busybox}", "team/bb:2")
        ref = f"{reg.host}/library/bb:1"
        out = cri.crictl("pull", ref).stdout
        assert "sha256:" in out
        images = cri.json("images", "-o", "json")["images"]
        mine = [i for i in images if f"{ref}" in i["repoTags"]]
        assert len(mine) == 1 and mine[0]["repoDigests"] and int(mine[0]["size"]) > 0
        assert cri.json("inspecti", ref)["status"]["id"] == mine[0]["id"]
        assert cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="nothing:here")),
                                      timeout=60).image.id == ""  # not there: no image, no error
        pref = f"{private.host}/team/bb:2"
        code, _ = cri.code(cri.images.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image=pref)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        cri.crictl("pull", "--creds", f"{USER}:{PASSWORD}", pref)
        cri.crictl("rmi", pref)
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        cri.crictl("pull", "--auth", auth, pref)
        assert cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=pref)), timeout=60).image.id
        fs = cri.json("imagefsinfo")["status"]
        assert int(fs["imageFilesystems"][0]["usedBytes"]["value"]) > 0
        cri.crictl("rmi", ref)
        cri.crictl("rmi", pref)
        assert not [i for i in cri.json("images", "-o", "json")["images"] if ref in i["repoTags"]]
        assert cri.code(cri.images.RemoveImage, pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))[0] == \
            grpc.StatusCode.OK  # gone already: not an error
    finally:
        reg.stop()
        private.stop()
