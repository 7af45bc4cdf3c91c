"""Network providers without a VM: the selection by mode, the attach/detach/adopt interface of each provider, what
the pool may ask of them, and the bridge provider's premade taps over a hyperd restart (real links and nftables, in
a namespace of the test's own)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hypercontainer.errors import Conflict, InvalidArgument
from hypercontainer.network import firewall
from hypercontainer.network.attachment import Attachment, Published, Route
from hypercontainer.network.bridge_mode import BridgeProvider
from hypercontainer.network.manager import DEFAULT_BRIDGE, Network
from hypercontainer.network.netns_mode import NamespaceProvider
from hypercontainer.network.none_mode import NoneProvider
from hypercontainer.network.provider import Provider
from hypercontainer.network.user_mode import UserProvider
from hypercontainer.pod.pool import Pool
from hypercontainer.pod.slot import Slot
from hypercontainer.pod.templates import Templates
from hypercontainer.spec.pod import PodSpec

from .netns import Netns

REPO = Path(__file__).resolve().parent.parent
A, B = "a" * 64, "b" * 64


def spec(**fields: Any) -> PodSpec:
    return PodSpec.model_validate({"containers": [{"name": "c", "image": "busybox"}], **fields})


async def started(mode: str, db: Path) -> Network:
    net = Network(mode, db)
    await net.setup()
    return net


def test_every_mode_is_a_provider_and_says_what_the_pool_may_do(tmp_path: Path) -> None:
    net = Network("none", tmp_path / "db")
    kinds = {mode: type(p) for mode, p in net.providers.items()}
    assert kinds == {"bridge": BridgeProvider, "user": UserProvider, "none": NoneProvider,
                     "namespace": NamespaceProvider}
    for mode, p in net.providers.items():
        assert isinstance(p, Provider) and p.mode == mode
    # A VM made before its pod is known serves bridge pods (a premade tap) and none pods, not user mode's (its
    # forwards are fixed when QEMU starts).
    assert {m: (p.poolable, p.nic) for m, p in net.providers.items()} == {
        "bridge": (True, True), "user": (False, True), "none": (True, False), "namespace": (False, True)}
    net.leases.close()


def test_bad_modes_and_subnets_are_refused(tmp_path: Path) -> None:
    for args, message in ((("bogus",), "unknown network mode 'bogus'"),
                          (("auto", DEFAULT_BRIDGE, "10.1.0.0/30"), "too small for pods"),
                          (("auto", DEFAULT_BRIDGE, "10.1.0.300/16"), "invalid subnet")):
        mode, *rest = args
        with pytest.raises(InvalidArgument, match=message):
            Network(mode, tmp_path / "db", *rest)
    net = Network("none", tmp_path / "db")
    with pytest.raises(InvalidArgument, match="unknown network mode 'ns'"):
        net.provider("ns")
    net.leases.close()


async def test_the_spec_selects_the_provider(tmp_path: Path) -> None:
    net = await started("user", tmp_path / "db")  # no links: runs anywhere
    try:
        assert net.mode == "user" and net.default is net.providers["user"]
        assert net.mode_for(spec()) == "user" and net.provider_for(spec()) is net.providers["user"]
        assert net.mode_for(spec(network="none")) == "none"
        with pytest.raises(InvalidArgument, match="bridge networking is not available: chosen by --network"):
            net.mode_for(spec(network="bridge"))
        assert net.info() == {"mode": "user", "reason": "chosen by --network", "bridge": None, "subnet": None,
                              "gateway": None}
    finally:
        await net.close(remove_rules=True)


async def test_user_and_none_attach_detach_and_adopt(tmp_path: Path) -> None:
    net = await started("user", tmp_path / "db")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    try:
        att = await net.attach(A, spec(ports=[{"container_port": 80, "host_port": 0, "host_ip": "127.0.0.1"}]))
        assert att is not None and att.mode == "user" and att.tap is None and att.address == "10.0.2.15"
        assert att.ports[0].host_port > 0  # a free port picked for QEMU to bind
        assert net.providers["user"].pods == {A: att}  # type: ignore[attr-defined]
        taken = holder.getsockname()[1]
        with pytest.raises(Conflict, match=f"{taken}/tcp is already in use"):
            await net.attach(B, spec(ports=[{"container_port": 80, "host_port": taken, "host_ip": "127.0.0.1"}]))
        assert B not in net.providers["user"].pods  # type: ignore[attr-defined]
        await net.detach(A)
        await net.detach(A)  # idempotent
        assert net.providers["user"].pods == {}  # type: ignore[attr-defined]
        assert await net.attach(B, spec(network="none")) is None
        again = net.adopt(A, att.to_dict())  # a restarted hyperd: back with the provider that made it
        assert again == att and net.providers["user"].pods == {A: att}  # type: ignore[attr-defined]
        await net.reconcile({B})  # A is not live any more
        assert net.providers["user"].pods == {}  # type: ignore[attr-defined]
    finally:
        holder.close()
        await net.close(remove_rules=True)


def test_attachments_round_trip_and_old_records_load() -> None:
    att = Attachment("bridge", "02:68:63:00:00:02", "10.77.0.2", 16, "10.77.0.1", ["192.0.2.53"], tap="hcx",
                     ports=[Published("0.0.0.0", 8080, 80, "tcp")], routes=[Route("192.0.2.0/24", "10.77.0.254")],
                     mtu=1400, netns="/run/netns/x")
    assert Attachment.from_dict(att.to_dict()) == att
    old = {"mode": "bridge", "mac": "02:68:63:00:00:02", "address": "10.77.0.2", "prefixlen": 16,
           "gateway": "10.77.0.1", "dns": [], "tap": "hcx", "ports": [dict(host_ip="0.0.0.0", host_port=8080,
                                                                          container_port=80, protocol="tcp")]}
    loaded = Attachment.from_dict(old)  # recorded by a hyperd before providers: no routes, MTU or namespace
    assert loaded.routes == [] and loaded.mtu is None and loaded.netns is None and loaded.ports[0].host_port == 8080


def pool_of(net: Network, tmp_path: Path) -> Pool:
    templates = Templates(Path("/nonexistent/kernel"), Path("/nonexistent/initrd"), "tcg", "x", tmp_path / "t",
                          tmp_path / "tr")
    return Pool(1, templates, tmp_path / "pool", net)


async def test_the_pool_asks_the_provider(tmp_path: Path) -> None:
    user = await started("user", tmp_path / "db")
    try:
        pool = pool_of(user, tmp_path)
        assert pool.provider is user.providers["user"] and not pool.matches(1, 256, "user")
        pool.fill()
        assert pool._filling is None  # a provider that is not poolable gets no pool VMs
        assert pool.take(spec()) is None
    finally:
        await user.close(remove_rules=True)
    none = await started("none", tmp_path / "db2")
    try:
        pool = pool_of(none, tmp_path)
        assert pool.matches(1, 256, "none") and not pool.matches(1, 256, "user") and not pool.matches(2, 256, "none")
        assert await pool.provider.premake("0123456789") is None  # no NIC: nothing to make in advance
        slot = Slot(tmp_path, tmp_path, None, None, "t", None)  # type: ignore[arg-type]  # never started here
        pool.ready.append(slot)
        assert pool.take(spec(network="user")) is None  # another provider's pod
        assert pool.take(spec(resources={"vcpu": 2})) is None  # another size
        assert pool.take(spec(volumes=[{"name": "d", "block": "/dev/null"}])) is None  # a disk: never from a pool
        assert pool.take(spec()) is slot and pool.ready == []
    finally:
        await none.close(remove_rules=True)


# ---- the bridge provider, with real links and nftables in a namespace of the test's own ---------------------------

def links(kind: str = "") -> str:
    return subprocess.run(["ip", "-o", "link", "show", *(["type", kind] if kind else [])], capture_output=True,
                          text=True).stdout


async def tables() -> str:
    proc = await asyncio.create_subprocess_exec("nft", "list", "tables", stdout=subprocess.PIPE)
    return (await proc.communicate())[0].decode()


async def bridge_scenario(home: Path) -> None:
    """Runs inside the namespace (see test_bridge_premade_taps_...): a pool's tap from premake to a pod's detach,
    across a new hyperd that adopts that pod, and a failed attach that gives its premade tap back."""
    db = home / "db"
    net = await started("bridge", db)
    p = net.default
    assert isinstance(p, BridgeProvider) and net.mode == "bridge"
    spare = await p.premake("0123456789abcdef")
    assert spare == "hcpool01234567" and f"{spare}: " in links() and "master hyper0" in links().split(spare)[1]
    await net.reconcile(set())  # a spare no pod took yet is not a leftover
    assert spare in links() and "pod_" not in await firewall.rules("bridge")  # it sends nothing (hc* drop)
    att = await net.attach(A, spec(ports=[{"container_port": 80, "host_port": 8080}]), tap=spare)
    assert att is not None and att.tap == spare and spare not in p.spares
    assert f"jump pod_{spare}" in await firewall.rules("bridge")

    net2 = await started("bridge", db)  # hyperd restarted: it adopts A and reconciles what the first one left
    subprocess.run(["ip", "tuntap", "add", "hcdeadbeef0000", "mode", "tap"], check=True)
    assert net2.adopt(A, att.to_dict()) == att
    await net2.reconcile({A})
    assert spare in links() and "hcdeadbeef0000" not in links()  # the pool pod's tap is kept, the leftover is not
    rules = await firewall.rules("bridge")
    assert f"jump pod_{spare}" in rules and "dport 8080 dnat to 10.77.0.2:80" in await firewall.rules("ip"), rules

    spare2 = await net2.default.premake("fedcba9876543210")
    assert spare2 is not None
    with socket.socket() as holder:  # B's host port is taken: its attach fails and leaves nothing, its tap included
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        try:
            await net2.attach(B, spec(ports=[{"container_port": 80, "host_port": port, "host_ip": "127.0.0.1"}]),
                              tap=spare2)
            raise AssertionError("attach succeeded on a port in use")
        except Conflict:
            pass
    assert spare2 not in links() and B not in net2.leases.all() and spare2 not in await firewall.rules("bridge")

    await net2.detach(A)
    assert spare not in links() and net2.leases.all() == {} and "pod_" not in await firewall.rules("bridge")
    assert links("tun") == ""
    await net2.close(remove_rules=True)
    await net.close(remove_rules=False)
    assert await tables() == ""


def test_bridge_premade_taps_across_a_restart_and_a_failed_attach(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    ns = Netns(f"hct-prov-{os.getpid()}")
    try:
        code = ("import asyncio, sys; from pathlib import Path; from tests.test_network_providers import "
                "bridge_scenario; asyncio.run(bridge_scenario(Path(sys.argv[1]))); print('ok')")
        r = ns.run(sys.executable, "-c", code, str(tmp_path), cwd=REPO)
        assert r.stdout.decode().strip() == "ok", r.stderr.decode()[-3000:]
    finally:
        ns.delete()
