"""Tenants' networks and volumes on real VMs (issue 16: Neutron's and Cinder's parts): hyperd in bridge mode inside
test namespaces (tests/netns.py), serving tenants over TLS (--listen). Tenant a's pods reach each other on a's
own network and the world beyond the host; tenant b's pod, on b's own network, reaches neither a's pods (TCP,
ICMP) nor a host service, only a's published port; a named volume keeps its files from one pod to the next."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypercontainer.cli.rest import Rest

from .conftest import BIN, Daemon
from .netns import HOST_IP, WORLD_IP, Netns, host_and_world
from .test_security_net import SERVICE, free_port, sys_python

pytestmark = [pytest.mark.timeout(900), pytest.mark.vm]
POOL = ipaddress.IPv4Network("10.80.0.0/12")


@dataclass
class Site:
    d: Daemon
    host: Netns
    world: Netns
    port: int  # hyperd's TLS port (in the host namespace)
    ca: Path
    tokens: dict[str, str]
    service: int  # a host service's port (every address of the host namespace)
    world_service: int  # the same, in the world
    published: int  # a's web pod's published port

    def hyperctl(self, tenant: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERCONTAINER_")}
        env.update(HYPERCONTAINER_TOKEN=self.tokens[tenant], XDG_CONFIG_HOME=str(self.d.root / "client"),
                   HYPERCONTAINER_SOCKET=str(self.d.root / "no-such.sock"))
        r = subprocess.run(self.host.argv(str(BIN / "hyperctl"), "--host", f"tcp://127.0.0.1:{self.port}",
                                          "--tls-ca", str(self.ca), *args), env=env, capture_output=True, timeout=300)
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def sh(self, tenant: str, pod: str, script: str) -> str:
        r = self.hyperctl(tenant, "exec", pod, "sh", "-c", script, check=False)
        return (r.stdout + r.stderr).decode()

    def ip(self, tenant: str, pod: str) -> str:
        return str(json.loads(self.hyperctl(tenant, "inspect", pod).stdout)["network"]["ip"])


def serve(ns: Netns) -> tuple[subprocess.Popen[str], int]:
    p = ns.popen(sys_python(), "-c", SERVICE, stdout=subprocess.PIPE, text=True)
    assert p.stdout
    return p, int(p.stdout.readline())


@pytest.fixture(scope="module")
def site(busybox_tar: Path) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("VM tests need root")
    root = Path(tempfile.mkdtemp(prefix="hc-tenantnet-"))
    host, world = host_and_world()
    services: list[subprocess.Popen[str]] = []
    d: Daemon | None = None
    try:
        r = subprocess.run([str(BIN / "hyperd"), "tls", "init", str(root / "tls")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        port = free_port(host)
        d = Daemon(root, netns=host.path, HYPERCONTAINER_LISTEN=f"tcp://127.0.0.1:{port}",
                   HYPERCONTAINER_TLS_DIR=str(root / "tls"))
        d.start()
        admin = Rest(d.rundir / "hyperd.sock", 60)
        tokens = {}
        for t in ("a", "b"):
            admin.request("POST", "/v1/tenants", json={"name": t})
            tokens[t] = str(admin.request("POST", "/v1/tokens", json={"tenant": t})["token"])
        (p1, service), (p2, world_service) = serve(host), serve(world)
        services += [p1, p2]
        s = Site(d, host, world, port, root / "tls" / "ca.pem", tokens, service, world_service, free_port(host))
        for t in ("a", "b"):
            s.hyperctl(t, "load", "-i", str(busybox_tar))
        web = "echo a-web > /tmp/index.html && exec httpd -f -p 80 -h /tmp"
        s.hyperctl("a", "run", "-d", "--name", "web", "-p", f"{s.published}:80", "busybox", "sh", "-c", web)
        s.hyperctl("a", "run", "-d", "--name", "peer", "busybox", "sleep", "3600")
        s.hyperctl("b", "run", "-d", "--name", "prober", "busybox", "sleep", "3600")
        yield s
    finally:
        for p in services:
            p.kill()
        if d:
            d.stop()
        host.delete()
        world.delete()
        shutil.rmtree(root, ignore_errors=True)


def test_each_tenant_gets_a_network_of_its_own(site: Site) -> None:
    a_web, a_peer, b = site.ip("a", "web"), site.ip("a", "peer"), site.ip("b", "prober")
    nets = {t: json.loads(site.hyperctl(t, "network", "inspect", "default").stdout)[0] for t in ("a", "b")}
    sub_a, sub_b = (ipaddress.IPv4Network(nets[t]["subnet"]) for t in ("a", "b"))
    assert sub_a != sub_b and sub_a.subnet_of(POOL) and sub_b.subnet_of(POOL)
    assert ipaddress.IPv4Address(a_web) in sub_a and ipaddress.IPv4Address(a_peer) in sub_a
    assert ipaddress.IPv4Address(b) in sub_b
    assert nets["a"]["pods"] == 2 and nets["b"]["pods"] == 1
    assert site.hyperctl("b", "network", "ls", "-q").stdout == b"default\n"  # its own alone


def test_a_tenants_pods_reach_each_other_and_the_world(site: Site) -> None:
    a_web = site.ip("a", "web")
    assert site.sh("a", "peer", f"timeout 10 wget -qO- http://{a_web}/") == "a-web\n"
    assert "0% packet loss" in site.sh("a", "peer", f"ping -c 2 -W 2 {a_web}")
    for t, pod in (("a", "peer"), ("b", "prober")):  # egress, NATed behind the host
        assert site.sh(t, pod, f"nc -w 10 {WORLD_IP} {site.world_service} </dev/null") == "host-secret\n"


def test_another_tenants_pods_are_out_of_reach_but_its_published_port(site: Site) -> None:
    a_web = site.ip("a", "web")
    out = site.sh("b", "prober", f"timeout 5 wget -qO- http://{a_web}/; echo rc=$?")
    assert "a-web\n" not in out and not out.strip().endswith("rc=0"), out  # timed out (143) or refused
    assert "100% packet loss" in site.sh("b", "prober", f"ping -c 2 -W 2 {a_web}")
    # the host: neither its address on the tenant's bridge nor its other addresses serve anything but ports
    gateway = json.loads(site.hyperctl("b", "network", "inspect", "default").stdout)[0]["gateway"]
    for addr in (gateway, HOST_IP):
        out = site.sh("b", "prober", f"nc -w 5 {addr} {site.service} </dev/null; echo rc=$?")
        assert "host-secret" not in out, (addr, out)
    assert site.sh("b", "prober", f"timeout 10 wget -qO- http://{HOST_IP}:{site.published}/") == "a-web\n"
    # and the other way round: a cannot reach b either
    out = site.sh("a", "peer", f"ping -c 2 -W 2 {site.ip('b', 'prober')}")
    assert "100% packet loss" in out, out


def test_more_networks_of_ones_own(site: Site) -> None:
    assert site.hyperctl("a", "network", "create", "lab").stdout.startswith(b"lab 10.")
    r = site.hyperctl("b", "run", "--rm", "--net", "lab", "busybox", "true", check=False)
    assert r.returncode != 0 and b"no such network: lab" in r.stderr  # a's, not b's: not found
    site.hyperctl("a", "run", "-d", "--name", "inlab", "--net", "lab", "busybox", "sleep", "3600")
    try:
        lab = json.loads(site.hyperctl("a", "network", "inspect", "lab").stdout)[0]
        assert ipaddress.IPv4Address(site.ip("a", "inlab")) in ipaddress.IPv4Network(lab["subnet"])
        assert "100% packet loss" in site.sh("a", "inlab", f"ping -c 2 -W 2 {site.ip('a', 'web')}")
        r = site.hyperctl("a", "network", "rm", "lab", check=False)
        assert r.returncode != 0 and b"has pods" in r.stderr
    finally:
        site.hyperctl("a", "rm", "-f", "inlab")
    site.hyperctl("a", "network", "rm", "lab")
    assert b"lab" not in site.hyperctl("a", "network", "ls", "-q").stdout
    link = site.host.run("ip", "link", "show", lab["bridge"])
    assert link.returncode != 0  # its bridge went with it


def test_a_named_volume_keeps_its_files(site: Site) -> None:
    site.hyperctl("a", "volume", "create", "data", "--size", "64M")
    try:
        site.hyperctl("a", "run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f")
        r = site.hyperctl("a", "run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/f")
        assert r.stdout == b"kept\n"
        r = site.hyperctl("b", "run", "--rm", "-v", "data:/data", "busybox", "true", check=False)
        assert r.returncode != 0 and b"no such volume: data" in r.stderr
        r = site.hyperctl("a", "run", "--rm", "-v", "/etc:/host", "busybox", "true", check=False)
        assert r.returncode != 0 and b"host paths are for the administrator" in r.stderr
    finally:
        site.hyperctl("a", "volume", "rm", "data")
