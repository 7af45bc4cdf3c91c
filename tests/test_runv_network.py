"""runv's VMs in the network namespaces container engines make: podman (CNI), dockerd (its bridge and prestart hook),
containerd's `ctr run --cni`, and a namespace made by hand, also after the shim was killed. Each engine keeps its
state in a temp directory; the networks they make use subnets of their own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from .netns import Netns, sh
from .netns import fetch as ns_fetch
from .test_runv import (  # noqa: F401
    ASSETS,
    RUNV,
    Runv,
    bundle,
    need,
    private_containerd,
    rootfs_tar,
    running,
    runv,
    unmount_all,
    wait_for,
)

pytestmark = pytest.mark.timeout(900)
INDEX = "hello from a VM\n"
WEB = ["sh", "-c", f"mkdir -p /www && echo '{INDEX.strip()}' > /www/index.html && exec httpd -f -p 80 -h /www"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, timeout: float = 90) -> str:
    """The body once the server answers (the VM boots meanwhile)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise AssertionError(f"{url} never answered: {last}")


def ns_snapshot(ns: Netns) -> tuple[str, ...]:
    """Everything a runtime could leave in a namespace: links, addresses, routes, qdiscs, ingress filters."""
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    links = out("ip", "-n", ns.name, "-o", "link")
    filters = "".join(out("tc", "-n", ns.name, "filter", "show", "dev", line.split(":")[1].strip().split("@")[0],
                          "ingress") for line in links.splitlines())
    return (links, out("ip", "-n", ns.name, "-o", "addr"), out("ip", "-n", ns.name, "route"),
            out("ip", "-n", ns.name, "-6", "route"), out("tc", "-n", ns.name, "qdisc"), filters)


# ---- podman (CNI) ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman_net(busybox_tar: Path):
    """podman with runv and CNI networks of its own (--network-config-dir): its default one and one the test makes."""
    need("podman")
    d = Path(tempfile.mkdtemp(prefix="hc-pmnet-"))
    (d / "net").mkdir()
    (d / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                                       '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(d / "containers.conf"), HYPERCONTAINER_ASSETS=ASSETS)
    base = ["podman", "--root", str(d / "root"), "--runroot", str(d / "runroot"), "--storage-driver", "vfs",
            "--runtime", RUNV, "--network-config-dir", str(d / "net")]

    def pm(*args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, capture_output=True, timeout=timeout, **kw)

    assert pm("load", "-i", str(busybox_tar)).returncode == 0
    yield pm
    pm("rm", "-af", "-t", "0")
    pm("network", "rm", "-f", "hcnet")
    pm("system", "reset", "-f")
    unmount_all(d)
    shutil.rmtree(d, ignore_errors=True)


def test_podman_published_port_reaches_the_vm(podman_net) -> None:
    port = free_port()
    r = podman_net("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", "busybox", *WEB)
    assert r.returncode == 0, r.stderr
    assert fetch(f"http://127.0.0.1:{port}/") == INDEX
    ip = podman_net("inspect", "web", "--format", "{{.NetworkSettings.IPAddress}}").stdout.decode().strip()
    assert ip
    r = podman_net("exec", "web", "ip", "-o", "-4", "addr", "show")
    assert f" {ip}/" in r.stdout.decode(), r.stdout  # the guest owns the address podman gave the container
    assert podman_net("exec", "web", "uname", "-r").stdout.decode().strip() != os.uname().release
    assert podman_net("rm", "-f", "-t", "0", "web").returncode == 0


def test_podman_containers_on_a_user_network_reach_each_other(podman_net) -> None:
    r = podman_net("network", "create", "--subnet", "10.99.7.0/24", "hcnet")
    assert r.returncode == 0, r.stderr
    assert podman_net("run", "-d", "--name", "a", "--network", "hcnet", "busybox", *WEB).returncode == 0
    ip = podman_net("inspect", "a", "--format", "{{(index .NetworkSettings.Networks \"hcnet\").IPAddress}}")
    addr = ip.stdout.decode().strip()
    assert addr.startswith("10.99.7."), ip.stderr
    r = podman_net("run", "--rm", "--network", "hcnet", "busybox", "sh", "-c",
                   f"for i in $(seq 60); do wget -qO- http://{addr}/ && exit 0; sleep 1; done; exit 1")
    assert (r.returncode, r.stdout.decode()) == (0, INDEX), r.stderr
    podman_net("rm", "-f", "-t", "0", "a")


# ---- dockerd (its bridge; its prestart hook fills the namespace runv made) --------------------------------------
@pytest.fixture(scope="module")
def docker_net(busybox_tar: Path):
    need("dockerd")
    d = Path(tempfile.mkdtemp(prefix="hc-dknet-"))
    bridge = f"hcdk{os.getpid() % 10000}"
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "addr", "add", "172.31.251.1/24", "dev", bridge)
    sh("ip", "link", "set", bridge, "up")
    (d / "daemon.json").write_text(json.dumps({"runtimes": {"runv": {"path": RUNV}}, "storage-driver": "vfs"}))
    sock = f"unix://{d}/docker.sock"
    env = dict(os.environ, HYPERCONTAINER_ASSETS=ASSETS)
    daemon = subprocess.Popen(["dockerd", "--data-root", str(d / "data"), "--exec-root", str(d / "exec"), "-H", sock,
                               "--pidfile", str(d / "docker.pid"), "--bridge", bridge, "--iptables=false",
                               "--ip-masq=false", "--ip6tables=false", "--config-file", str(d / "daemon.json")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    docker = ["docker", "-H", sock]
    try:
        wait_for(lambda: subprocess.run([*docker, "version"], capture_output=True).returncode == 0)
        subprocess.run([*docker, "load", "-i", str(busybox_tar)], check=True, capture_output=True, timeout=120)
        yield docker
    finally:
        subprocess.run([*docker, "rm", "-f", "web"], capture_output=True, timeout=120)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        unmount_all(d)
        shutil.rmtree(d, ignore_errors=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_docker_published_port_and_the_default_bridge(docker_net) -> None:
    port = free_port()
    r = subprocess.run([*docker_net, "run", "-d", "--name", "web", "--runtime", "runv", "-p", f"127.0.0.1:{port}:80",
                        "busybox", *WEB], capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert fetch(f"http://127.0.0.1:{port}/") == INDEX
    ip = subprocess.run([*docker_net, "inspect", "web", "--format", "{{.NetworkSettings.IPAddress}}"],
                        capture_output=True, text=True).stdout.strip()
    assert ip.startswith("172.31.251.")
    r = subprocess.run([*docker_net, "run", "--rm", "--runtime", "runv", "busybox", "wget", "-qO-",
                        f"http://{ip}/"], capture_output=True, timeout=180)
    assert (r.returncode, r.stdout.decode()) == (0, INDEX), r.stderr


# ---- containerd: ctr run --cni fills the namespace between create and start -------------------------------------
CNI_SUBNET, CNI_GATEWAY = "10.99.8.0/24", "10.99.8.1"


@pytest.fixture(scope="module")
def ctr_cni(busybox_tar: Path):
    """A containerd of its own; ctr's CNI reads /etc/cni/net.d and /opt/cni/bin (fixed in ctr 1.6): the test's
    conflist sorts first there for as long as the test runs, and /opt/cni/bin points at Debian's plugins."""
    made_bin = not os.path.lexists("/opt/cni/bin")
    if made_bin:
        Path("/opt/cni").mkdir(parents=True, exist_ok=True)
        os.symlink("/usr/lib/cni", "/opt/cni/bin")
    conf = Path("/etc/cni/net.d/00-hc-runv-test.conflist")
    conf.parent.mkdir(parents=True, exist_ok=True)
    try:
        with private_containerd(busybox_tar, "hc-ctdnet-") as (ctr, d):
            conf.write_text(json.dumps({"cniVersion": "0.4.0", "name": "hc-runv-test", "plugins": [
                {"type": "bridge", "bridge": "hcctr0", "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": CNI_SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(d / "ipam")}}]}))
            yield ctr
    finally:
        conf.unlink(missing_ok=True)
        if made_bin:
            os.unlink("/opt/cni/bin")
        subprocess.run(["ip", "link", "del", "hcctr0"], capture_output=True)


def test_ctr_run_cni_gets_an_address_and_reaches_the_host(ctr_cni) -> None:
    env = dict(os.environ, HYPERCONTAINER_ASSETS=ASSETS)
    r = subprocess.run([*ctr_cni, "run", "--rm", "--cni", "--runc-binary", RUNV, "docker.io/library/busybox:latest",
                        "cni1", "sh", "-c", f"ip -o -4 addr show; ping -c 1 -W 10 {CNI_GATEWAY}"],
                       capture_output=True, timeout=300, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert " inet 10.99.8." in r.stdout.decode()
    assert b"1 packets received" in r.stdout


# ---- a namespace made by hand; the shim killed ------------------------------------------------------------------
@pytest.fixture
def joined(tmp_path: Path):
    """A namespace holding one end of a veth (10.99.9.2/24); the other end in a peer namespace (10.99.9.1)."""
    tag = f"{os.getpid()}-{time.monotonic_ns() % 100000}"
    ns, peer = Netns(f"hcr-ns-{tag}"), Netns(f"hcr-peer-{tag}")
    sh("ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer", "name", "p0", "netns", peer.name)
    sh("ip", "-n", ns.name, "addr", "add", "10.99.9.2/24", "dev", "eth0")
    sh("ip", "-n", ns.name, "link", "set", "eth0", "up")
    sh("ip", "-n", peer.name, "addr", "add", "10.99.9.1/24", "dev", "p0")
    sh("ip", "-n", peer.name, "link", "set", "p0", "up")
    wait_for(lambda: "inet6 fe80" in (a := subprocess.run(["ip", "-n", ns.name, "addr", "show", "eth0"],
                                                          capture_output=True, text=True).stdout)
             and "tentative" not in a, 10)  # the kernel's own link-local address: the namespace as the engine left it
    yield ns, peer
    ns.delete()
    peer.delete()


def test_kill_9_of_the_shim_then_delete_force_leaves_the_namespace_as_it_was(runv: Runv, bundle: Path,  # noqa: F811
                                                                             joined) -> None:
    ns, peer = joined
    before = ns_snapshot(ns)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"].update(args=WEB, terminal=False)
    cfg["root"]["readonly"] = False
    cfg["linux"]["namespaces"] = [*(n for n in cfg["linux"]["namespaces"] if n["type"] != "network"),
                                  {"type": "network", "path": str(ns.path)}]
    (bundle / "config.json").write_text(json.dumps(cfg))
    assert runv.detached("run", "-d", "--bundle", str(bundle), "k9").returncode == 0
    assert ns_fetch(peer, "http://10.99.9.2/", tries=240) == INDEX
    assert ns_snapshot(ns) != before  # the tap and its filters are there
    st = json.loads((runv.root / "k9" / "state.json").read_text())
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: runv.state("k9")["status"] == "stopped", 30)
    assert runv("delete", "--force", "k9").returncode == 0
    assert ns_snapshot(ns) == before
    assert not running(st["vm_pid"])  # gone, or dead and not reaped by init
