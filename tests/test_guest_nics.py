"""A VM with several NICs, each configured by the guest agent (IPv4 and IPv6 addresses, MTU, routes), on taps that
live in a network namespace other than this process's: real QEMU, real agent, real namespace, driven through the
pod core (Pod with its real VM parts). The network is given to the pod as an Attachment, the form every network
provider hands a pod (the namespace provider makes such attachments from an engine's namespace; here the namespace
and its taps are the test's own, the namespace's side of each tap holding the addresses the guest pings).

    namespace hct-nics-PID           guest
    nic0 192.0.2.1/24 2001:db8::1/64    <->  192.0.2.2/24 192.0.2.3/24 2001:db8::2/64, routes ::/0 and 0.0.0.0/0
    nic1 203.0.113.1/24 2001:db8:1::1/64 <-> 203.0.113.2/24 2001:db8:1::2/64, MTU 1400, routes to 10.98/16 (on
                                             the link), 10.99/16, 2001:db8:98::/48 (on the link), 2001:db8:99::/48
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from hypercontainer.errors import InvalidArgument
from hypercontainer.network.attachment import Attachment, Interface, Route
from hypercontainer.pod.container import Container
from hypercontainer.pod.pod import GuestAssets, Pod
from hypercontainer.pod.states import PodState
from hypercontainer.pod.templates import Template, Templates
from hypercontainer.protocol.agent import AgentRequestError, PodRequest
from hypercontainer.spec.pod import PodSpec

from .guest import guest_parts
from .netns import Netns, sh

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, taps and QEMU need root"),
              pytest.mark.timeout(600)]

M0, M1 = "02:68:63:aa:00:01", "02:68:63:aa:00:02"
TAPS = {"nic0": ("192.0.2.1/24", "2001:db8::1/64"), "nic1": ("203.0.113.1/24", "2001:db8:1::1/64")}


@pytest.fixture(scope="module")
def lan():
    ns = Netns(f"hct-nics-{os.getpid()}")
    try:
        for tap, addrs in TAPS.items():
            sh("ip", "-n", ns.name, "tuntap", "add", "dev", tap, "mode", "tap")
            for a in addrs:
                sh("ip", "-n", ns.name, "addr", "add", a, "dev", tap, "nodad")
            sh("ip", "-n", ns.name, "link", "set", tap, "up")
        sh("ip", "-n", ns.name, "link", "set", "nic1", "mtu", "1400")
        yield ns
    finally:
        ns.delete()


@pytest.fixture(scope="module")
def guest(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return guest_parts(busybox_tar, tmp_path_factory, "sha256:" + "1" * 64)


class GivenNetwork:
    """hyperd's Network as the pod uses it, handing the pod the attachment it was given."""

    def __init__(self, att: Attachment) -> None:
        self.att = att
        self.detached: list[str] = []

    def provider_for(self, spec: PodSpec) -> SimpleNamespace:
        return SimpleNamespace(nic=True)

    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None,
                     owner: str | None = None) -> Attachment:
        return self.att

    async def detach(self, pod_id: str) -> None:
        self.detached.append(pod_id)


class NoTemplate:
    """A template that is 'ready' but does not exist: a pod that tried to clone it would fail (and fall back)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def ready(self, cpus: int, memory: int, nic: bool = True) -> Template:
        return Template(self.home)


def make_pod(tmp: Path, guest: SimpleNamespace, att: Attachment, boot: str, templates: object) -> Pod:
    spec = PodSpec.model_validate({"name": "nics", "hostname": "nics", "boot": boot, "containers": [
        {"name": "c", "image": "busybox", "command": ["sleep", "600"]}]})
    (tmp / "state" / "logs").mkdir(parents=True)
    c = Container(spec.containers[0], guest.image, stream=2, log_path=tmp / "state" / "logs" / "c.log")
    a = guest.assets
    return Pod("e" * 64, "nics", spec, [c], tmp / "state", tmp / "run" / "pod",
               GuestAssets(a.kernel, a.initrd, guest.accel), network=GivenNetwork(att),  # type: ignore[arg-type]
               templates=templates, boot=boot)  # type: ignore[arg-type]


async def run_in(pod: Pod, script: str) -> tuple[str, int]:
    p = await pod.exec(None, ["sh", "-c", script])

    async def drain(q: asyncio.Queue) -> bytes:
        out = b""
        while (chunk := await q.get()) is not None:
            out += chunk
        return out

    out, err = await asyncio.wait_for(asyncio.gather(drain(p.stdout), drain(p.stderr)), 120)
    return (out + err).decode(), await asyncio.wait_for(p.exit, 10)


def iface_names(listing: str) -> dict[str, tuple[str, int]]:
    """MAC -> (name, MTU) from lines 'NAME MAC MTU'."""
    return {m: (n, int(mtu)) for n, m, mtu in (line.split() for line in listing.splitlines() if line.count(" ") == 2)}


LIST_IFACES = "for d in /sys/class/net/*; do echo ${d##*/} $(cat $d/address) $(cat $d/mtu); done"


async def two_nics(tmp: Path, guest: SimpleNamespace, ns: Netns) -> None:
    att = Attachment(
        mode="namespace", mac=M0, address="192.0.2.2", prefixlen=24, gateway="192.0.2.1", dns=["192.0.2.53"],
        netns=str(ns.path),
        interfaces=[Interface(M0, "nic0", ("192.0.2.2/24", "192.0.2.3/24", "2001:db8::2/64")),
                    Interface(M1, "nic1", ("203.0.113.2/24", "2001:db8:1::2/64"), mtu=1400)],
        routes=[Route("::/0", "2001:db8::1"),  # no MAC: the first NIC's
                Route("10.98.0.0/16", None, M1), Route("10.99.0.0/16", "203.0.113.1", M1),
                Route("2001:db8:98::/48", None, M1), Route("2001:db8:99::/48", "2001:db8:1::1", M1)])
    events: list[str] = []
    # Asked for a template start: the template VM has one NIC, so the pod boots cold (never tries the clone).
    pod = make_pod(tmp, guest, att, "template", NoTemplate(tmp / "no-template"))
    pod.on_event.append(lambda p, action, attrs: events.append(action))
    await pod.start()
    try:
        assert pod.state == PodState.RUNNING and pod.booted_from == "cold" and "template-fallback" not in events
        assert pod.machine and pod.agent
        assert [(n.mac, n.tap, n.netns) for n in pod.machine.cfg.nics] == [  # both taps, in order
            (M0, "nic0", str(ns.path)), (M1, "nic1", str(ns.path))]
        info = pod.info()["network"]
        assert info["mac"] == M0 and info["ip"] == "192.0.2.2" and info["netns"] == str(ns.path)
        assert [(i["mac"], i["tap"], i["mtu"]) for i in info["interfaces"]] == [(M0, "nic0", None),
                                                                                (M1, "nic1", 1400)]
        assert info["routes"][0] == {"dst": "0.0.0.0/0", "via": "192.0.2.1", "mac": M0}

        listing, code = await run_in(pod, LIST_IFACES)
        assert code == 0, listing
        names = iface_names(listing)
        (e0, mtu0), (e1, mtu1) = names[M0], names[M1]
        assert (mtu0, mtu1) == (1500, 1400), listing
        out, code = await run_in(pod, f"""
            ip -o addr show; echo ==; ip route; echo ==; ip -6 route; echo ==
            for i in {e0} {e1}; do cat /proc/sys/net/ipv6/conf/$i/accept_dad /proc/sys/net/ipv6/conf/$i/accept_ra; done
            echo ==
            ping -c 1 -W 5 192.0.2.1 >/dev/null && echo ping4-0
            ping -c 1 -W 5 203.0.113.1 >/dev/null && echo ping4-1
            ping6 -c 1 -W 5 2001:db8::1 >/dev/null && echo ping6-0
            ping6 -c 1 -W 5 2001:db8:1::1 >/dev/null && echo ping6-1
            ping -c 1 -W 5 -s 1372 203.0.113.1 >/dev/null && echo ping-1400
        """)
        addrs, routes4, routes6, sysctls, pings = (part.strip() for part in out.split("=="))
        for name, cidr in ((e0, "inet 192.0.2.2/24"), (e0, "inet 192.0.2.3/24"), (e0, "inet6 2001:db8::2/64"),
                           (e1, "inet 203.0.113.2/24"), (e1, "inet6 2001:db8:1::2/64")):
            assert re.search(rf"^\d+: {name}\s+{re.escape(cidr)} ", addrs, re.M), (name, cidr, addrs)
        assert "tentative" not in addrs, addrs  # no duplicate address detection: usable at once
        assert f"default via 192.0.2.1 dev {e0}" in routes4, routes4
        assert f"10.99.0.0/16 via 203.0.113.1 dev {e1}" in routes4 and f"10.98.0.0/16 dev {e1}" in routes4, routes4
        assert re.search(rf"^default via 2001:db8::1 dev {e0}", routes6, re.M), routes6
        assert f"2001:db8:99::/48 via 2001:db8:1::1 dev {e1}" in routes6, routes6
        assert f"2001:db8:98::/48 dev {e1}" in routes6, routes6
        assert sysctls.split() == ["0"] * 4, sysctls
        assert pings.split() == ["ping4-0", "ping4-1", "ping6-0", "ping6-1", "ping-1400"], out
        # ... and from the namespace's side
        for addr in ("192.0.2.3", "2001:db8::2", "2001:db8:1::2"):
            r = ns.run("busybox", "ping6" if ":" in addr else "ping", "-c", "1", "-W", "5", addr)
            assert r.returncode == 0, (addr, r.stdout, r.stderr)

        # A START_POD whose interface is on no NIC fails, naming the MAC: with two ethernet interfaces the agent
        # never guesses (the template trick applies to one interface and one entry only).
        with pytest.raises(AgentRequestError) as e:
            await pod.agent.start_pod(PodRequest(net_if=("02:68:63:aa:00:99 0 10.1.0.2/24",)))
        assert e.value.errno == errno.ENODEV and "no network interface with MAC 02:68:63:aa:00:99" in e.value.message
        # ... and one whose route cannot be added fails naming the route.
        with pytest.raises(AgentRequestError) as e:
            await pod.agent.start_pod(PodRequest(net_if=(f"{M1} 1400 203.0.113.2/24",),
                                                 net_route=(f"10.50.0.0/16 172.16.0.1 {M1}",)))
        assert e.value.errno == errno.ENETUNREACH, e.value.message
        assert e.value.message.startswith(f"route 10.50.0.0/16 via 172.16.0.1 dev {e1} ({M1}): "), e.value.message
    finally:
        await pod.stop()
    assert pod.network.detached == [pod.id]  # type: ignore[union-attr]
    assert not pod.rundir.exists()


async def clone_on_a_namespace_tap(tmp: Path, guest: SimpleNamespace, ns: Netns) -> None:
    """A template clone (its QEMU handed the tap opened in the namespace) with one NIC: the guest's interface
    carries the template's MAC and takes the pod's; IPv6 and IPv4 work at once."""
    a = guest.assets
    templates = Templates(a.kernel, a.initrd, guest.accel, a.digest, tmp / "templates", tmp / "run" / "templates")
    await templates.get(1, 256, True)
    att = Attachment(mode="namespace", mac=M1, address="203.0.113.2", prefixlen=24, gateway="", dns=[],
                     netns=str(ns.path),
                     interfaces=[Interface(M1, "nic1", ("203.0.113.2/24", "2001:db8:1::2/64"), mtu=1400)],
                     routes=[Route("0.0.0.0/0", "203.0.113.1", M1), Route("::/0", "2001:db8:1::1", M1)])
    pod = make_pod(tmp, guest, att, "template", templates)
    await pod.start()
    try:
        assert pod.booted_from not in (None, "cold")
        listing, code = await run_in(pod, LIST_IFACES)
        names = iface_names(listing)
        assert code == 0 and set(names) == {M1, "00:00:00:00:00:00"} and names[M1][1] == 1400, listing
        name = names[M1][0]
        out, code = await run_in(pod, """ip -o addr show; ip route; ip -6 route
            ping -c 1 -W 5 203.0.113.1 >/dev/null && echo ping4
            ping6 -c 1 -W 5 2001:db8:1::1 >/dev/null && echo ping6""")
        assert "inet 203.0.113.2/24" in out and "inet6 2001:db8:1::2/64" in out and "tentative" not in out
        assert f"default via 203.0.113.1 dev {name}" in out and f"default via 2001:db8:1::1 dev {name}" in out
        assert out.split()[-2:] == ["ping4", "ping6"], out
    finally:
        await pod.stop()


@pytest.fixture
def short_tmp():
    """A short path: QEMU's unix sockets live below it (108 bytes at most)."""
    d = Path(tempfile.mkdtemp(prefix="hc-nics-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_two_nics_in_a_namespace(lan: Netns, guest: SimpleNamespace, short_tmp: Path) -> None:
    asyncio.run(two_nics(short_tmp, guest, lan))


def test_template_clone_on_a_namespace_tap(lan: Netns, guest: SimpleNamespace, short_tmp: Path) -> None:
    asyncio.run(clone_on_a_namespace_tap(short_tmp, guest, lan))


def test_a_tap_in_another_namespace_is_opened_there(lan: Netns) -> None:
    """confine.open_tap enters the namespace on a thread of its own: this thread's namespace stays, and a tap that
    is not there is an error naming it and the namespace."""
    from hypercontainer.vm import confine

    before = os.readlink("/proc/thread-self/ns/net")
    fd = confine.open_tap("nic0", str(lan.path))
    try:
        assert os.readlink("/proc/thread-self/ns/net") == before
        with pytest.raises(OSError, match=rf"tap nic0 in {lan.path}: .*busy"):  # one fd per (single-queue) tap
            confine.open_tap("nic0", str(lan.path))
    finally:
        os.close(fd)
    with pytest.raises(OSError, match=rf"tap nosuch in {lan.path}: No such device"):  # never made by opening it
        confine.open_tap("nosuch", str(lan.path))
    assert "nosuch" not in lan.links()
    with pytest.raises(InvalidArgument, match="network namespace /nonexistent: No such file"):
        confine.open_tap("nic0", "/nonexistent")


@pytest.mark.parametrize("kind", ["template", "pool"])
async def test_a_pod_with_two_nics_never_takes_a_one_nic_vm(tmp_path: Path, kind: str) -> None:
    """With test_pod_start's fake VM parts: a template VM has one NIC, and how many a pod needs is known only once
    its network is attached. A clone not started yet gives way to a cold boot at once (no restore, no fallback
    event); a pool VM, already running, is stopped and the pod boots cold (template-fallback)."""
    from .test_pod_start import Ledger, finish
    from .test_pod_start import make_pod as make_fake_pod

    ledger = Ledger(fail_at="never")
    pod = make_fake_pod(tmp_path, kind, ledger)
    pod.network = GivenNetwork(Attachment(  # type: ignore[assignment]
        mode="namespace", mac=M0, address="192.0.2.2", prefixlen=24, gateway="", dns=[], netns="/run/netns/x",
        interfaces=[Interface(M0, "nic0", ("192.0.2.2/24",)), Interface(M1, "nic1", ("203.0.113.2/24",))]))
    events: list[str] = []
    pod.on_event.append(lambda p, action, attrs: events.append(action))
    await pod.start()
    assert pod.state == PodState.RUNNING and pod.booted_from == "cold"
    assert ("template-fallback" in events) == (kind == "pool") and "restore" not in ledger.seen
    assert ledger.seen[-6:] == ["share", "spawn", "connect", "handshake", "start_pod", "new_container"]
    await finish(pod, ledger)
    assert ledger.live == set()
