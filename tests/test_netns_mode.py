"""Network mode `namespace` (network/netns_mode.py): a pod's VM joins a network namespace an engine made. Provider
level, no VM, in namespaces the tests make (veth pairs; `ip -n`, `tc -n`, `nsenter --net=`, never `ip netns exec`):
what attach reads and makes, that detach leaves the namespace exactly as it was, bad input, rollback, a crashed
hyperd's and a killed runv shim's leftovers. Then end to end: `hyperctl run --net ns:PATH` with traffic both ways."""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import ValidationError

from hypercontainer.cli.hyperctl.run import parse_network
from hypercontainer.errors import Conflict, HCError, InvalidArgument
from hypercontainer.network import netns_mode
from hypercontainer.network.attachment import Attachment, Interface, Route
from hypercontainer.network.manager import Network
from hypercontainer.network.netns_mode import NamespaceProvider, unplug
from hypercontainer.network.provider import Provider
from hypercontainer.spec.pod import PodSpec

from .conftest import Daemon
from .netns import Netns, fetch

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
A, B = "a" * 64, "b" * 64
_names = itertools.count()


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def spec(path: str | Path, **fields: Any) -> PodSpec:
    return PodSpec.model_validate({"containers": [{"name": "c", "image": "busybox"}],
                                   "network": {"namespace": str(path)}, **fields})


def new_ns() -> Netns:
    ns = Netns(f"hcn-{os.getpid()}-{next(_names)}")
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    return ns


def veth(ns: Netns, name: str, peer_ns: Netns, peer: str, addrs: tuple[str, ...] = (), mtu: int = 1500,
         peer_addrs: tuple[str, ...] = ()) -> None:
    sh("ip", "link", "add", name, "netns", ns.name, "mtu", str(mtu), "type", "veth", "peer", "name", peer, "netns",
       peer_ns.name, "mtu", str(mtu))
    for a in addrs:
        sh("ip", "-n", ns.name, "addr", "add", a, "dev", name)
    for a in peer_addrs:
        sh("ip", "-n", peer_ns.name, "addr", "add", a, "dev", peer)
    sh("ip", "-n", ns.name, "link", "set", name, "up")
    sh("ip", "-n", peer_ns.name, "link", "set", peer, "up")


def link(ns: Netns, name: str) -> dict:
    return json.loads(sh("ip", "-n", ns.name, "-j", "-d", "link", "show", name))[0]


def settle(ns: Netns) -> None:
    """Until the kernel has given every up veth with a carrier its link-local address (it does so on its own)."""
    for _ in range(100):
        links = json.loads(sh("ip", "-n", ns.name, "-j", "addr"))
        if all(any(a["family"] == "inet6" and a["scope"] == "link" for a in i.get("addr_info", []))
               for i in links if "LOWER_UP" in i["flags"] and i["ifname"] != "lo"):
            return
        subprocess.run(["sleep", "0.05"])
    raise AssertionError(sh("ip", "-n", ns.name, "addr"))


def snapshot(ns: Netns) -> list[str]:
    """Everything attach may touch: links (with details), addresses, routes, qdiscs, each interface's filters."""
    out = [sh("ip", "-n", ns.name, *args) for args in (("-d", "link"), ("addr",), ("route",), ("-6", "route"))]
    out.append(sh("tc", "-n", ns.name, "qdisc"))
    for name in ns.links():
        r = subprocess.run(["tc", "-n", ns.name, "filter", "show", "dev", name, "ingress"], capture_output=True,
                           text=True)
        # a link a pod's teardown removed between the listing and this (unchanged() looks again)
        out.append(r.stdout if r.returncode == 0 else f"{name}: {r.stderr.strip()}")
    return out


def unchanged(ns: Netns, before: list[str], wait: float = 0) -> None:
    """The namespace is as `before` (within `wait` seconds: a pod's teardown may finish after hyperctl returns)."""
    deadline = time.monotonic() + wait
    while (now := snapshot(ns)) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    diff = [line for b, a in zip(before, now, strict=False) if a != b
            for line in difflib.unified_diff(b.splitlines(), a.splitlines(), "before", "now", lineterm="")]
    assert now == before, "\n".join(diff)


def records(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT pod_id, netns, taps FROM netns_pods").fetchall()


@pytest.fixture
def engine() -> Iterator[tuple[Netns, Netns]]:
    """What a container engine hands a runtime: a namespace with eth0 (IPv4 + IPv6, MTU 1400, default routes and
    an extra route via a gateway and one on the link), its peer in another namespace (the engine's bridge side)."""
    ns, peer = new_ns(), new_ns()
    try:
        veth(ns, "eth0", peer, "peer0", ("10.6.0.2/24", "fd00:6::2/64"), 1400, ("10.6.0.1/24", "fd00:6::1/64"))
        sh("ip", "-n", ns.name, "route", "add", "default", "via", "10.6.0.1")
        sh("ip", "-n", ns.name, "route", "add", "10.9.0.0/16", "via", "10.6.0.3")
        sh("ip", "-n", ns.name, "route", "add", "192.0.2.0/24", "dev", "eth0")
        sh("ip", "-n", ns.name, "-6", "route", "add", "default", "via", "fd00:6::1")
        settle(ns)
        yield ns, peer
    finally:
        ns.delete()
        peer.delete()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- provider level -------------------------------------------------------------------------------------------
def test_the_provider_and_its_place_among_the_modes(tmp_path: Path) -> None:
    net = Network("none", tmp_path / "hyperd.db")
    p = net.providers["namespace"]
    assert isinstance(p, Provider) and isinstance(p, NamespaceProvider) and p.mode == "namespace"
    assert (p.nic, p.poolable) == (True, False) and p.ready
    assert net.mode_for(spec("/run/netns/x")) == "namespace" and net.provider_for(spec("/run/netns/x")) is p
    with pytest.raises(InvalidArgument, match="unknown network mode 'namespace'"):
        Network("namespace", tmp_path / "hyperd.db")  # per pod only, never hyperd's default
    with pytest.raises(InvalidArgument, match="VMs made in advance"):
        run(p.premake("k"))
    run(net.close(remove_rules=False))


def test_attach_carries_the_interface_and_detach_leaves_the_namespace_as_it_was(engine: tuple[Netns, Netns],
                                                                                 tmp_path: Path) -> None:
    ns, _ = engine
    before = snapshot(ns)
    eth0 = link(ns, "eth0")
    mac, tap = eth0["address"], f"nshc{eth0['ifindex']}"
    p = NamespaceProvider(tmp_path / "hyperd.db")
    att = run(p.attach(A, spec(ns.path)))
    assert isinstance(att, Attachment)
    assert (att.mode, att.netns, att.mac, att.address, att.prefixlen, att.gateway, att.tap, att.mtu, att.ports) == (
        "namespace", str(ns.path), mac, "10.6.0.2", 24, "", tap, 1400, [])
    # fe80:: of eth0 is not carried (the guest derives its own from the same MAC)
    assert att.interfaces == [Interface(mac, tap, ("10.6.0.2/24", "fd00:6::2/64"), 1400)] == att.nics()
    # on the link first (a gateway may need it), defaults last; not the kernel's connected-subnet routes
    assert att.routes == [Route("192.0.2.0/24", None, mac), Route("10.9.0.0/16", "10.6.0.3", mac),
                          Route("0.0.0.0/0", "10.6.0.1", mac), Route("::/0", "fd00:6::1", mac)] == att.guest_routes()
    assert att.dns and Attachment.from_dict(json.loads(json.dumps(att.to_dict()))) == att
    # the tap: in the namespace, a persistent single-queue tap with the interface's MTU, up, no IPv6 address
    t = link(ns, tap)
    assert t["mtu"] == 1400 and "UP" in t["flags"] and t["linkinfo"]["info_kind"] == "tun"
    assert t["linkinfo"]["info_data"]["type"] == "tap" and t["linkinfo"]["info_data"]["multi_queue"] is False
    assert t["ifalias"] == f"hypercontainer: carries {eth0['ifindex']} qdisc ours"
    assert sh("ip", "-n", ns.name, "addr", "show", tap).count("inet") == 0
    # redirected both ways: everything eth0 receives leaves through the tap, and the other way round
    to_tap = sh("tc", "-n", ns.name, "filter", "show", "dev", "eth0", "ingress")
    to_eth = sh("tc", "-n", ns.name, "filter", "show", "dev", tap, "ingress")
    assert f"mirred (Egress Redirect to device {tap})" in to_tap and "match 00000000/00000000 at 0" in to_tap
    assert "mirred (Egress Redirect to device eth0)" in to_eth
    assert "qdisc ingress ffff: dev eth0" in sh("tc", "-n", ns.name, "qdisc")
    # the namespace's own interface keeps its addresses and routes
    assert "10.6.0.2/24" in sh("ip", "-n", ns.name, "addr", "show", "eth0")
    assert records(tmp_path / "hyperd.db") == [(A, str(ns.path), json.dumps([tap]))]
    run(p.detach(A))
    unchanged(ns, before)
    assert records(tmp_path / "hyperd.db") == []
    run(p.detach(A))  # idempotent
    run(p.close(remove_rules=True))


def test_two_interfaces_become_two_nics_and_a_down_one_is_left_alone(engine: tuple[Netns, Netns],
                                                                        tmp_path: Path) -> None:
    ns, peer = engine
    veth(ns, "net1", peer, "peer1", ("10.7.0.2/24",), 9000, ("10.7.0.1/24",))
    sh("ip", "-n", ns.name, "route", "add", "10.8.0.0/16", "via", "10.7.0.1")
    sh("ip", "link", "add", "spare", "netns", ns.name, "type", "veth", "peer", "name", "spare-p", "netns", peer.name)
    settle(ns)
    before = snapshot(ns)
    eth0, net1 = link(ns, "eth0"), link(ns, "net1")
    p = NamespaceProvider(tmp_path / "hyperd.db")
    att = run(p.attach(A, spec(ns.path)))
    assert att.interfaces == [
        Interface(eth0["address"], f"nshc{eth0['ifindex']}", ("10.6.0.2/24", "fd00:6::2/64"), 1400),
        Interface(net1["address"], f"nshc{net1['ifindex']}", ("10.7.0.2/24",), 9000)]
    assert Route("10.8.0.0/16", "10.7.0.1", net1["address"]) in att.routes
    assert Route("0.0.0.0/0", "10.6.0.1", eth0["address"]) in att.routes
    assert f"nshc{link(ns, 'spare')['ifindex']}" not in ns.links()
    run(p.detach(A))
    unchanged(ns, before)
    run(p.close(remove_rules=True))


def test_an_ingress_qdisc_and_filter_of_the_engine_stay(engine: tuple[Netns, Netns], tmp_path: Path) -> None:
    ns, _ = engine
    sh("tc", "-n", ns.name, "qdisc", "add", "dev", "eth0", "ingress")
    sh("tc", "-n", ns.name, "filter", "add", "dev", "eth0", "ingress", "prio", "10", "protocol", "ip", "u32",
       "match", "ip", "src", "203.0.113.1/32", "flowid", "1:1")  # (gact and police are not built in here)
    before = snapshot(ns)
    p = NamespaceProvider(tmp_path / "hyperd.db")
    att = run(p.attach(A, spec(ns.path)))
    assert link(ns, att.tap)["ifalias"].endswith("qdisc theirs")
    shown = sh("tc", "-n", ns.name, "filter", "show", "dev", "eth0", "ingress")
    assert "pref 10 " in shown and f"Redirect to device {att.tap}" in shown
    run(p.detach(A))
    unchanged(ns, before)
    run(p.close(remove_rules=True))


def test_bad_paths_are_refused_by_name(tmp_path: Path) -> None:
    p = NamespaceProvider(tmp_path / "hyperd.db")
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for path, message in ((tmp_path / "missing", f"network namespace {tmp_path / 'missing'}: No such file"),
                          (Path("/proc/self/ns/pid"), "/proc/self/ns/pid is not a network namespace"),
                          (tmp_path / "file", f"{tmp_path / 'file'} is not a network namespace"),
                          (tmp_path / "fifo", f"{tmp_path / 'fifo'} is not a network namespace"),
                          (tmp_path, f"{tmp_path} is not a network namespace"),
                          (Path("/proc/1/ns/net"), "/proc/1/ns/net")):  # the host's (or out of reach)
        with pytest.raises(InvalidArgument) as e:
            run(p.attach(A, spec(path)))
        assert message in e.value.message
    # hyperd's own namespace where its bridge is, the host's: protected (before anything is read)
    ns = new_ns()
    try:
        p.protect(str(ns.path), "protected here")
        with pytest.raises(InvalidArgument, match=f"{ns.path} is protected here: it cannot be given to a pod"):
            run(p.attach(A, spec(ns.path)))
    finally:
        ns.delete()
    assert records(tmp_path / "hyperd.db") == [] and p.pods == {}
    with pytest.raises(ValidationError, match="ports cannot be published with network namespace /run/netns/x"):
        spec("/run/netns/x", ports=[{"container_port": 80}])
    run(p.close(remove_rules=True))


def test_namespaces_that_cannot_be_carried_are_refused_and_left_as_they_were(engine: tuple[Netns, Netns],
                                                                              tmp_path: Path) -> None:
    ns, _ = engine
    empty = new_ns()
    try:
        p = NamespaceProvider(tmp_path / "hyperd.db")
        before = snapshot(empty)
        with pytest.raises(InvalidArgument, match=f"network namespace {empty.path} has no interface to carry"):
            run(p.attach(A, spec(empty.path)))
        assert snapshot(empty) == before
        sh("ip", "-n", ns.name, "tuntap", "add", "dev", "tun0", "mode", "tun")
        sh("ip", "-n", ns.name, "link", "set", "tun0", "up")
        before = snapshot(ns)
        with pytest.raises(InvalidArgument, match=f"network namespace {ns.path}: interface tun0 .*cannot be carried"):
            run(p.attach(A, spec(ns.path)))
        assert snapshot(ns) == before and records(tmp_path / "hyperd.db") == [] and p.pods == {}
        run(p.close(remove_rules=True))
    finally:
        empty.delete()


def test_a_namespace_serves_one_pod_at_a_time(engine: tuple[Netns, Netns], tmp_path: Path) -> None:
    ns, _ = engine
    before = snapshot(ns)
    p = NamespaceProvider(tmp_path / "hyperd.db")
    run(p.attach(A, spec(ns.path)))
    with pytest.raises(Conflict, match=f"network namespace {ns.path} is already joined by pod aaaaaaaaaaaa"):
        run(p.attach(B, spec(ns.path)))
    other = NamespaceProvider(tmp_path / "other.db")  # another runtime's VM in it: its tap is there
    with pytest.raises(Conflict, match=r"is already joined by a VM \(tap nshc"):
        run(other.attach(B, spec(ns.path)))
    run(p.detach(A))
    unchanged(ns, before)
    for x in (p, other):
        run(x.close(remove_rules=True))


def test_a_failed_plug_is_rolled_back(engine: tuple[Netns, Netns], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    ns, _ = engine
    before = snapshot(ns)
    redirect, calls = netns_mode._redirect, []

    def second_fails(ip: Any, src: int, dst: int) -> None:
        calls.append(src)
        if len(calls) == 2:  # eth0 -> tap is in place, tap -> eth0 fails
            raise NetlinkError(95)
        redirect(ip, src, dst)

    monkeypatch.setattr(netns_mode, "_redirect", second_fails)
    p = NamespaceProvider(tmp_path / "hyperd.db")
    with pytest.raises(HCError, match=f"network namespace {ns.path}: cannot carry eth0 \\(tc on nshc"):
        run(p.attach(A, spec(ns.path)))
    assert snapshot(ns) == before and records(tmp_path / "hyperd.db") == [] and p.pods == {}
    run(p.close(remove_rules=True))


def test_a_cancelled_attach_leaves_its_plug_to_detach(engine: tuple[Netns, Netns], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread that plugs cannot be stopped: a cancelled attach waits for it, and what it made is the pod's."""
    ns, _ = engine
    before = snapshot(ns)
    real = netns_mode.plug

    def slow(*args: Any) -> None:
        time.sleep(0.5)
        real(*args)

    monkeypatch.setattr(netns_mode, "plug", slow)
    p = NamespaceProvider(tmp_path / "hyperd.db")

    async def cancelled() -> None:
        task = asyncio.ensure_future(p.attach(A, spec(ns.path)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert list(p.pods) == [A] and snapshot(ns) != before
        await p.detach(A)

    run(cancelled())
    unchanged(ns, before)
    assert records(tmp_path / "hyperd.db") == []
    run(p.close(remove_rules=True))


def test_a_crashed_hyperds_leftovers_go_at_reconcile_and_live_pods_are_adopted(engine: tuple[Netns, Netns],
                                                                                 tmp_path: Path) -> None:
    ns, peer = engine
    ns2 = new_ns()
    try:
        veth(ns2, "eth0", peer, "peer2", ("10.6.1.2/24",))
        settle(ns2)
        before, before2 = snapshot(ns), snapshot(ns2)
        db = tmp_path / "hyperd.db"
        first = Network("none", db)
        run(first.attach(A, spec(ns.path)))
        att_b = run(first.attach(B, spec(ns2.path)))
        saved = json.loads(json.dumps(att_b.to_dict()))  # what the pod's record keeps
        # hyperd is killed: nothing detached. The next one adopts B (live) and reconciles: A's plug goes.
        second = Network("none", db)
        adopted = second.adopt(B, saved)
        assert adopted == att_b
        run(second.reconcile({B}))
        unchanged(ns, before)
        assert snapshot(ns2) != before2 and [r[0] for r in records(db)] == [B]
        run(second.detach(B))
        assert snapshot(ns2) == before2 and records(db) == []
        # a start that died before its attachment was recorded anywhere but in the table: detach finds it
        third = Network("none", db)
        run(third.attach(A, spec(ns.path)))
        fourth = Network("none", db)
        run(fourth.detach(A))
        assert snapshot(ns) == before and records(db) == []
        for n in (first, second, third, fourth):
            run(n.close(remove_rules=False))
    finally:
        ns2.delete()


def test_reconcile_when_the_namespace_is_gone(engine: tuple[Netns, Netns], tmp_path: Path) -> None:
    _, peer = engine
    gone = new_ns()
    veth(gone, "eth0", peer, "peer3", ("10.6.2.2/24",))
    db = tmp_path / "hyperd.db"
    crashed = Network("none", db)
    run(crashed.attach(A, spec(gone.path)))
    gone.delete()  # the engine removed it (crashed hyperd's fd keeps it alive meanwhile, unreachable by path)
    net = Network("none", db)
    run(net.reconcile(set()))
    assert records(db) == []
    for n in (crashed, net):
        run(n.close(remove_rules=False))


def test_unplug_after_a_killed_shim_and_a_half_done_plug(engine: tuple[Netns, Netns], tmp_path: Path) -> None:
    ns, _ = engine
    before = snapshot(ns)
    att = run(NamespaceProvider(tmp_path / "hyperd.db").attach(A, spec(ns.path)))
    assert unplug(str(ns.path), [i.tap for i in att.interfaces if i.tap]) == [att.tap]
    unchanged(ns, before)
    # a plug cut short (a killed shim): the tap and its journal, our ingress qdisc, one redirect of two
    index = link(ns, "eth0")["ifindex"]
    tap = f"nshc{index}"

    def half(ip: Any) -> None:
        netns_mode._make_tap(tap)
        t = ip.link_lookup(ifname=tap)[0]
        ip.link("set", index=t, IFLA_IFALIAS=f"hypercontainer: carries {index} qdisc ours")
        ip.tc("add", "ingress", index, "ffff:")
        netns_mode._redirect(ip, index, t)

    fd = netns_mode.open_netns(str(ns.path))
    try:
        netns_mode._in_ns(fd, half)
    finally:
        os.close(fd)
    assert snapshot(ns) != before
    assert unplug(str(ns.path)) == [tap]  # no names: every tap of ours
    unchanged(ns, before)
    assert unplug(str(ns.path)) == [] and unplug("/run/netns/hcn-no-such-namespace", ["nshc2"]) == []
    with pytest.raises(InvalidArgument, match="is not a network namespace"):
        unplug("/proc/self/ns/pid")


def test_hyperctl_net_option() -> None:
    assert [parse_network(v) for v in ("default", "bridge", "user", "none")] == ["default", "bridge", "user", "none"]
    assert parse_network("ns:/run/netns/x") == {"namespace": "/run/netns/x"}
    assert parse_network("ns:x") == {"namespace": os.path.abspath("x")}
    assert parse_network("lab") == {"name": "lab"}  # one of the caller's networks (hyperd says if it is not)
    for bad in ("Bogus", "ns:", "-x", "a/b"):
        with pytest.raises(click.BadParameter, match="ns:PATH"):
            parse_network(bad)
    assert spec("/run/netns/x").network_mode == "namespace"
    assert PodSpec.model_validate_json(spec("/run/netns//x/.").model_dump_json()).network_namespace == "/run/netns/x"


# ---- end to end ------------------------------------------------------------------------------------------------
def test_a_pod_joins_an_engines_namespace(hyperd: Daemon, engine: tuple[Netns, Netns], tmp_path: Path) -> None:
    """`hyperctl run --net ns:PATH`: the pod has the namespace's address, reaches the peer and is reached from it;
    the namespace is as it was once the pods are gone."""
    ns, peer = engine
    before = snapshot(ns)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("from the peer\n")
    server = peer.popen("busybox", "httpd", "-f", "-p", "10.6.0.1:8080", "-h", str(www))
    try:
        fetch(peer, "http://10.6.0.1:8080/")  # up
        r = hyperd.hyperctl("run", "--rm", "--net", f"ns:{ns.path}", "busybox", "sh", "-c",
                            "ip addr; ip route; ip -6 route; wget -q -O- http://10.6.0.1:8080/")
        out = r.stdout.decode()
        assert r.returncode == 0, r.stderr.decode() + out
        assert "inet 10.6.0.2/24" in out and "inet6 fd00:6::2/64" in out and "mtu 1400" in out
        assert "default via 10.6.0.1" in out and "10.9.0.0/16 via 10.6.0.3" in out
        assert "default via fd00:6::1" in out
        assert out.endswith("from the peer\n")
    finally:
        server.kill()
        server.wait()
    unchanged(ns, before, wait=10)
    (www / "index.html").write_text("from the pod\n")
    pod = hyperd.hyperctl("run", "-d", "--name", "nsweb", "--net", f"ns:{ns.path}", "-v", f"{www}:/www:ro",
                          "busybox", "httpd", "-f", "-p", "80", "-h", "/www")
    try:
        assert pod.returncode == 0, pod.stderr
        assert fetch(peer, "http://10.6.0.2/") == "from the pod\n"
        info = json.loads(hyperd.hyperctl("inspect", "nsweb", check=True).stdout)
        assert info["network"]["mode"] == "namespace" and info["network"]["ip"] == "10.6.0.2"
        assert info["spec"]["network"] == {"namespace": str(ns.path)}
    finally:
        hyperd.hyperctl("rm", "-f", "nsweb")
    unchanged(ns, before)


def test_kill_9_of_hyperd_leaves_nothing_in_the_namespaces(busybox_tar: Path, engine: tuple[Netns, Netns],
                                                           tmp_path: Path) -> None:
    """A pod that runs through hyperd's kill -9 is adopted (still reached from the peer, its namespace cleaned at
    rm); one whose start was killed right after its network was attached leaves nothing once hyperd is back."""
    ns, peer = engine
    ns2 = new_ns()
    d = Daemon(tmp_path)
    try:
        veth(ns2, "eth0", peer, "peer9", ("10.6.3.2/24",))
        settle(ns2)
        before, before2 = snapshot(ns), snapshot(ns2)
        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("kept\n")
        d.start()
        d.hyperctl("load", "-i", str(busybox_tar), check=True)
        d.hyperctl("run", "-d", "--name", "keeper", "--net", f"ns:{ns.path}", "-v", f"{www}:/www:ro", "busybox",
                   "httpd", "-f", "-p", "80", "-h", "/www", check=True)
        assert fetch(peer, "http://10.6.0.2/") == "kept\n"
        assert d.proc
        d.proc.kill()
        d.proc.wait()
        d.env["HYPERCONTAINER_CRASH_AT"] = "network"
        d.start()
        r = d.hyperctl("run", "-d", "--name", "crashed", "--net", f"ns:{ns2.path}", "busybox", "sleep", "600")
        assert r.returncode != 0 and d.proc.wait(30) == -9
        assert snapshot(ns2) != before2  # its tap and filters are there
        del d.env["HYPERCONTAINER_CRASH_AT"]
        d.start()
        unchanged(ns2, before2, wait=10)
        assert fetch(peer, "http://10.6.0.2/") == "kept\n"
        keeper = json.loads(d.hyperctl("inspect", "keeper", check=True).stdout)["id"]
        tap = f"nshc{link(ns, 'eth0')['ifindex']}"
        assert records(d.statedir / "hyperd.db") == [(keeper, str(ns.path), json.dumps([tap]))]
        d.hyperctl("rm", "-f", "keeper", "crashed", check=True)
        unchanged(ns, before)
        assert records(d.statedir / "hyperd.db") == []
    finally:
        d.env.pop("HYPERCONTAINER_CRASH_AT", None)
        if d.proc and d.proc.poll() is not None:
            d.start()
        d.stop()
        ns2.delete()
