"""Network `namespace`: the pod's VM joins a network namespace a container engine made (podman/CNI, dockerd,
containerd), the way Kata does it. The namespace already holds the container's interfaces (usually one veth),
addresses and routes, and around it the engine made bridges, NAT and port mappings; the guest takes over each
interface's MAC, addresses, MTU and routes, so it owns the namespace's addresses and all of that works unchanged.

For each carried interface (see below), a tap is made INSIDE the namespace and joined to the interface both ways
with tc: an ingress qdisc on each and a filter `u32 match u8 0 0 action mirred egress redirect dev OTHER` (what
the interface receives leaves through the tap to QEMU; what the guest sends leaves through the interface). The
namespace's own stack never sees those frames; its interfaces keep their addresses and state.

Why tc redirect and not a macvtap (this kernel can make both; `matchall` is not built in, u32 is): the guest must
keep the interface's MAC (the engine's bridge, the peer's ARP caches and the port mappings know it), and a macvtap
shares its lower device's MAC only in passthru mode, which turns promiscuity on for the interface (it would not be
as it was while the pod runs) and takes all its traffic whether a VM is attached or not; and a macvtap's queue is
a character device /dev/tap<ifindex>, named by an index that is only unique per namespace. The tc pair touches the
interface only by a qdisc and a filter that go with the pod, works on any Ethernet interface, and is Kata's
default; it needs tun, sch_ingress, cls_u32 and act_mirred.

What is carried: every interface of the namespace that is up (admin up), other than loopback and our own taps, and
that is Ethernet (ARPHRD_ETHER, with a MAC). Down interfaces are left alone (the fallback tunnel devices a new
namespace gets, tunl0/sit0/gretap0..., are down). An up interface that is not Ethernet (a tun device, a tunnel) is
an error: the VM could not carry it and the pod would miss traffic it was meant to get. The guest gets:
  - addresses: IPv4 all; IPv6 those configured (IFA_F_PERMANENT), except link-local fe80::/10 (the guest derives
    its own from the same MAC) and what the kernel made from router advertisements (temporary/dynamic ones: the
    guest receives the same advertisements);
  - routes of the main table that go out a carried interface: defaults (v4 and v6), via a gateway, and on the
    link, except the kernel's connected-subnet routes (proto kernel: the guest makes them from the address
    prefixes) and router-advertised ones (proto ra); multipath and nexthop-object routes are skipped (logged).
    On-link routes come first (a gateway may be reachable only through one), defaults last. The attachment's
    `gateway` is "": every route, the defaults included, is in `routes` with the MAC of its interface;
  - the MTU of each interface (the tap gets it too).

Our taps are `nshc<ifindex of the carried interface>` (14 characters at most), tun devices with IFF_TAP|IFF_NO_PI
(|IFF_VNET_HDR where the kernel has it), single queue, persistent, no owner (hyperd opens them inside the namespace
and hands QEMU the fd, as bridge taps), IPv6 address generation off (the namespace's stack sends nothing through
them). The tap is made first and records in its alias (`hypercontainer: carries IFINDEX qdisc ours|theirs`) what is
done for it, before anything else changes: the namespace itself is the journal, so `unplug()` needs nothing but
the path (and, optionally, the tap names) to undo a plug that a killed hyperd or runv shim left half done. The
interface's ingress qdisc is removed only if we added it (an engine's ingress or clsact qdisc stays, with its
filters: ours has its own priority, PRIO).

hyperd keeps what each pod holds (namespace path and identity, taps) in its sqlite database (table netns_pods):
adopt() takes a live pod over, reconcile() unplugs those of pods that are gone. Not poolable (a pool VM's QEMU
started before the namespace was known; microvm has no hotplug); template clones are fine (the tap exists, and is
opened, before their QEMU starts).

Namespaces are entered from a short-lived thread (nsenter.run_in: setns moves that thread only; ~2 ms per entry
with the netlink socket, measured) with pyroute2's IPRoute made inside it. pyroute2's own `IPRoute(netns=PATH)`
forks a child per socket (~10 ms) and by default creates a namespace that does not exist; `ip netns exec` remounts
/sys. Refused: hyperd's own namespace when it holds hyperd's bridge, and pid 1's (the host's interfaces).

Runtimes that carry a namespace without hyperd (runv) call `unplug(path, taps)` after a shim was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import re
import socket
import sqlite3
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import nsenter
from ..errors import Conflict, HCError, InvalidArgument
from ..spec.pod import PodSpec
from .attachment import Attachment, Interface, Mode, Route, host_nameservers

log = logging.getLogger(__name__)

TAP_PREFIX = "nshc"
PRIO = 0xC0DE  # our filters' priority (49374), on the interface's ingress and the tap's
ALIAS = re.compile(r"^hypercontainer: carries (\d+) qdisc (ours|theirs)$")
SCHEMA = ("CREATE TABLE IF NOT EXISTS netns_pods (pod_id TEXT PRIMARY KEY, netns TEXT NOT NULL, "
          "ns_dev INTEGER NOT NULL, ns_ino INTEGER NOT NULL, taps TEXT NOT NULL)")

NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: the namespace's CLONE_NEW* type
TUNSETIFF, TUNSETPERSIST, TUNGETFEATURES = 0x400454CA, 0x400454CB, 0x800454CF
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_TUN_EXCL = 0x0002, 0x1000, 0x4000, 0x8000
IFF_UP = 0x1
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_PERMANENT = 0x01, 0x08, 0x80
RTN_UNICAST, RTPROT_KERNEL, RTPROT_RA = 1, 2, 9
RT_TABLE_MAIN = 254
TC_INGRESS = 0xFFFFFFF1  # where an ingress/clsact qdisc sits
TC_INGRESS_FILTERS = 0xFFFFFFF2  # the ingress hook's filters, for an ingress qdisc and for clsact alike
ETH_P_ALL = 0x0003
GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)


@dataclass(frozen=True)
class Carried:
    """One interface of the namespace and the tap that carries it into the VM."""

    ifindex: int
    ifname: str
    mac: str
    mtu: int
    addresses: tuple[str, ...]
    tap: str
    qdisc_ours: bool  # the interface had no ingress qdisc: we add one (and remove it)


@dataclass
class Held:
    """What one pod holds in one namespace: hyperd's record of it (netns_pods)."""

    netns: str
    ns_id: tuple[int, int]  # st_dev, st_ino of the namespace: /proc/PID/ns/net paths can be reused
    taps: list[str]
    fd: int | None = field(default=None, compare=False)  # the namespace, held open while the pod runs


# ---- entering a namespace ---------------------------------------------------------------------------------
def open_netns(path: str) -> int:
    """An fd of the network namespace at `path`; InvalidArgument naming the path if it does not exist or is not a
    network namespace (never opens a device or FIFO: only nsfs files, which stat as empty regular files)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidArgument(f"network namespace {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{path} is not a network namespace")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise InvalidArgument(f"network namespace {path}: {e.strerror}") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1  # ENOTTY: a file, not a namespace
    if kind != nsenter.CLONE_NEWNET:
        os.close(fd)
        raise InvalidArgument(f"{path} is not a network namespace")
    return fd


def ns_identity(fd_or_path: int | str) -> tuple[int, int]:
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    return st.st_dev, st.st_ino


def _ipr() -> Any:
    """An IPRoute whose netlink socket is made in the calling thread's namespace."""
    from pyroute2 import IPRoute

    return IPRoute()


def _in_ns(fd: int, fn: Callable[[Any], Any]) -> Any:
    """fn(ipr) on a thread inside the namespace `fd`, with a netlink socket there."""
    def body() -> Any:
        with _ipr() as ip:
            return fn(ip)
    return nsenter.run_in(fd, body)


# ---- reading the namespace ----------------------------------------------------------------------------------
def _kind(link: Any) -> str | None:
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind else None


def _ours(link: Any) -> bool:
    name = link.get_attr("IFLA_IFNAME") or ""
    return _kind(link) == "tun" and name.startswith(TAP_PREFIX)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _addresses(ip: Any, index: int) -> tuple[str, ...]:
    out = []
    for a in ip.get_addr(index=index):
        family = a["family"]
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        flags = a.get_attr("IFA_FLAGS") or a["flags"]
        if not addr or family not in (socket.AF_INET, socket.AF_INET6):
            continue
        if family == socket.AF_INET6 and (ipaddress.IPv6Address(addr).is_link_local or not flags & IFA_F_PERMANENT
                                          or flags & (IFA_F_TEMPORARY | IFA_F_DADFAILED)):
            continue
        out.append(f"{addr}/{a['prefixlen']}")
    return tuple(out)


def _routes(ip: Any, macs: dict[int, str], path: str) -> list[Route]:
    """The main table's routes out the carried interfaces, on-link first, defaults last."""
    found: list[Route] = []
    for family, any_ in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for r in ip.get_routes(family=family, table=RT_TABLE_MAIN):
            if r["type"] != RTN_UNICAST or r["proto"] in (RTPROT_KERNEL, RTPROT_RA):
                continue
            table = r.get_attr("RTA_TABLE")
            if table is not None and table != RT_TABLE_MAIN:
                continue
            dst = f"{r.get_attr('RTA_DST') or any_}/{r['dst_len']}"
            if r.get_attr("RTA_MULTIPATH") or r.get_attr("RTA_NH_ID") or r.get_attr("RTA_VIA"):
                log.warning("network namespace %s: route %s not carried (multipath or nexthop object)", path, dst)
                continue
            oif = r.get_attr("RTA_OIF")
            if oif not in macs:
                continue
            found.append(Route(dst, r.get_attr("RTA_GATEWAY"), macs[oif]))
    return sorted(found, key=lambda rt: (rt.via is not None, rt.dst in ("0.0.0.0/0", "::/0")))


def inspect(ip: Any, path: str) -> tuple[list[Carried], list[Route]]:
    """What the namespace's interfaces and routes would give a VM; nothing changes. InvalidArgument where an
    interface cannot be carried or none can; Conflict where a tap of ours is there already (another VM's)."""
    links = ip.get_links()
    taken = sorted(link.get_attr("IFLA_IFNAME") for link in links if _ours(link))
    if taken:
        raise Conflict(f"network namespace {path} is already joined by a VM (tap {', '.join(taken)} in it)")
    carried = []
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        if link["ifi_type"] == ARPHRD_LOOPBACK or not link["flags"] & IFF_UP:
            continue
        mac = (link.get_attr("IFLA_ADDRESS") or "").lower()
        if link["ifi_type"] != ARPHRD_ETHER or not mac or mac == "00:00:00:00:00:00":
            raise InvalidArgument(f"network namespace {path}: interface {name} ({_kind(link) or 'no kind'}) "
                                  "cannot be carried into a VM: it is not an Ethernet interface with a MAC")
        index = link["index"]
        has_ingress = any(q["parent"] == TC_INGRESS for q in ip.get_qdiscs(index=index))
        carried.append(Carried(index, name, mac, link.get_attr("IFLA_MTU") or 1500, _addresses(ip, index),
                               f"{TAP_PREFIX}{index}", not has_ingress))
    if not carried:
        raise InvalidArgument(f"network namespace {path} has no interface to carry into a VM "
                              "(an Ethernet interface, up, other than lo)")
    carried.sort(key=lambda c: _natural(c.ifname))
    return carried, _routes(ip, {c.ifindex: c.mac for c in carried}, path)


# ---- changing it --------------------------------------------------------------------------------------------
def _make_tap(name: str) -> None:
    """A persistent tap in the calling thread's namespace (tun devices live where /dev/net/tun was opened);
    IFF_TUN_EXCL: an existing device of that name is an error, never taken over."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4))[0]
        flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL | (IFF_VNET_HDR if features & IFF_VNET_HDR else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _redirect(ip: Any, src: int, dst: int) -> None:
    """Everything src receives leaves through dst."""
    ip.tc("add-filter", "u32", src, parent=TC_INGRESS_FILTERS, prio=PRIO, protocol=ETH_P_ALL, target=0,
          keys=["0x0/0x0+0"], action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": dst})


def plug(ip: Any, carried: list[Carried], path: str) -> None:
    """Taps and tc redirects for `carried`; on failure what was made goes (unplug) and HCError says what failed."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        for c in carried:
            step = f"tap {c.tap}"
            _make_tap(c.tap)
            tap = ip.link_lookup(ifname=c.tap)[0]
            ip.link("set", index=tap, IFLA_IFALIAS=f"hypercontainer: carries {c.ifindex} qdisc "
                                                   f"{'ours' if c.qdisc_ours else 'theirs'}", mtu=c.mtu,
                    IFLA_AF_SPEC={"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]})
            ip.link("set", index=tap, state="up")
            step = f"tc on {c.ifname}"
            if c.qdisc_ours:
                ip.tc("add", "ingress", c.ifindex, "ffff:")
            _redirect(ip, c.ifindex, tap)
            step = f"tc on {c.tap}"
            ip.tc("add", "ingress", tap, "ffff:")
            _redirect(ip, tap, c.ifindex)
    except (OSError, NetlinkError, IndexError) as e:
        why = os.strerror(e.code) if isinstance(e, NetlinkError) else getattr(e, "strerror", None) or str(e)
        try:
            unplug_here(ip, [c.tap for c in carried])
        except (OSError, NetlinkError) as e2:
            log.warning("network namespace %s: rolling back: %s", path, e2)
        raise HCError(f"network namespace {path}: cannot carry {c.ifname} ({step}): {why}") from None


def _ignore_gone(fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    """fn(*args, **kw), a netlink call whose object may be gone already."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fn(*args, **kw)
    except NetlinkError as e:
        if e.code not in GONE:
            raise


def unplug_here(ip: Any, taps: Iterable[str] | None = None) -> list[str]:
    """Our taps (those named, else all of ours) in this namespace and what their aliases say was done for them:
    the redirect on the carried interface, its ingress qdisc if we added it and it holds no other filter. The tap
    goes last (its alias is the journal). Returns the taps removed."""
    wanted = set(taps) if taps is not None else None
    removed = []
    for link in ip.get_links():
        name = link.get_attr("IFLA_IFNAME")
        if not _ours(link) or (wanted is not None and name not in wanted):
            continue
        if m := ALIAS.match(link.get_attr("IFLA_IFALIAS") or ""):
            index, ours = int(m[1]), m[2] == "ours"
            # prio and protocol in tcmsg.info (pyroute2 fills it in only for a kind; info 0 would delete every
            # filter on the hook, the engine's too)
            _ignore_gone(ip.tc, "del-filter", index=index, parent=TC_INGRESS_FILTERS,
                         info=(PRIO << 16) | socket.htons(ETH_P_ALL))
            if ours and _ingress_left_empty(ip, index):
                _ignore_gone(ip.tc, "del", "ingress", index, "ffff:")
        _ignore_gone(ip.link, "del", index=link["index"])
        removed.append(name)
    return removed


def _ingress_left_empty(ip: Any, index: int) -> bool:
    """The interface has an ingress qdisc (not clsact: we never add one) with no filter left."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        qdiscs = [q for q in ip.get_qdiscs(index=index) if q["parent"] == TC_INGRESS]
        if not qdiscs or qdiscs[0].get_attr("TCA_KIND") != "ingress":
            return False
        return not ip.get_filters(index=index, parent=TC_INGRESS_FILTERS)
    except NetlinkError as e:
        if e.code in GONE:
            return False
        raise


def unplug(netns: str, taps: Iterable[str] | None = None) -> list[str]:
    """For runtimes whose process holding the plug was killed (runv's shim after kill -9): our taps in the
    namespace at `netns` (those named, else every tap of ours there) and the tc filters and qdiscs we added for
    them. A namespace that is gone is fine (nothing to do); a path that is not a namespace is InvalidArgument.
    Returns the taps removed."""
    try:
        fd = open_netns(netns)
    except InvalidArgument:
        if not os.path.exists(netns):
            return []
        raise
    try:
        names = list(taps) if taps is not None else None
        return list(_in_ns(fd, lambda ip: unplug_here(ip, names)))
    finally:
        os.close(fd)


def probe() -> str:
    """"" where namespaces can be carried (tun, ingress qdisc, u32 + mirred), else why not: tried in a namespace
    made for it on a thread of its own (it dies with the thread)."""
    def body() -> None:
        os.close(nsenter.unshare_net())
        with _ipr() as ip:
            _make_tap(TAP_PREFIX + "0")
            index = ip.link_lookup(ifname=TAP_PREFIX + "0")[0]
            ip.tc("add", "ingress", index, "ffff:")
            _redirect(ip, index, index)

    try:
        nsenter.run_in("/proc/self/ns/net", body)
    except Exception as e:
        from pyroute2.netlink.exceptions import NetlinkError

        return f"cannot make a tap with tc redirects: {os.strerror(e.code) if isinstance(e, NetlinkError) else e}"
    return ""


# ---- the provider -------------------------------------------------------------------------------------------
class NamespaceProvider:
    mode: Mode = "namespace"
    nic = True
    poolable = False  # a pool VM's QEMU started before the namespace was known; microvm has no hotplug

    def __init__(self, db: Path) -> None:
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db_lock = threading.Lock()
        self._lock = asyncio.Lock()
        self.pods: dict[str, Held] = {}
        self.reason = ""
        self._ready: bool | None = None  # probed on first use: hyperd's and runv's starts never pay for it
        self.protected: dict[tuple[int, int], str] = {}
        self.protect("/proc/1/ns/net", "the host's network namespace (pid 1's)")

    @property
    def ready(self) -> bool:
        if self._ready is None:
            self.reason = probe()
            self._ready = not self.reason
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    def protect(self, path: str, why: str) -> None:
        """A namespace no pod may take (hyperd's own where its bridge is; the host's)."""
        with contextlib.suppress(OSError):
            self.protected[ns_identity(path)] = why

    async def setup(self) -> None:
        pass

    # ---- pods ------------------------------------------------------------------------------------------------
    async def attach(self, pod_id: str, spec: PodSpec, tap: str | None = None) -> Attachment | None:
        path = spec.network_namespace
        if not path:
            raise InvalidArgument("network mode namespace needs a namespace path")
        if tap:
            raise InvalidArgument("a pod that joins a network namespace cannot use a VM made in advance")
        if spec.ports:
            raise InvalidArgument(f"ports cannot be published with network namespace {path}: the engine that made "
                                  "it maps its ports")
        await self.detach(pod_id)  # an earlier attempt's leftovers, if any
        async with self._lock:
            fd = open_netns(path)
            try:
                ns_id = ns_identity(fd)
                if ns_id in self.protected:
                    raise InvalidArgument(f"{path} is {self.protected[ns_id]}: it cannot be given to a pod")
                other = next((p for p, h in self.pods.items() if h.ns_id == ns_id), None)
                if other:
                    raise Conflict(f"network namespace {path} is already joined by pod {other[:12]}")
            except BaseException:
                os.close(fd)
                raise

            def work(ip: Any) -> tuple[list[Carried], list[Route]]:
                carried, routes = inspect(ip, path)
                self._record(pod_id, Held(path, ns_id, [c.tap for c in carried]))  # before anything is made
                plug(ip, carried, path)
                return carried, routes

            job = asyncio.ensure_future(asyncio.to_thread(_in_ns, fd, work))
            try:
                carried, routes = await asyncio.shield(job)
            except BaseException as e:
                if isinstance(e, asyncio.CancelledError):
                    await asyncio.wait([job])  # a thread cannot be cancelled: what it made goes with detach
                if job.done() and not job.cancelled() and job.exception() is None:
                    self.pods[pod_id] = Held(path, ns_id, [c.tap for c in job.result()[0]], fd)
                else:
                    self._forget(pod_id)  # plug() removed what it made
                    os.close(fd)
                raise
            self.pods[pod_id] = Held(path, ns_id, [c.tap for c in carried], fd)
        first = carried[0]
        v4 = [a for a in first.addresses if ":" not in a]
        address, _, plen = (v4 or list(first.addresses) or ["/0"])[0].partition("/")
        return Attachment("namespace", first.mac, address, int(plen), "", host_nameservers(), tap=first.tap,
                          routes=routes, mtu=first.mtu, netns=path,
                          interfaces=[Interface(c.mac, c.tap, c.addresses, c.mtu) for c in carried])

    def adopt(self, pod_id: str, att: Attachment) -> None:
        """The record of the pod's plug (else the attachment's), and the namespace held open again if it is still
        the one recorded."""
        held = self._load().get(pod_id)
        if held is None and att.netns:
            try:
                ident = ns_identity(att.netns)
            except OSError:
                ident = (0, 0)
            held = Held(att.netns, ident, [i.tap for i in att.nics() if i.tap])
            self._record(pod_id, held)
        if held is None:
            return
        held.fd = self._reopen(held)
        self.pods[pod_id] = held

    async def detach(self, pod_id: str) -> None:
        """The pod's taps and tc state go from its namespace, which is left as it was before attach. A namespace
        that is gone (or a path that names another one now) has nothing of ours left to remove."""
        held = self.pods.pop(pod_id, None) or self._load().get(pod_id)
        if held is None:
            return
        fd = held.fd if held.fd is not None else self._reopen(held)
        try:
            if fd is not None:
                await asyncio.to_thread(_in_ns, fd, lambda ip: unplug_here(ip, held.taps))
        except BaseException as e:
            held.fd = fd
            self.pods[pod_id] = held  # tried again at the next detach or reconcile
            if not isinstance(e, Exception):
                raise
            log.warning("pod %s: cleaning network namespace %s: %s", pod_id[:12], held.netns,
                        e.message if isinstance(e, HCError) else e)
            return
        if fd is not None:
            os.close(fd)
        self._forget(pod_id)

    async def reconcile(self, live: set[str]) -> None:
        """What pods that are gone left in their namespaces (a crashed hyperd's) goes."""
        for pod_id in (set(self.pods) | set(self._load())) - live:
            await self.detach(pod_id)

    async def premake(self, key: str) -> str | None:
        raise InvalidArgument("the namespace mode cannot serve pods from VMs made in advance")

    async def discard(self, tap: str) -> None:
        pass

    def info(self) -> dict[str, str | None]:
        return {}

    async def close(self, remove_rules: bool) -> None:
        """Pods left running keep their taps (the next hyperd adopts them)."""
        for held in self.pods.values():
            if held.fd is not None:
                os.close(held.fd)
                held.fd = None
        self.pods.clear()
        self._db.close()

    # ---- the record -------------------------------------------------------------------------------------------
    def _reopen(self, held: Held) -> int | None:
        try:
            fd = open_netns(held.netns)
        except InvalidArgument:
            return None
        if ns_identity(fd) != held.ns_id:
            os.close(fd)  # the path names another namespace now: ours is gone
            return None
        return fd

    def _record(self, pod_id: str, held: Held) -> None:
        with self._db_lock:
            self._db.execute("INSERT OR REPLACE INTO netns_pods VALUES (?, ?, ?, ?, ?)",
                             (pod_id, held.netns, held.ns_id[0], held.ns_id[1], json.dumps(held.taps)))

    def _forget(self, pod_id: str) -> None:
        with self._db_lock:
            self._db.execute("DELETE FROM netns_pods WHERE pod_id = ?", (pod_id,))

    def _load(self) -> dict[str, Held]:
        with self._db_lock:
            rows = self._db.execute("SELECT pod_id, netns, ns_dev, ns_ino, taps FROM netns_pods").fetchall()
        return {r[0]: Held(r[1], (r[2], r[3]), list(json.loads(r[4]))) for r in rows}
