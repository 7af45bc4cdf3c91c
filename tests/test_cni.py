"""CNI (network/cni): configurations (load order, malformed files, the default conflist and its installer), the
protocol as plugins see it (a recording plugin: environment, stdin, prevResult chaining, runtimeConfig, DEL order,
errors, the cache), then the real plugins (/usr/lib/cni: bridge, host-local, portmap, firewall, bandwidth,
loopback) in namespaces the tests make. Each of those tests has a "host" namespace of its own where the plugins run
(nsenter.run_in: processes started from that thread are born there), so the bridge, the iptables rules and the
sysctls stay inside it, plus its own conf dir, IPAM data dir, cache dir and namespace directory; nothing touches
/etc/cni/net.d or the host's network. `nsenter --net=PATH`, never `ip netns exec` (it remounts /sys)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hypercontainer import nsenter
from hypercontainer.errors import Conflict, InvalidArgument
from hypercontainer.network import cni
from hypercontainer.network.cni import CNIError, ConfigError

from . import netns as tnetns

T = TypeVar("T")
PLUGINS = Path("/usr/lib/cni")
root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
real = pytest.mark.skipif(not (PLUGINS / "bridge").exists(),
                          reason="the CNI plugins (Debian package containernetworking-plugins) are not installed")
_n = itertools.count()


# ---- configurations -------------------------------------------------------------------------------------------
def conflist(name: str = "net", version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "plugins": [{"type": "bridge"}], **extra}


def write(d: Path, name: str, doc: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_load_takes_the_first_valid_file_in_lexical_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "05-broken.conflist", "{not json")
    write(tmp_path, "10-noname.conflist", {"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]})
    write(tmp_path, "20-good.conflist", conflist("good"))
    write(tmp_path, "30-later.conflist", conflist("later"))
    write(tmp_path, "00-ignored.txt", conflist("txt"))  # not a configuration's extension
    conf = cni.load(tmp_path)
    assert (conf.name, conf.cni_version, conf.types) == ("good", "1.0.0", ["bridge"])
    assert conf.source == str(tmp_path / "20-good.conflist")
    assert "05-broken.conflist: not valid JSON" in caplog.text and "10-noname.conflist: missing `name`" in caplog.text
    assert cni.load(tmp_path, name="later").name == "later"


@pytest.mark.parametrize(("doc", "problem"), [
    ("[1]", "not a JSON object"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "`plugins` must be a non-empty list"),
    ({"cniVersion": "1.0.0", "name": "n"}, "neither `plugins`"),
    ({"cniVersion": "1.0.0", "name": "bad name", "plugins": [{"type": "bridge"}]}, "invalid network name"),
    ({"name": "n", "plugins": [{"type": "bridge"}]}, "missing `cniVersion`"),
    ({"cniVersion": "9.9.9", "name": "n", "plugins": [{"type": "bridge"}]}, "cniVersion '9.9.9' is not one"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]}, "invalid type '../../bin/sh'"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"ipam": {}}]}, "plugin 0 has no `type`"),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "capabilities": []}]}, "`capabilities` must"),
])
def test_malformed_configurations_are_named_with_their_problem(tmp_path: Path, doc: Any, problem: str) -> None:
    p = write(tmp_path, "10-x.conflist", doc)
    with pytest.raises(ConfigError) as e:
        cni.load_file(p)
    assert str(p) in e.value.message and problem in e.value.message
    with pytest.raises(ConfigError, match="no valid CNI network configuration") as e:
        cni.load(tmp_path)  # the only file is malformed: the error says why
    assert problem in e.value.message


def test_no_configuration_at_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no valid CNI network configuration in .* \(files ending"):
        cni.load(tmp_path / "missing")


def test_a_single_plugin_conf_becomes_a_list_of_one_and_cni_versions_picks_ours(tmp_path: Path) -> None:
    write(tmp_path, "10-one.conf", {"cniVersion": "0.4.0", "name": "one", "type": "bridge", "bridge": "b"})
    conf = cni.load(tmp_path)
    assert conf.plugins == ({"cniVersion": "0.4.0", "name": "one", "type": "bridge", "bridge": "b"},)
    multi = cni.parse({"cniVersions": ["0.4.0", "1.0.0", "1.1.0", "7.0.0"], "name": "m",
                       "plugins": [{"type": "bridge"}]})
    assert multi.cni_version == "1.1.0"


def test_the_default_conflist_and_its_installer(tmp_path: Path) -> None:
    conf = cni.default()
    assert conf.name == "hypercontainer" and conf.types == ["bridge", "portmap", "firewall", "bandwidth", "loopback"]
    bridge = conf.plugins[0]
    assert bridge["bridge"] == "hc-cni0" and bridge["ipam"]["ranges"] == [[{"subnet": "10.66.0.0/16"}]]
    assert bridge["isGateway"] and bridge["ipMasq"]
    d = tmp_path / "net.d"
    path = cni.install_default(d)
    assert path == d / "10-hypercontainer.conflist" and path.read_text() == cni.default_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and cni.load(d).name == "hypercontainer"
    path.unlink()
    theirs = write(d, "05-theirs.conflist", conflist("theirs"))
    assert cni.install_default(d) is None  # a configuration is there: left alone
    assert sorted(os.listdir(d)) == ["05-theirs.conflist"] and theirs.read_text() == json.dumps(conflist("theirs"))
    r = subprocess.run([sys.executable, "-m", "hypercontainer.network.cni", "install", "--conf-dir", str(d)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "already has a CNI configuration" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hypercontainer.network.cni", "install", "--conf-dir",
                        str(tmp_path / "empty")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "empty" / "10-hypercontainer.conflist").exists()


def test_results_of_every_shape() -> None:
    r = cni.Result.from_json({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "br"}, {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x", "mtu": 1400}],
        "ips": [{"address": "fd00::5/64", "interface": 2}, {"address": "10.66.0.5/16", "gateway": "10.66.0.1",
                                                           "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.1.0.0/16", "gw": "10.66.0.9"}],
        "dns": {"nameservers": ["10.66.0.1"], "search": ["svc.local"]}})
    assert r.pod_ips("eth0") == ["10.66.0.5", "fd00::5"] and r.gateway() == "10.66.0.1"
    assert r.interfaces[2] == cni.Interface("eth0", "aa:bb:cc:dd:ee:02", "/run/netns/x", 1400)
    assert r.routes[1] == cni.Route("10.1.0.0/16", "10.66.0.9") and r.dns.search == ("svc.local",)
    old = cni.Result.from_json({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                                "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}]})
    assert old.pod_ips() == ["10.0.0.2"]
    v02 = cni.Result.from_json({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.3/24", "gateway": "10.0.0.1",
                                                               "routes": [{"dst": "0.0.0.0/0"}]}})
    assert v02.pod_ips() == ["10.0.0.3"] and v02.routes == (cni.Route("0.0.0.0/0"),)
    with pytest.raises(cni.ResultError, match="names interface 4"):
        cni.Result.from_json({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 4}]})


def test_arguments_as_plugins_get_them() -> None:
    pairs = cni.cni_args("c1", cni.PodRef("ns", "pod", "uid-1"), {"EXTRA": "x"})
    assert pairs == [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "ns"), ("K8S_POD_NAME", "pod"),
                     ("K8S_POD_INFRA_CONTAINER_ID", "c1"), ("K8S_POD_UID", "uid-1"), ("EXTRA", "x")]
    with pytest.raises(InvalidArgument, match="';' and '='"):
        cni.cni_args("c1", None, {"A": "b;c"})
    caps = cni.capability_args([cni.PortMapping(8080, 80, "TCP", "127.0.0.1"), cni.PortMapping(0, 81)],
                               {"servers": ["10.0.0.1"], "searches": []}, cni.Bandwidth(1000, 0, 0, 0))
    assert caps == {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
                                      "hostIP": "127.0.0.1"}],
                    "dns": {"servers": ["10.0.0.1"]}, "bandwidth": {"ingressRate": 1000, "ingressBurst": 1000}}


# ---- the protocol, through a plugin that records what it gets ----------------------------------------------------
RECORDER = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
with open(conf.get("log") or os.devnull, "a") as f:
    f.write(json.dumps({{"cmd": cmd, "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
                        "conf": conf}}) + "\\n")
fail = (conf.get("fail") or {{}}).get(cmd)
if conf.get("fail_file") and os.path.exists(conf["fail_file"]) and cmd == "DEL":
    fail = {{"code": 11, "msg": "busy"}}
if fail:
    print(json.dumps(dict(cniVersion=conf.get("cniVersion"), **fail)))
    sys.exit(1)
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}}))
elif cmd == "ADD":
    print(json.dumps(conf.get("result") or conf.get("prevResult") or {{"cniVersion": conf["cniVersion"]}}))
"""
R1 = {"cniVersion": "1.0.0", "interfaces": [{"name": "host0", "mac": "aa:bb:cc:dd:ee:ff"}],
      "ips": [{"address": "10.66.9.2/24", "gateway": "10.66.9.1"}], "routes": [{"dst": "0.0.0.0/0"}]}


class Recorder:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "bin"
        self.dir.mkdir()
        script = self.dir / "rec-a"
        script.write_text(RECORDER.format(python=sys.executable))
        script.chmod(0o755)
        for name in ("rec-b", "rec-c"):
            (self.dir / name).symlink_to("rec-a")
        self.log = tmp / "calls.jsonl"
        self.cache = tmp / "cache"
        self.netns = "/proc/self/ns/net"  # a namespace (add() checks), never entered by these plugins

    def network(self, **plugin_extra: dict[str, Any]) -> cni.NetworkConfig:
        plugins = [{"type": "rec-a", "log": str(self.log), "result": R1},
                   {"type": "rec-b", "log": str(self.log), "capabilities": {"portMappings": True, "dns": False}},
                   {"type": "rec-c", "log": str(self.log)}]
        for p in plugins:
            p.update(plugin_extra.get(p["type"], {}))
        return cni.parse({"cniVersion": "1.0.0", "name": "rec", "plugins": plugins})

    def calls(self) -> list[dict[str, Any]]:
        calls = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return calls

    def kw(self) -> dict[str, Any]:
        return {"plugin_dirs": [self.dir], "cache_dir": self.cache}


@pytest.fixture
def rec(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path)


CAPS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "dns": {"servers": ["1.1.1.1"]}}


def test_add_chains_results_and_del_runs_backwards_with_the_cached_one(rec: Recorder) -> None:
    net = rec.network()
    result = cni.add(rec.netns, "c1", "eth0", net, CAPS, pod=cni.PodRef("ns", "pod", "u1"), **rec.kw())
    assert result.ips == (cni.IPConfig("10.66.9.2/24", "10.66.9.1"),) and result.raw == R1
    calls = rec.calls()
    assert [(c["cmd"], c["conf"]["type"]) for c in calls] == [("ADD", "rec-a"), ("ADD", "rec-b"), ("ADD", "rec-c")]
    assert calls[0]["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": rec.netns,
                               "CNI_IFNAME": "eth0", "CNI_PATH": str(rec.dir),
                               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;"
                                           "K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1"}
    assert all(c["conf"]["name"] == "rec" and c["conf"]["cniVersion"] == "1.0.0" for c in calls)
    assert "prevResult" not in calls[0]["conf"] and calls[1]["conf"]["prevResult"] == R1
    assert calls[2]["conf"]["prevResult"] == R1  # rec-b passed it on
    # runtimeConfig: only the capabilities a plugin declares true
    assert "runtimeConfig" not in calls[0]["conf"] and "runtimeConfig" not in calls[2]["conf"]
    assert calls[1]["conf"]["runtimeConfig"] == {"portMappings": CAPS["portMappings"]}

    cache = rec.cache / "results" / "rec-c1-eth0"
    entry = json.loads(cache.read_text())
    assert entry["kind"] == "cniCacheV1" and entry["result"] == R1 and entry["netns"] == rec.netns
    assert json.loads(base64.b64decode(entry["config"]))["plugins"][0]["type"] == "rec-a"
    assert [e.container_id for e in cni.attachments(rec.cache)] == ["c1"]
    with pytest.raises(Conflict, match="already attached"):
        cni.add(rec.netns, "c1", "eth0", net, **rec.kw())

    # DEL from the cache alone (no configuration given: what a restarted runtime does)
    assert cni.delete(rec.netns, "c1", "eth0", **rec.kw()) is True
    calls = rec.calls()
    assert [(c["cmd"], c["conf"]["type"]) for c in calls] == [("DEL", "rec-c"), ("DEL", "rec-b"), ("DEL", "rec-a")]
    assert all(c["conf"]["prevResult"] == R1 for c in calls)
    assert calls[1]["conf"]["runtimeConfig"] == {"portMappings": CAPS["portMappings"]}
    assert calls[0]["env"]["CNI_ARGS"].startswith("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns")
    assert not cache.exists() and cni.attachments(rec.cache) == []
    assert cni.delete(rec.netns, "c1", "eth0", **rec.kw()) is False  # nothing left to do
    assert rec.calls() == []
    # with the configuration given, DEL runs even with nothing cached (plugins treat it as a no-op)
    assert cni.delete(rec.netns, "c1", "eth0", net, **rec.kw()) is False
    assert [(c["cmd"], "prevResult" in c["conf"]) for c in rec.calls()] == [("DEL", False)] * 3


def test_a_failed_add_is_undone_by_del_of_what_ran(rec: Recorder) -> None:
    net = rec.network(**{"rec-b": {"fail": {"ADD": {"code": 7, "msg": "bad config", "details": "field x"}}}})
    with pytest.raises(CNIError) as e:
        cni.add(rec.netns, "c2", "eth0", net, CAPS, **rec.kw())
    assert (e.value.plugin, e.value.cni_code, e.value.msg, e.value.details) == ("rec-b", 7, "bad config", "field x")
    assert "plugin 'rec-b' failed (code 7: invalid network config): bad config: field x" in e.value.message
    assert "undone: DEL ran for rec-b, rec-a" in e.value.message
    calls = rec.calls()
    assert [(c["cmd"], c["conf"]["type"]) for c in calls] == [("ADD", "rec-a"), ("ADD", "rec-b"),
                                                              ("DEL", "rec-b"), ("DEL", "rec-a")]
    assert calls[2]["conf"]["prevResult"] == R1  # the last result there was
    assert cni.attachments(rec.cache) == []


def test_a_missing_plugin_is_named(rec: Recorder) -> None:
    net = cni.parse({"cniVersion": "1.0.0", "name": "rec", "plugins": [
        {"type": "rec-a", "log": str(rec.log), "result": R1}, {"type": "hc-no-such-plugin"}]})
    with pytest.raises(CNIError, match=r"plugin 'hc-no-such-plugin' failed: not found in .*bin.*undone: DEL ran"):
        cni.add(rec.netns, "c3", "eth0", net, **rec.kw())
    assert [(c["cmd"], c["conf"]["type"]) for c in rec.calls()] == [("ADD", "rec-a"), ("DEL", "rec-a")]
    assert cni.attachments(rec.cache) == []


def test_del_tolerates_container_unknown_and_keeps_the_entry_on_other_errors(rec: Recorder) -> None:
    unknown = rec.network(**{"rec-b": {"fail": {"DEL": {"code": 3, "msg": "no such container"}}}})
    cni.add(rec.netns, "c4", "eth0", unknown, **rec.kw())
    cni.delete(rec.netns, "c4", "eth0", unknown, **rec.kw())
    assert [c["cmd"] for c in rec.calls()] == ["ADD"] * 3 + ["DEL"] * 3 and cni.attachments(rec.cache) == []

    busy = rec.log.parent / "busy"
    flaky = rec.network(**{"rec-b": {"fail_file": str(busy)}})
    cni.add(rec.netns, "c5", "eth0", flaky, **rec.kw())
    busy.touch()
    with pytest.raises(CNIError, match=r"CNI DEL .* plugin 'rec-b' failed \(code 11: try again later\): busy"):
        cni.delete(rec.netns, "c5", "eth0", **rec.kw())
    assert [e.container_id for e in cni.attachments(rec.cache)] == ["c5"]  # kept for the retry
    busy.unlink()
    assert cni.delete(rec.netns, "c5", "eth0", **rec.kw()) is True
    assert [(c["cmd"], c["conf"]["type"]) for c in rec.calls()][-3:] == [("DEL", "rec-c"), ("DEL", "rec-b"),
                                                                         ("DEL", "rec-a")]
    assert cni.attachments(rec.cache) == []


def test_an_unfinished_add_is_deleted_before_the_next(rec: Recorder) -> None:
    net = rec.network()
    cni.add(rec.netns, "c6", "eth0", net, **rec.kw())
    cache = rec.cache / "results" / "rec-c6-eth0"
    entry = json.loads(cache.read_text())
    del entry["result"]  # as if the runtime died before the last plugin answered
    cache.write_text(json.dumps(entry))
    rec.calls()
    cni.add(rec.netns, "c6", "eth0", net, **rec.kw())
    calls = rec.calls()
    assert [c["cmd"] for c in calls] == ["DEL"] * 3 + ["ADD"] * 3
    assert all("prevResult" not in c["conf"] for c in calls[:3])  # no result known for it
    cni.delete(rec.netns, "c6", "eth0", **rec.kw())


def test_version_status_and_gc(rec: Recorder) -> None:
    net = rec.network()
    assert cni.version("rec-a", [rec.dir]) == cni.PluginVersion("1.0.0", ("0.4.0", "1.0.0"))
    cni.status(net, [rec.dir])
    newer = cni.parse({"cniVersion": "1.1.0", "name": "rec", "plugins": [{"type": "rec-a"}]})
    with pytest.raises(CNIError, match=r"plugin 'rec-a' failed \(code 1: incompatible CNI version\): speaks 0.4.0"):
        cni.status(newer, [rec.dir])
    with pytest.raises(CNIError, match="plugin 'nope' failed: not found"):
        cni.status(cni.parse({"cniVersion": "1.0.0", "name": "rec", "plugins": [{"type": "nope"}]}), [rec.dir])
    conf_dir = rec.log.parent / "net.d"
    assert cni.ready(conf_dir, [rec.dir]) == (False, f"no valid CNI network configuration in {conf_dir} "
                                                     "(files ending .conf, .conflist, .json)")
    write(conf_dir, "10-rec.conflist", net.to_json())
    assert cni.ready(conf_dir, [rec.dir]) == (True, "")
    write(conf_dir, "05-newer.conflist", newer.to_json())
    ok, why = cni.ready(conf_dir, [rec.dir])
    assert not ok and "incompatible CNI version" in why
    for cid in ("g1", "g2", "g3"):
        cni.add(rec.netns, cid, "eth0", net, **rec.kw())
    rec.calls()
    assert cni.gc(net, [("g2", "eth0")], **rec.kw()) == [("g1", "eth0"), ("g3", "eth0")]
    assert sorted({c["env"]["CNI_CONTAINERID"] for c in rec.calls()}) == ["g1", "g3"]
    assert [e.container_id for e in cni.attachments(rec.cache)] == ["g2"]


def test_bad_ids_and_namespaces_are_refused(rec: Recorder, tmp_path: Path) -> None:
    net = rec.network()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(tmp_path / "missing"), str(fifo), str(rec.log.parent / "bin" / "rec-a")):
        with pytest.raises(InvalidArgument, match="is not a network namespace"):
            cni.add(path, "c1", "eth0", net, **rec.kw())
    for cid, ifname in (("", "eth0"), ("-x", "eth0"), ("a/b", "eth0"), ("c", ""), ("c", "a" * 16), ("c", "e th"),
                        ("c", "..")):
        with pytest.raises(InvalidArgument):
            cni.add(rec.netns, cid, ifname, net, **rec.kw())
    assert rec.calls() == []


# ---- the Netns helper -----------------------------------------------------------------------------------------
@pytest.fixture
def netns_dir() -> Iterator[Path]:
    d = Path(f"/run/hct-cni-{os.getpid()}-{next(_n)}")
    yield d
    if d.exists():
        for p in d.glob("*"):
            cni.netns.remove(p)
        subprocess.run(["umount", str(d)], capture_output=True)
        d.rmdir()


def mountinfo(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if line.split()[4] == str(path)]


@root
def test_netns_create_and_remove(netns_dir: Path) -> None:
    ours = os.readlink("/proc/self/ns/net")
    ns = cni.Netns.create("a", netns_dir)
    assert ns.path == netns_dir / "a" and ns.exists and cni.is_netns(ns.path)
    assert cni.is_netns("/proc/self/ns/net") and not cni.is_netns("/proc/self/ns/mnt")
    assert any("shared:" in line for line in mountinfo(netns_dir))  # iproute2's way: the base is a shared mount
    assert len(mountinfo(ns.path)) == 1
    links = subprocess.run(["nsenter", f"--net={ns.path}", "ip", "-j", "link"], capture_output=True, text=True)
    (lo,) = json.loads(links.stdout)
    assert lo["ifname"] == "lo" and "UP" in lo["flags"]
    assert os.readlink("/proc/self/ns/net") == ours  # the process never moved: only the thread that made it
    with pytest.raises(Conflict, match="exists"):
        cni.Netns.create("a", netns_dir)
    with pytest.raises(InvalidArgument):
        cni.Netns.create("../x", netns_dir)
    ns.remove()
    assert not ns.path.exists() and not ns.exists and mountinfo(ns.path) == []
    ns.remove()  # already gone: fine
    cni.Netns(netns_dir / "never").remove()
    (netns_dir / "empty").touch()  # a file whose mount went: removed
    cni.Netns(netns_dir / "empty").remove()
    assert not (netns_dir / "empty").exists()


# ---- the real plugins -------------------------------------------------------------------------------------------
def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


class Host:
    """A namespace standing in for the host, where the plugins run, with a "world" beyond it (a veth): published
    ports are reached from there as from another machine."""

    ADDR, WORLD = "198.51.100.2", "198.51.100.1"

    def __init__(self, tmp: Path, netns_dir: Path) -> None:
        tag = f"{os.getpid()}-{next(_n)}"
        self.ns = tnetns.Netns(f"hct-cnih-{tag}")
        self.world = tnetns.Netns(f"hct-cniw-{tag}")
        sh("ip", "-n", self.ns.name, "link", "set", "lo", "up")
        sh("ip", "link", "add", "up0", "netns", self.ns.name, "type", "veth", "peer", "name", "down0", "netns",
           self.world.name)
        sh("ip", "-n", self.ns.name, "addr", "add", f"{self.ADDR}/24", "dev", "up0")
        sh("ip", "-n", self.ns.name, "link", "set", "up0", "up")
        sh("ip", "-n", self.world.name, "addr", "add", f"{self.WORLD}/24", "dev", "down0")
        sh("ip", "-n", self.world.name, "link", "set", "down0", "up")
        self.tmp, self.netns_dir = tmp, netns_dir
        self.conf_dir, self.ipam, self.cache = tmp / "net.d", tmp / "ipam", tmp / "cache"

    def run(self, fn: Callable[[], T]) -> T:
        """fn() on a thread in this host namespace: the plugins it starts are born there."""
        return nsenter.run_in(str(self.ns.path), fn)

    def network(self, name: str, subnet: str, extra: list[dict[str, Any]] | None = None,
                base: dict[str, Any] | None = None, **ranges: str) -> cni.NetworkConfig:
        """A conflist written to this test's conf dir and loaded back: bridge (with host-local on `subnet`, data in
        this test's IPAM dir) and `extra` after it; `base`: a whole conflist (the default one) to adapt."""
        doc = json.loads(json.dumps(base)) if base else {
            "cniVersion": "1.0.0", "name": name,
            "plugins": [{"type": "bridge", "bridge": "hct-br0", "isGateway": True, "ipMasq": True,
                         "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}]}}, *(extra or [])]}
        doc["name"] = name
        doc["plugins"][0]["ipam"].update(dataDir=str(self.ipam), ranges=[[{"subnet": subnet, **ranges}]])
        write(self.conf_dir, f"10-{name}.conflist", doc)
        return cni.load(self.conf_dir, name=name)

    def setup(self, sandbox: str, net: cni.NetworkConfig, **kw: Any) -> cni.Sandbox:
        return self.run(lambda: cni.setup_sandbox(sandbox, net, netns_dir=self.netns_dir, plugin_dirs=[PLUGINS],
                                                  cache_dir=self.cache, **kw))

    def teardown(self, sandbox: str, path: Path | None) -> None:
        self.run(lambda: cni.teardown_sandbox(sandbox, path, plugin_dirs=[PLUGINS], cache_dir=self.cache))

    def links(self) -> list[str]:
        return sorted(link["ifname"] for link in json.loads(sh("ip", "-n", self.ns.name, "-j", "link")))

    def rules(self) -> str:
        """Every iptables rule and chain of the host namespace (the plugins use iptables; nf_tables under it)."""
        return subprocess.run(["nsenter", f"--net={self.ns.path}", "iptables-save"], capture_output=True,
                              text=True, check=True).stdout

    def ipam_files(self, net: str) -> list[str]:
        d = self.ipam / net
        return sorted(n for n in os.listdir(d) if n[0].isdigit()) if d.exists() else []

    def close(self) -> None:
        self.world.delete()
        self.ns.delete()


@pytest.fixture
def host(tmp_path: Path, netns_dir: Path) -> Iterator[Host]:
    h = Host(tmp_path, netns_dir)
    yield h
    h.close()


def in_ns(path: Path | str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=timeout)


def ping(path: Path | str, address: str) -> bool:
    return in_ns(path, "busybox", "ping", "-c", "1", "-W", "3", address).returncode == 0


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_nothing_left(host: Host, sandbox: str, net: str, ip: str | None, path: Path | None) -> None:
    """No veth on the host's side, no IPAM allocation, no iptables rule or chain of this container, no cache
    entry, no namespace."""
    wait_for(lambda: not [n for n in host.links() if n.startswith(("veth", "bwp"))], "the host's veths to go")
    assert ip not in host.ipam_files(net)
    rules = host.rules()
    assert sandbox not in rules and (ip is None or ip not in rules), rules
    assert "CNI-DN-" not in rules  # portmap's per-container chains
    assert [e for e in cni.attachments(host.cache) if e.container_id == sandbox] == []
    if path is not None:
        assert not path.exists() and mountinfo(path) == []


@root
@real
def test_default_network_add_reaches_both_ways_and_del_removes_everything(host: Host) -> None:
    net = host.network("hct-default", "10.66.3.0/24", base=json.loads(cni.default_text()))
    caps = cni.capability_args(bandwidth=cni.Bandwidth(100_000_000, 0, 100_000_000, 0))
    sb = host.setup("sandbox1", net, pod=cni.PodRef("default", "web", "uid-1"), capability_args=caps)
    ip, gateway = sb.ips[0], "10.66.3.1"
    assert ip.startswith("10.66.3.") and sb.result.gateway() == gateway
    assert sb.netns.path == host.netns_dir / "cni-sandbox1" and cni.is_netns(sb.netns.path)
    (eth0,) = [i for i in sb.result.interfaces if i.sandbox]
    assert eth0.name == "eth0" and eth0.sandbox == str(sb.netns.path)

    addrs = json.loads(in_ns(sb.netns.path, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert addrs["address"] == eth0.mac
    assert f"{ip}/24" in [f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]]
    routes = json.loads(in_ns(sb.netns.path, "ip", "-j", "route").stdout)
    assert {"dst": "default", "gateway": gateway, "dev": "eth0"}.items() <= routes[0].items()
    assert "UP" in json.loads(in_ns(sb.netns.path, "ip", "-j", "link", "show", "lo").stdout)[0]["flags"]
    assert ping(host.ns.path, ip), "the host reaches the pod over the bridge"
    assert ping(sb.netns.path, gateway), "the pod reaches its gateway"
    assert ip in host.ipam_files("hct-default")
    rules = host.rules()
    assert "sandbox1" in rules and f"-d {ip}/32" in rules  # bridge's masquerade, the firewall's accepts
    assert any(n.startswith("bwp") for n in host.links())  # bandwidth's ifb for the egress limit
    tc = sh("tc", "-n", host.ns.name, "qdisc", "show")
    assert "tbf" in tc

    host.teardown("sandbox1", sb.netns.path)
    assert_nothing_left(host, "sandbox1", "hct-default", ip, sb.netns.path)
    assert "hc-cni0" in host.links()  # the bridge is the network's, shared by its pods: it stays
    host.teardown("sandbox1", sb.netns.path)  # again: idempotent


POD_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the pod\\n")
    c.close()
"""


def fetch_in(path: Path | str, address: str, port: int) -> str:
    code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); "
            "print(s.recv(100).decode(), end='')")
    r = in_ns(path, sys.executable, "-c", code, address, str(port))
    return r.stdout if r.returncode == 0 else f"failed: {r.stderr.strip()[-200:]}"


@root
@real
def test_portmap_publishes_a_port_and_del_takes_its_rules(host: Host) -> None:
    net = host.network("hct-ports", "10.66.4.0/24", [{"type": "portmap", "capabilities": {"portMappings": True}}])
    caps = cni.capability_args([cni.PortMapping(8080, 80, "tcp")])
    sb = host.setup("sandbox2", net, capability_args=caps)
    server = subprocess.Popen(["nsenter", f"--net={sb.netns.path}", sys.executable, "-c", POD_SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        hello = "hello from the pod\n"
        assert fetch_in(host.world.path, Host.ADDR, 8080) == hello  # from another machine
        assert fetch_in(host.ns.path, "10.66.4.1", 8080) == hello  # from the host, to one of its addresses
        assert fetch_in(host.ns.path, "127.0.0.1", 8080) == hello  # and through loopback
        assert "CNI-DN-" in host.rules()
        host.teardown("sandbox2", sb.netns.path)
    finally:
        server.kill()
        server.wait()
    assert fetch_in(host.world.path, Host.ADDR, 8080).startswith("failed")
    assert_nothing_left(host, "sandbox2", "hct-ports", sb.ips[0], sb.netns.path)


@root
@real
def test_add_failing_on_a_missing_plugin_leaves_nothing(host: Host) -> None:
    net = host.network("hct-missing", "10.66.5.0/24", [{"type": "portmap", "capabilities": {"portMappings": True}},
                                                        {"type": "hc-no-such-plugin"}])
    before = host.links()
    with pytest.raises(CNIError) as e:
        host.setup("sandbox3", net, capability_args=cni.capability_args([cni.PortMapping(8081, 80)]))
    assert e.value.plugin == "hc-no-such-plugin" and "not found in /usr/lib/cni" in e.value.message
    assert "undone: DEL ran for portmap, bridge" in e.value.message
    assert_nothing_left(host, "sandbox3", "hct-missing", "10.66.5.2", host.netns_dir / "cni-sandbox3")
    assert set(host.links()) - set(before) <= {"hct-br0"}
    assert list(host.netns_dir.iterdir()) == []


@root
@real
def test_add_failing_on_an_exhausted_subnet_leaves_nothing_of_it(host: Host) -> None:
    net = host.network("hct-full", "10.66.6.0/24", rangeStart="10.66.6.10", rangeEnd="10.66.6.10")
    first = host.setup("sandbox4", net)
    assert first.ips == ["10.66.6.10"]
    links = host.links()
    with pytest.raises(CNIError) as e:
        host.setup("sandbox5", net)
    assert e.value.plugin == "bridge" and "no IP addresses available in range set" in e.value.msg
    assert e.value.message.startswith("CNI ADD on network 'hct-full': plugin 'bridge' failed")
    assert host.links() == links  # the veth bridge made before IPAM failed went with the DEL
    assert host.ipam_files("hct-full") == ["10.66.6.10"]
    assert "sandbox5" not in host.rules() and "sandbox4" in host.rules()
    assert [e.container_id for e in cni.attachments(host.cache)] == ["sandbox4"]
    assert sorted(p.name for p in host.netns_dir.iterdir()) == ["cni-sandbox4"]
    host.teardown("sandbox4", first.netns.path)
    assert_nothing_left(host, "sandbox4", "hct-full", "10.66.6.10", first.netns.path)


@root
@real
def test_del_after_the_namespace_is_gone(host: Host) -> None:
    net = host.network("hct-gone", "10.66.7.0/24", [{"type": "portmap", "capabilities": {"portMappings": True}}])
    sb = host.setup("sandbox6", net, capability_args=cni.capability_args([cni.PortMapping(8082, 80)]))
    ip = sb.ips[0]
    sb.netns.remove()  # the namespace goes first (a crash, a runtime that removed it early)
    assert not sb.netns.exists
    # without a stand-in, the bridge plugin would leave its masquerade chain for an address it cannot read
    assert host.run(lambda: cni.delete(sb.netns.path, "sandbox6", "eth0", net, plugin_dirs=[PLUGINS],
                                       cache_dir=host.cache))
    assert_nothing_left(host, "sandbox6", "hct-gone", ip, sb.netns.path)
    assert not host.run(lambda: cni.delete(sb.netns.path, "sandbox6", "eth0", net, plugin_dirs=[PLUGINS],
                                           cache_dir=host.cache))  # again, nothing cached: the plugins find nothing


@root
@real
def test_the_cache_lets_a_new_process_delete(host: Host) -> None:
    net = host.network("hct-cache", "10.66.8.0/24", [{"type": "portmap", "capabilities": {"portMappings": True}}])
    sb = host.setup("sandbox7", net, pod=cni.PodRef("ns", "p", "u"),
                    capability_args=cni.capability_args([cni.PortMapping(8083, 80)]))
    (entry,) = cni.cached("sandbox7", "eth0", cache_dir=host.cache)
    assert entry.result is not None and entry.result.pod_ips() == sb.ips and entry.netns == str(sb.netns.path)
    code = ("import sys; from hypercontainer.network import cni; "
            "cni.teardown_sandbox(sys.argv[1], sys.argv[2], plugin_dirs=['/usr/lib/cni'], cache_dir=sys.argv[3])")
    r = subprocess.run(["nsenter", f"--net={host.ns.path}", sys.executable, "-c", code, "sandbox7",
                        str(sb.netns.path), str(host.cache)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(host, "sandbox7", "hct-cache", sb.ips[0], sb.netns.path)


@root
@real
def test_check_status_and_version_with_the_real_plugins(host: Host) -> None:
    net = host.network("hct-check", "10.66.9.0/24", [{"type": "loopback"}])
    assert "1.0.0" in cni.version("bridge", [PLUGINS]).supported
    cni.status(net, [PLUGINS])
    sb = host.setup("sandbox8", net)
    host.run(lambda: cni.check(sb.netns.path, "sandbox8", plugin_dirs=[PLUGINS], cache_dir=host.cache))
    sh("nsenter", f"--net={sb.netns.path}", "ip", "route", "del", "default")  # what the result says is there
    with pytest.raises(CNIError, match="CNI CHECK on network 'hct-check': plugin 'bridge' failed"):
        host.run(lambda: cni.check(sb.netns.path, "sandbox8", plugin_dirs=[PLUGINS], cache_dir=host.cache))
    host.teardown("sandbox8", sb.netns.path)
    assert_nothing_left(host, "sandbox8", "hct-check", sb.ips[0], sb.netns.path)

