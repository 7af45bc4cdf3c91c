"""Pod networking with real VMs, inside namespaces the tests made (tests/netns.py): bridge + tap + NAT, published
ports from this host and from beyond it, pod to pod, egress, user mode, none, clean-up and reconciliation (taps,
leases, NAT and anti-spoofing rules; the attacks themselves are in test_security_net.py)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import Daemon
from .netns import HOST_IP, WORLD_IP, fetch, host_and_world

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def net(busybox_tar: Path):
    root = Path(tempfile.mkdtemp(prefix="hc-net-"))
    host, world = host_and_world()
    d = Daemon(root, netns=host.path)
    d.start()
    d.hyperctl("load", "-i", str(busybox_tar), check=True)
    www = root / "www"
    www.mkdir()
    (www / "index.html").write_text("served from a pod\n")
    d.host, d.world, d.www = host, world, www  # type: ignore[attr-defined]
    yield d
    d.stop()
    host.delete()
    world.delete()
    shutil.rmtree(root, ignore_errors=True)


def httpd(d: Daemon, *args: str) -> str:
    return d.hyperctl("run", "-d", *args, "-v", f"{d.www}:/www:ro", "busybox", "httpd", "-f", "-p", "80", "-h",
                      "/www", check=True).stdout.decode().strip()


def inspect(d: Daemon, ref: str) -> dict:
    return json.loads(d.hyperctl("inspect", ref, check=True).stdout)


def leases(d: Daemon) -> list:
    with sqlite3.connect(d.statedir / "hyperd.db") as db:
        return db.execute("SELECT ip, pod_id FROM leases").fetchall()


def nat_rules(d: Daemon) -> str:
    return d.host.run("nft", "list", "table", "ip", "hypercontainer").stdout.decode()  # type: ignore[attr-defined]


def bridge_rules(d: Daemon) -> str:
    return d.host.run("nft", "list", "table", "bridge", "hypercontainer").stdout.decode()  # type: ignore[attr-defined]


def taps(d: Daemon) -> list[str]:
    return [n for n in d.host.links() if n.startswith("hc") and n != "hct-up"]  # type: ignore[attr-defined]


def free_port(d: Daemon) -> int:
    r = d.host.run(sys_python(), "-c", "import socket; s=socket.socket(); s.bind(('', 0)); "  # type: ignore[attr-defined]
                   "print(s.getsockname()[1])", check=True)
    return int(r.stdout)


def sys_python() -> str:
    return shutil.which("python3") or "/usr/bin/python3"


def test_published_port_from_this_host_and_beyond(net: Daemon) -> None:
    port = free_port(net)
    pod = httpd(net, "--name", "web", "-p", f"{port}:80")
    try:
        assert fetch(net.host, f"http://127.0.0.1:{port}/") == "served from a pod\n"
        assert fetch(net.world, f"http://{HOST_IP}:{port}/") == "served from a pod\n"
        assert net.hyperctl("port", "web", check=True).stdout.decode().strip() == f"80/tcp -> 0.0.0.0:{port}"
        info = inspect(net, pod)["network"]
        assert info["mode"] == "bridge" and info["tap"] in taps(net)
        assert f"dnat to {info['ip']}:80" in nat_rules(net)
        assert f"jump pod_{info['tap']}" in bridge_rules(net) and f"ip saddr {info['ip']} accept" in bridge_rules(net)
        assert f"{port}" in net.hyperctl("ps", check=True).stdout.decode()
    finally:
        net.hyperctl("rm", "-f", "web", check=True)
    assert f"dnat to {info['ip']}:80" not in nat_rules(net)
    assert info["tap"] not in taps(net) and info["tap"] not in bridge_rules(net)


def test_published_port_on_one_address_and_any_port(net: Daemon) -> None:
    httpd(net, "--name", "web-lo", "-p", "127.0.0.1::80")
    try:
        hostport = net.hyperctl("port", "web-lo", "80/tcp", check=True).stdout.decode().strip()
        assert hostport.startswith("127.0.0.1:") and int(hostport.split(":")[1]) > 0
        assert fetch(net.host, f"http://{hostport}/") == "served from a pod\n"
        r = net.world.run("timeout", "3", "busybox", "wget", "-q", "-O-", f"http://{HOST_IP}:{hostport.split(':')[1]}/")
        assert r.returncode != 0  # published on 127.0.0.1 only
    finally:
        net.hyperctl("rm", "-f", "web-lo", check=True)


def test_pod_reaches_pod_by_address(net: Daemon) -> None:
    pod = httpd(net, "--name", "server")
    try:
        ip = inspect(net, pod)["network"]["ip"]
        fetch(net.host, f"http://{ip}/")  # up
        r = net.hyperctl("run", "--rm", "busybox", "wget", "-q", "-O-", f"http://{ip}/")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"served from a pod\n"
    finally:
        net.hyperctl("rm", "-f", "server", check=True)


def test_egress_is_masqueraded_behind_the_host(net: Daemon, tmp_path: Path) -> None:
    (tmp_path / "egress.txt").write_text("outside\n")
    server = net.world.popen(sys_python(), "-m", "http.server", "--bind", WORLD_IP, "8000", "-d", str(tmp_path),
                             stderr=subprocess.PIPE)
    try:
        fetch(net.world, f"http://{WORLD_IP}:8000/egress.txt")  # the server is up (its own request: from itself)
        r = net.hyperctl("run", "--rm", "busybox", "wget", "-q", "-O-", f"http://{WORLD_IP}:8000/egress.txt")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"outside\n"
    finally:
        server.terminate()
        log = server.communicate(timeout=10)[1].decode()
    clients = {line.split()[0] for line in log.splitlines() if "GET /egress.txt" in line}
    assert HOST_IP in clients  # the pod's request arrived from the host's address: NAT, not the pod's own


def test_guest_interface_hosts_and_resolv_conf(net: Daemon) -> None:
    r = net.hyperctl("run", "--rm", "--hostname", "netpod", "busybox", "sh", "-c",
                     "ip -o -4 addr show eth0; ip route; cat /etc/hosts /etc/resolv.conf")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    addr = out.split("inet ")[1].split("/")[0]
    assert addr.startswith("10.77.") and "/16" in out
    assert "default via 10.77.0.1 dev eth0" in out
    assert f"{addr}\tnetpod" in out and "nameserver " in out


def test_network_none_has_only_loopback(net: Daemon) -> None:
    r = net.hyperctl("run", "--name", "nonet", "--net", "none", "busybox", "sh", "-c", "ls /sys/class/net; sleep 1")
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [b"lo"]
        info = inspect(net, "nonet")
        assert info["network"] == {"mode": "none"}
        assert info["id"] not in {pod for _, pod in leases(net)}
    finally:
        net.hyperctl("rm", "-f", "nonet")


def test_user_mode_published_port(net: Daemon) -> None:
    port = free_port(net)
    httpd(net, "--name", "web-user", "--net", "user", "-p", f"127.0.0.1:{port}:80")
    try:
        assert fetch(net.host, f"http://127.0.0.1:{port}/") == "served from a pod\n"
        info = inspect(net, "web-user")["network"]
        assert info["mode"] == "user" and info["tap"] is None and info["ip"] == "10.0.2.15"
        assert not [ip for ip, pod in leases(net) if pod == inspect(net, "web-user")["id"]]
    finally:
        net.hyperctl("rm", "-f", "web-user", check=True)
    assert net.host.run("timeout", "2", "busybox", "wget", "-q", "-O-", f"http://127.0.0.1:{port}/").returncode != 0


def test_host_port_in_use(net: Daemon) -> None:
    holder = net.host.popen(sys_python(), "-c", "import socket,sys,time; s=socket.socket(); s.bind(('', 0)); "
                            "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(120)",
                            stdout=subprocess.PIPE)
    try:
        port = int(holder.stdout.readline())
        before_taps, before_leases = taps(net), leases(net)
        for mode in ("bridge", "user"):
            r = net.hyperctl("run", "--rm", "--net", mode, "-p", f"{port}:80", "busybox", "true")
            assert r.returncode == 125
            assert f"{port}/tcp is already in use" in r.stderr.decode()
        assert taps(net) == before_taps and leases(net) == before_leases
        assert f"dport {port}" not in nat_rules(net)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "70000:80"], "host port '70000' is not a number in 1-65535"),
    (["-p", "8080:0"], "container port '0' is not a number in 1-65535"),
    (["-p", "8080:80/sctp"], "unknown protocol 'sctp'"),
    (["-p", "8080:80", "-p", "8080:81"], "host port published twice: 0.0.0.0:8080/tcp"),
    (["-p", "127.0.0.1:8080:80", "-p", "8080:81"], "host port published twice (also on 0.0.0.0)"),
    (["-p", "300.1.1.1:8080:80"], "'300.1.1.1' is not an IPv4 address"),
    (["--net", "none", "-p", "8080:80"], "ports cannot be published with network none"),
])
def test_bad_port_mappings(net: Daemon, args: list[str], message: str) -> None:
    before = net.hyperctl("ps", "-aq", check=True).stdout
    r = net.hyperctl("run", "--rm", *args, "busybox", "true")
    assert r.returncode == 125
    assert message in r.stderr.decode()
    assert net.hyperctl("ps", "-aq", check=True).stdout == before


def test_twenty_pods_leave_no_tap_rule_or_lease(net: Daemon) -> None:
    names = [f"many{i}" for i in range(20)]
    for batch in range(0, 20, 5):
        procs = [net.popen("run", "-d", "--name", n, "--memory", "128", "-p", "80", "busybox", "sleep", "600",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names[batch:batch + 5]]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    ips = {inspect(net, n)["network"]["ip"] for n in names}
    assert len(ips) == 20
    assert len(taps(net)) >= 20 and len(leases(net)) >= 20
    assert sum(f"dnat to {ip}:80" in nat_rules(net) for ip in ips) == 20
    assert sum(f"ip saddr {ip} accept" in bridge_rules(net) for ip in ips) == 20
    net.hyperctl("rm", "-f", *names, check=True)
    assert taps(net) == [] and leases(net) == []
    assert "dnat" not in nat_rules(net).replace("ct status dnat", "")
    assert "pod_" not in bridge_rules(net) and 'iifname "hc*" drop' in bridge_rules(net)


def test_restart_takes_over_and_reconciles_leftovers(net: Daemon) -> None:
    port = free_port(net)
    httpd(net, "--name", "kept", "-p", f"{port}:80")
    fetch(net.host, f"http://127.0.0.1:{port}/")
    kept = inspect(net, "kept")["network"]
    # What a crashed hyperd could leave: a tap of a pod that is gone, its lease, its anti-spoofing chain.
    net.host.run("ip", "tuntap", "add", "hcdeadbeef0000", "mode", "tap", check=True)
    with sqlite3.connect(net.statedir / "hyperd.db") as db:
        db.execute("INSERT INTO leases (ip, pod_id) VALUES ('10.77.9.9', 'deadbeef0000')")
    net.host.run("nft", "add", "chain", "bridge", "hypercontainer", "pod_hcdeadbeef0000", check=True)
    net.proc.kill()  # type: ignore[union-attr]
    net.proc.wait()  # type: ignore[union-attr]
    net.start()
    try:
        assert "hcdeadbeef0000" not in taps(net)
        assert ("10.77.9.9", "deadbeef0000") not in leases(net)
        assert "hcdeadbeef0000" not in bridge_rules(net)
        assert f"jump pod_{kept['tap']}" in bridge_rules(net)  # the pod taken over keeps its own
        assert fetch(net.host, f"http://127.0.0.1:{port}/") == "served from a pod\n"
        r = net.hyperctl("run", "--rm", "-p", f"{port}:80", "busybox", "true")  # still reserved by the new hyperd
        assert r.returncode == 125 and b"already in use" in r.stderr
    finally:
        net.hyperctl("rm", "-f", "kept", check=True)
    assert taps(net) == [] and leases(net) == []


def test_template_clones_get_their_own_mac_and_address(net: Daemon) -> None:
    seen = []
    try:
        for name in ("mac-a", "mac-b"):
            net.hyperctl("run", "-d", "--name", name, "--boot", "template", "busybox", "sleep", "300", check=True)
            info = inspect(net, name)
            assert info["vm"]["booted_from"] != "cold"  # hyperd built the template when it started
            r = net.hyperctl("exec", name, "sh", "-c", "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0")
            mac, addr = r.stdout.decode().split("\n")[:2]
            assert mac == info["network"]["mac"] and f"inet {info['network']['ip']}/16" in addr
            seen.append((mac, info["network"]["ip"]))
        assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]
        r = net.hyperctl("exec", "mac-a", "ping", "-c", "1", "-W", "5", seen[1][1])
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        net.hyperctl("rm", "-f", "mac-a", "mac-b")


def test_pool_pod_on_the_bridge(net: Daemon) -> None:
    """A pool VM (its tap made in advance, its share mounted before it was paused) becomes a pod with its own MAC
    and address and serves a published port; what the pod had goes with it. hyperd is restarted with a pool."""
    net.proc.terminate()  # type: ignore[union-attr]
    net.proc.wait()  # type: ignore[union-attr]
    net.env["HYPERCONTAINER_POOL"] = "1"
    net.start()
    net.wait_pool_ready()
    port = free_port(net)
    try:
        httpd(net, "--name", "pooled", "--boot", "pool", "-p", f"{port}:80")
        info = inspect(net, "pooled")
        assert info["vm"]["booted_from"].startswith("pool:") and info["network"]["tap"].startswith("hcpool")
        r = net.hyperctl("exec", "pooled", "sh", "-c", "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0")
        mac, addr = r.stdout.decode().split("\n")[:2]
        assert mac == info["network"]["mac"] and f"inet {info['network']['ip']}/16" in addr
        assert fetch(net.host, f"http://127.0.0.1:{port}/") == "served from a pod\n"
        assert fetch(net.world, f"http://{HOST_IP}:{port}/") == "served from a pod\n"
        assert f"jump pod_{info['network']['tap']}" in bridge_rules(net)  # the pool's tap, guarded once taken
    finally:
        net.hyperctl("rm", "-f", "pooled", check=True)
    net.wait_pool_ready()  # refilled: a fresh VM with a fresh tap
    assert info["network"]["tap"] not in taps(net)
    assert all(t.startswith("hcpool") for t in taps(net)) and leases(net) == []
    assert "dnat" not in nat_rules(net).replace("ct status dnat", "")
    assert "pod_" not in bridge_rules(net) and 'iifname "hc*" drop' in bridge_rules(net)  # a ready VM sends nothing
