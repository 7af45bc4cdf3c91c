"""Pods as attackers on the bridge (issue 12, finding 4), with real VMs inside namespaces the tests made
(tests/netns.py). The attacker is a root container. With the default capabilities (CAP_NET_RAW) it sends IPv4
with forged source addresses (a small static tool, built here, over a raw socket) and IPv6; with NET_ADMIN (asked
for in its pod spec, or with --cap-add where hyperctl knows it) it also claims another pod's address, so that its
kernel's ARP says "that address is at my MAC", and sends from a MAC not its own. (The guest kernel has no
AF_PACKET, so the attacker's frames are the ones its kernel makes.) The victim keeps its traffic, nothing forged
reaches a pod or the host, and host services are out of reach while replies, published ports and pod to pod
traffic get through. Plus the rules themselves, rendered and loaded in a throwaway namespace (no VM).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hypercontainer.errors import HCError
from hypercontainer.network import firewall

from .conftest import Daemon
from .netns import HOST_IP, Netns, fetch, host_and_world

pytestmark = pytest.mark.timeout(900)

GATEWAY = "10.77.0.1"
STRANGER_MAC = "02:68:63:ee:ee:01"  # a MAC no pod has
MARK = 1111  # payload size that tags the attacker's forged packets

# rawip COUNT HEX...: sends each IPv4 packet (hex, header included, checksums ours) COUNT times, 0.1 s apart,
# through a raw socket (IP_HDRINCL): any source address, CAP_NET_RAW only.
RAWIP = r"""
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned char buf[2048];
	struct sockaddr_in to = {.sin_family = AF_INET};
	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW), sent = 0;
	if (argc < 3 || fd < 0) {
		perror("rawip");
		return 1;
	}
	for (int n = 0; n < atoi(argv[1]); n++)
		for (int i = 2; i < argc; i++) {
			size_t len = strlen(argv[i]) / 2;
			if (len < 20 || len > sizeof(buf))
				return 2;
			for (size_t j = 0; j < len; j++)
				sscanf(argv[i] + 2 * j, "%2hhx", &buf[j]);
			memcpy(&to.sin_addr, buf + 16, 4);
			if (sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)len) {
				perror("sendto");
				return 1;
			}
			sent++;
			usleep(100000);
		}
	printf("sent %d\n", sent);
	return 0;
}
"""

# Frames the host's stack receives on an interface (not those it sends): "MAC ETHERTYPE SOURCE-IP LENGTH".
SNIFFER = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + 300
while time.monotonic() < end:
    try:
        f, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    kind = f[12:14].hex()
    ip = socket.inet_ntoa(f[26:30]) if kind == "0800" else socket.inet_ntoa(f[28:32]) if kind == "0806" else "-"
    print(f[6:12].hex(":"), kind, ip, len(f), flush=True)
"""

# A host service: answers every connection with a secret, on every address (IPv4 and IPv6).
SERVICE = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"host-secret\\n")
    c.close()
"""


def sys_python() -> str:
    return shutil.which("python3") or "/usr/bin/python3"


def build_rawip(into: Path) -> None:
    cc = shutil.which("musl-gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler for the attacker's tool")
    (into / "rawip.c").write_text(RAWIP)
    subprocess.run([cc, "-static", "-O2", "-o", str(into / "rawip"), str(into / "rawip.c")], check=True)


def run_attacker(d: Daemon, tools: Path) -> None:
    """The attacker's pod, asking for NET_ADMIN and NET_RAW: in its spec, else with --cap-add, else as it comes."""
    command = ["sh", "-c", "echo attacker > /tmp/index.html && exec httpd -f -p 80 -h /tmp"]
    spec = {"name": "attacker", "volumes": [{"name": "tools", "host_path": str(tools)}],
            "containers": [{"name": "attacker", "image": "busybox", "command": command,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
                            "volumes": [{"name": "tools", "path": "/tools", "readonly": True}]}]}
    (tools.parent / "attacker.json").write_text(json.dumps(spec))
    r = d.hyperctl("run", "-f", str(tools.parent / "attacker.json"))
    if r.returncode == 0:
        return
    assert b"capabilities" in r.stderr, r.stderr  # a hyperd without them: the other ways
    helptext = d.hyperctl("run", "--help").stdout.decode()
    caps = ["--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"] if "--cap-add" in helptext else []
    r = d.hyperctl("run", "-d", "--name", "attacker", *caps, "-v", f"{tools}:/tools:ro", "busybox", *command)
    assert r.returncode == 0, r.stderr


@dataclass
class Lan:
    """hyperd in its namespaces, and each pod's address and MAC."""

    d: Daemon
    host: Netns
    world: Netns
    port: int  # the victim's published port
    ip: dict[str, str] = field(default_factory=dict)
    mac: dict[str, str] = field(default_factory=dict)
    net_admin: bool = False  # whether the attacker got it


@pytest.fixture(scope="module")
def lan(busybox_tar: Path) -> Iterator[Lan]:
    """hyperd in bridge mode in a test namespace, and three pods serving their names: a victim (with a published
    port), an attacker (with /tools/rawip, NET_ADMIN where it could get it) and a bystander."""
    if os.geteuid() != 0:
        pytest.skip("VM tests need root")
    root = Path(tempfile.mkdtemp(prefix="hc-secnet-"))
    tools = root / "tools"
    tools.mkdir()
    build_rawip(tools)
    host, world = host_and_world()
    d = Daemon(root, netns=host.path)
    try:
        d.start()
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        lan = Lan(d, host, world, free_port(host))
        for name, extra in (("victim", ["-p", f"{lan.port}:80"]), ("bystander", [])):
            r = d.hyperctl("run", "-d", "--name", name, *extra, "busybox", "sh", "-c",
                           f"echo {name} > /tmp/index.html && exec httpd -f -p 80 -h /tmp")
            assert r.returncode == 0, r.stderr
        run_attacker(d, tools)
        for n in ("victim", "attacker", "bystander"):
            net = network(lan, n)
            lan.ip[n], lan.mac[n] = net["ip"], net["mac"]
            assert fetch(host, f"http://{lan.ip[n]}/") == f"{n}\n"
        status = sh(lan, "attacker", "cat /proc/self/status")
        lan.net_admin = bool(int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16) & (1 << 12))  # type: ignore[union-attr]
        yield lan
    finally:
        d.stop()
        host.delete()
        world.delete()
        shutil.rmtree(root, ignore_errors=True)


def need_net_admin(lan: Lan) -> None:
    if not lan.net_admin:
        pytest.skip("the attacker could not get NET_ADMIN (neither its pod spec nor hyperctl run could ask)")


def network(lan: Lan, pod: str) -> dict:
    return json.loads(lan.d.hyperctl("inspect", pod, check=True).stdout)["network"]


def free_port(ns: Netns) -> int:
    r = ns.run(sys_python(), "-c", "import socket; s=socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])",
               check=True)
    return int(r.stdout)


def sh(lan: Lan, pod: str, script: str, check: bool = True) -> str:
    r = lan.d.hyperctl("exec", pod, "sh", "-c", script)
    if check:
        assert r.returncode == 0, (script, r.stdout, r.stderr)
    return (r.stdout + r.stderr).decode()


def echos(lan: Lan, pod: str) -> int:
    """ICMP echo requests the pod's kernel has received (and found well formed)."""
    lines = [ln.split() for ln in sh(lan, pod, "cat /proc/net/snmp").splitlines() if ln.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


@contextmanager
def sniff(ns: Netns, ifname: str = "hyper0") -> Iterator[list[tuple[str, str, str, int]]]:
    """What the host's stack receives on the bridge meanwhile (frames the bridge filter drops never get there)."""
    frames: list[tuple[str, str, str, int]] = []
    p = ns.popen(sys_python(), "-c", SNIFFER, ifname, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout and p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        yield frames
        time.sleep(1)
    finally:
        p.terminate()
        out = p.communicate(timeout=10)[0]
    for line in out.splitlines():
        mac, kind, ip, length = line.split()
        frames.append((mac, kind, ip, int(length)))


def host_neighbour(lan: Lan, ip: str) -> str:
    return lan.host.run("ip", "neigh", "show", ip, "dev", "hyper0").stdout.decode()


# ---- what the attacker sends --------------------------------------------------------------------------------

def _sum(b: bytes) -> int:
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(src_ip: str, dst_ip: str, size: int) -> str:
    """An IPv4 ICMP echo request with `size` bytes of payload, checksums right, as hex."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4863, 1) + b"x" * size
    icmp = icmp[:2] + struct.pack("!H", _sum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, socket.inet_aton(src_ip),
                     socket.inet_aton(dst_ip))
    return (ip[:10] + struct.pack("!H", _sum(ip)) + ip[12:] + icmp).hex()


def forge(lan: Lan, *packets: str, count: int = 3) -> None:
    out = sh(lan, "attacker", f"/tools/rawip {count} {' '.join(packets)}")
    assert out.strip() == f"sent {count * len(packets)}", out  # they left the attacker's kernel


def test_claiming_another_pods_address_changes_nothing(lan: Lan) -> None:
    """The attacker puts the victim's address on its eth0 and speaks from it: its kernel's ARP requests say "the
    victim's address is at my MAC" to the host and to the bystander (and busybox arping, where the guest kernel
    has AF_PACKET, sends gratuitous ARP)."""
    need_net_admin(lan)
    victim, victim_mac, own = lan.ip["victim"], lan.mac["victim"], lan.mac["attacker"]
    bystander = lan.ip["bystander"]
    assert sh(lan, "bystander", f"wget -qO- http://{victim}/") == "victim\n"  # both know the victim now
    assert fetch(lan.host, f"http://{victim}/") == "victim\n"
    assert victim_mac in host_neighbour(lan, victim)
    try:
        sh(lan, "attacker", f"ip addr add {victim}/32 dev eth0 && ip neigh flush dev eth0")
        sh(lan, "attacker", f"ping -c 2 -W 1 -I {victim} {GATEWAY}; ping -c 2 -W 1 -I {victim} {bystander}; "
                            f"arping -U -c 3 -I eth0 -s {victim} {victim}", check=False)
        time.sleep(1)
        assert victim_mac in host_neighbour(lan, victim) and own not in host_neighbour(lan, victim)
        for _ in range(3):
            assert fetch(lan.host, f"http://{victim}/", tries=8) == "victim\n"
        assert own not in sh(lan, "bystander", f"ip neigh show {victim}")
        assert sh(lan, "bystander", f"timeout 10 wget -qO- http://{victim}/", check=False) == "victim\n"
        # Asked afresh, the host hears the victim only: the attacker's ARP replies for the address stay in.
        lan.host.run("ip", "neigh", "del", victim, "dev", "hyper0")
        for _ in range(3):
            assert fetch(lan.host, f"http://{victim}/", tries=8) == "victim\n"
        assert victim_mac in host_neighbour(lan, victim)
    finally:
        sh(lan, "attacker", f"ip addr del {victim}/32 dev eth0", check=False)


def test_forged_source_address_reaches_no_pod_and_not_the_host(lan: Lan) -> None:
    own_ip, bystander = lan.ip["attacker"], lan.ip["bystander"]
    before = echos(lan, "bystander")
    forge(lan, ping(own_ip, bystander, 64))  # the control: from its own address, they arrive
    assert echos(lan, "bystander") >= before + 3
    before = echos(lan, "bystander")
    with sniff(lan.host) as frames:
        forge(lan, ping(lan.ip["victim"], bystander, MARK), ping("192.0.2.7", bystander, MARK),
              ping(lan.ip["victim"], GATEWAY, MARK), ping("192.0.2.7", GATEWAY, MARK))
    assert echos(lan, "bystander") == before
    assert not [f for f in frames if f[3] == 14 + 28 + MARK], frames


def set_mac(lan: Lan, mac: str) -> str:
    """The attacker's eth0 gets `mac` (virtio-net takes it while down; busybox's `ip` would need AF_PACKET) and its
    default route back."""
    return sh(lan, "attacker", f"ifconfig eth0 down && ifconfig eth0 hw ether {mac} && ifconfig eth0 up && "
                             f"ip route add default via {GATEWAY}; cat /sys/class/net/eth0/address")


def test_a_pod_that_changes_its_mac_cannot_send(lan: Lan) -> None:
    need_net_admin(lan)
    bystander, own, victim_mac = lan.ip["bystander"], lan.mac["attacker"], lan.mac["victim"]
    before = echos(lan, "bystander")
    try:
        with sniff(lan.host) as frames:
            assert set_mac(lan, STRANGER_MAC).strip() == STRANGER_MAC
            out = sh(lan, "attacker", f"ping -c 3 -W 1 {bystander}; ping -c 3 -W 1 {GATEWAY}", check=False)
        assert out.count("3 packets transmitted") == 2, out
        assert echos(lan, "bystander") == before
        assert not [f for f in frames if f[0] == STRANGER_MAC], frames
        # The victim's MAC: the bridge does not learn it on the attacker's port, traffic for it stays the victim's.
        assert set_mac(lan, victim_mac).strip() == victim_mac
        sh(lan, "attacker", f"ping -c 2 -W 1 {GATEWAY}; ping -c 2 -W 1 {bystander}", check=False)
        fdb = lan.host.run("bridge", "fdb", "show", "dev", network(lan, "attacker")["tap"]).stdout.decode()
        assert victim_mac not in fdb, fdb
        assert fetch(lan.host, f"http://{lan.ip['victim']}/", tries=8) == "victim\n"
    finally:
        set_mac(lan, own)
    assert sh(lan, "attacker", f"ping -c 1 -W 5 {bystander}")  # itself again, it may send


def test_no_ipv6_leaves_a_pod(lan: Lan) -> None:
    """The guests' kernels speak IPv6 on their own (MLD, neighbour discovery) and the attacker tries to: none of it
    reaches the host (nor, through the bridge, another pod)."""
    with sniff(lan.host) as frames:
        sh(lan, "attacker", f"ping6 -c 2 -W 1 -s {MARK} -I eth0 ff02::1; ip -6 addr add fe80::5/64 dev eth0; "
                            f"ping6 -c 2 -W 1 -s {MARK} -I eth0 ff02::1", check=False)
        if lan.net_admin:
            set_mac(lan, lan.mac["attacker"])  # its link goes down and up: the guest announces itself again
        time.sleep(3)
    assert not [f for f in frames if f[1] == "86dd"], frames


def test_host_services_are_out_of_reach_but_published_ports_and_pods_are_not(lan: Lan) -> None:
    service = lan.host.popen(sys_python(), "-c", SERVICE, stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout
        port = int(service.stdout.readline())
        for address in ("127.0.0.1", GATEWAY, HOST_IP):  # it is up, and on the bridge's address too
            r = lan.host.run("timeout", "5", "busybox", "nc", address, str(port), stdin=subprocess.DEVNULL)
            assert r.stdout == b"host-secret\n", address
        for address in (GATEWAY, HOST_IP):
            out = sh(lan, "bystander", f"nc -w 3 {address} {port} </dev/null", check=False)
            assert "host-secret" not in out, address
        link_local = re.search(r"inet6 (fe80::\S+)/", lan.host.run(
            "ip", "-6", "addr", "show", "dev", "hyper0").stdout.decode())
        if link_local:  # without IPv6 on the bridge there is nothing to reach
            out = sh(lan, "bystander", f"nc -w 3 {link_local.group(1)}%eth0 {port} </dev/null", check=False)
            assert "host-secret" not in out
        # What must keep working: a published port from this host, from beyond it, and from a pod (through the
        # bridge address); pod to pod; the host reaching pods (replies come back in).
        assert fetch(lan.host, f"http://127.0.0.1:{lan.port}/") == "victim\n"
        assert fetch(lan.world, f"http://{HOST_IP}:{lan.port}/") == "victim\n"
        assert sh(lan, "bystander", f"wget -qO- http://{GATEWAY}:{lan.port}/") == "victim\n"
        assert sh(lan, "bystander", f"wget -qO- http://{lan.ip['victim']}/") == "victim\n"
        assert fetch(lan.host, f"http://{lan.ip['bystander']}/") == "bystander\n"
    finally:
        service.kill()
        service.wait()


def test_rules_go_with_the_pod(lan: Lan) -> None:
    lan.d.hyperctl("run", "-d", "--name", "brief", "busybox", "sleep", "600", check=True)
    tap, mac = network(lan, "brief")["tap"], network(lan, "brief")["mac"]
    assert tap and f"jump pod_{tap}" in bridge_rules(lan) and mac in bridge_rules(lan)
    lan.d.hyperctl("rm", "-f", "brief", check=True)
    assert tap not in bridge_rules(lan) and mac not in bridge_rules(lan)
    assert 'iifname "hc*" drop' in bridge_rules(lan)


def bridge_rules(lan: Lan) -> str:
    return lan.host.run("nft", "list", "table", "bridge", "hypercontainer").stdout.decode()


# ---- the rules alone (no VM) ----------------------------------------------------------------------------------

def test_rules_load_and_reload_atomically() -> None:
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    ns = Netns(f"hct-rules-{os.getpid()}")
    try:
        ports = [firewall.Port("hc0123456789ab", "02:68:63:00:00:02", "10.77.0.2"),
                 firewall.Port("hcpool1234abcd", "02:68:63:00:00:03", "10.77.0.3")]
        forwards = [firewall.Forward("0.0.0.0", 8080, "tcp", "10.77.0.2", 80)]
        script = firewall.ip_table([("hyper0", "10.77.0.0/16")], forwards, ["10.77.0.1"]) + firewall.bridge_table(ports)
        for _ in range(2):  # rendered whole: loading twice replaces, never adds
            r = ns.run("nft", "-f", "-", input=script.encode())
            assert r.returncode == 0, r.stderr
        listed = ns.run("nft", "list", "ruleset").stdout.decode()
        assert listed.count("chain pod_hc0123456789ab {") == 1
        assert "ether saddr != 02:68:63:00:00:02 drop" in listed
        assert "arp saddr ether 02:68:63:00:00:02 arp saddr ip 10.77.0.2 accept" in listed
        assert "ip saddr 10.77.0.2 accept" in listed and 'iifname "hc*" drop' in listed
        assert 'iifname "hyper0" jump from_pods' in listed and "ct state established,related accept" in listed
        r = ns.run("nft", "-f", "-", input=(firewall.ip_table([("hyper0", "10.77.0.0/16")], []) +
                                            firewall.bridge_table([])).encode())
        assert r.returncode == 0, r.stderr
        listed = ns.run("nft", "list", "ruleset").stdout.decode()
        assert "pod_" not in listed and "10.77.0.2" not in listed and "dport 53" not in listed
    finally:
        ns.delete()


# The manager's rules over a pod's life, in a namespace of its own: bridge mode guards a tap from attach to detach
# (a pool's tap, made in advance, included) and a new hyperd keeps an earlier one's rules until it reconciles;
# user and none modes touch no table.
LIFECYCLE = """
import asyncio, subprocess, sys
from pathlib import Path
from hypercontainer.network import firewall
from hypercontainer.network.manager import Network
from hypercontainer.spec.pod import PodSpec

def tables():
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout

async def main():
    db = Path(sys.argv[1]) / "db"
    spec = PodSpec.model_validate({"containers": [{"name": "c", "image": "busybox"}]})
    for mode in ("user", "none"):
        net = Network(mode, db)
        await net.setup()
        assert net.mode == mode and tables() == "", tables()
        await net.close(remove_rules=True)
    net = Network("bridge", db)
    await net.setup()
    rules = await firewall.rules("bridge")
    assert 'iifname "hc*" drop' in rules and "pod_" not in rules, rules
    assert 'iifname "hyper0" jump from_pods' in await firewall.rules("ip")
    a = await net.attach("a" * 64, spec)
    spare = await net.default.premake("12345678")  # a pool VM's tap, made by the provider in advance
    assert spare == "hcpool12345678", spare
    b = await net.attach("b" * 64, spec, tap=spare)
    rules = await firewall.rules("bridge")
    for att in (a, b):
        assert f"jump pod_{att.tap}" in rules and f"ether saddr != {att.mac} drop" in rules, rules
        assert f"ip saddr {att.address} accept" in rules, rules
    net2 = Network("bridge", db)  # a new hyperd: the rules stay until it reconciles
    await net2.setup()
    assert f"jump pod_{a.tap}" in await firewall.rules("bridge")
    net2.adopt("a" * 64, a.to_dict())
    await net2.reconcile({"a" * 64})
    rules = await firewall.rules("bridge")
    assert f"jump pod_{a.tap}" in rules and b.tap not in rules, rules
    await net2.detach("a" * 64)
    assert "pod_" not in await firewall.rules("bridge")
    await net2.close(remove_rules=True)
    net.leases.close()
    assert tables() == "", tables()
    print("ok")

asyncio.run(main())
"""


def test_rules_follow_attach_detach_restart_and_modes(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    ns = Netns(f"hct-life-{os.getpid()}")
    try:
        r = ns.run(sys.executable, "-c", LIFECYCLE, str(tmp_path))
        assert r.stdout.decode().strip() == "ok", r.stderr.decode()[-3000:]
    finally:
        ns.delete()


@pytest.mark.parametrize("port", [("hc0", "02:68:63:00:00:02", "10.77.0.2 accept"),
                                  ("hc0 x", "02:68:63:00:00:02", "10.77.0.2"),
                                  ("hc0", "02:68:63:00:00:02; drop", "10.77.0.2")])
def test_rules_refuse_what_is_not_an_address(port: tuple[str, str, str]) -> None:
    with pytest.raises(HCError):
        firewall.Port(*port)

