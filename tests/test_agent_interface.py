"""The typed agent interface (protocol/agent.py): requests as dataclasses of protocol fields, and Agent's methods
against the real agent binary over socketpairs (no VM)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import typing
from pathlib import Path

import pytest

from hypercontainer.errors import CommandNotRunnable
from hypercontainer.protocol.agent import (
    Agent,
    AgentRequestError,
    AgentStats,
    ContainerRequest,
    ExecRequest,
    Mount,
    NetIf,
    NetRoute,
    PodRequest,
    ProcessRequest,
    net_if,
    net_route,
)
from hypercontainer.protocol.codec import BY_NAME, MountFlag, Msg, Phase, encode_ctl

from .test_agent import Agent as AgentBinary

# What pod/ persists today (Pod.runtime(): a container's "fields" and "mounts"), through JSON as saved.
POD_FIELDS = {"arg": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "HOSTNAME=p"], "cwd": "/srv", "uid": 1000,
              "gid": 1000, "group": [10, 20], "terminal": 0, "stdin": 1, "readonly": 1, "rlimit": ["nofile:100:200"],
              "cap_bounding": 0xA80425FB, "cap_effective": 0xA80425FB, "cap_permitted": 0xA80425FB,
              "cap_inheritable": 0, "cap_ambient": 0, "no_new_privs": 1, "privileged": 0, "shared_pid_ns": 1}
POD_MOUNTS = {"mount_src": ["vols/data", "cache", "hcblk0:ext4"], "mount_dst": ["/data", "/cache", "/blk"],
              "mount_flags": [1, 2, 5], "sysctl": ["net.core.somaxconn=512"]}
RUNV_FIELDS = {"arg": ["/pause"], "env": [], "cwd": "/", "uid": 0, "gid": 0, "group": [], "terminal": 0, "stdin": 1,
               "readonly": 0, "rlimit": [], "cap_bounding": 1, "cap_effective": 1, "cap_permitted": 1,
               "cap_inheritable": 0, "cap_ambient": 0, "no_new_privs": 0, "pid_ns_of": "ctr"}


def _wire_attrs(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("process", "mounts")]


@pytest.mark.parametrize("cls", [ProcessRequest, ContainerRequest, ExecRequest, PodRequest, AgentStats])
def test_request_attributes_are_protocol_fields(cls: type) -> None:
    """Every attribute (but the nested process and the mount list) is a protocol field of the same kind."""
    hints = typing.get_type_hints(cls)
    for name in _wire_attrs(cls):
        d = BY_NAME[name]
        hint = hints[name]
        types = set(typing.get_args(hint)) - {type(None), Ellipsis} or {hint}
        if d.list:  # a tuple, or a tuple or None (masked_paths: None is "not given", () an empty list)
            hint = next(h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) is tuple)
            types = set(typing.get_args(hint)) - {Ellipsis}
        assert types <= ({int, bool} if d.kind == "u64" else {str}), (name, hint)


def test_persisted_dicts_load_and_round_trip() -> None:
    saved = json.loads(json.dumps({"fields": POD_FIELDS, "mounts": POD_MOUNTS}))
    req = ContainerRequest.from_fields({**saved["fields"], **saved["mounts"]}, id="web", stream=2)
    assert req.process.arg == ("sh", "-c", "echo hi") and req.process.no_new_privs is True
    assert req.readonly and req.shared_pid_ns and not req.privileged and req.rootfs is None
    assert req.mounts[2] == Mount("hcblk0:ext4", "/blk", MountFlag.BLOCK | MountFlag.READONLY)
    wire = req.to_fields()
    assert wire == {"id": "web", "stream": 2, **POD_FIELDS, **POD_MOUNTS}
    assert ContainerRequest.from_fields(wire) == req  # id and stream from the fields themselves
    encode_ctl(Msg.NEW_CONTAINER, 1, wire)
    runv = ContainerRequest.from_fields(RUNV_FIELDS, id="ctr2", stream=4)
    assert runv.pid_ns_of == "ctr"
    assert runv.to_fields() == {"id": "ctr2", "stream": 4, **RUNV_FIELDS, "privileged": 0, "shared_pid_ns": 0,
                                "sysctl": []}  # the defaults, said out loud


def test_container_security_fields_and_exec() -> None:
    """runv's linux fields: the memory limit and path lists are NEW_CONTAINER's (an empty list said as one empty
    entry), the filter a process field an EXEC built from the container's fields keeps."""
    fields = {**RUNV_FIELDS, "memory_limit": 15 << 20, "masked_paths": [], "readonly_paths": ["/data"],
              "seccomp": "BgAAAAAA/38=", "seccomp_flags": 2}
    req = ContainerRequest.from_fields(json.loads(json.dumps(fields)), id="ctr", stream=2)
    assert (req.memory_limit, req.masked_paths, req.readonly_paths) == (15 << 20, (), ("/data",))
    wire = req.to_fields()
    assert wire["masked_paths"] == [""] and wire["readonly_paths"] == ["/data"] and wire["seccomp_flags"] == 2
    assert ContainerRequest.from_fields(wire) == req
    plain = ContainerRequest.from_fields(RUNV_FIELDS, id="ctr", stream=2).to_fields()
    assert not {"memory_limit", "masked_paths", "readonly_paths", "seccomp", "seccomp_flags"} & set(plain)
    ex = ExecRequest.from_fields(fields, id="ctr", stream=4).to_fields()
    assert ex["seccomp"] == "BgAAAAAA/38=" and not {"memory_limit", "masked_paths", "readonly_paths"} & set(ex)


def test_exec_from_a_containers_fields() -> None:
    """pod/'s EXEC base is the container's persisted fields: NEW_CONTAINER-only ones are dropped, as the agent
    ignores them in an EXEC; absent capability fields stay absent (the container's)."""
    req = ExecRequest.from_fields({**POD_FIELDS, **POD_MOUNTS, "pid_ns_of": "x", "arg": ["ls"], "terminal": 1},
                                  id="web", stream=6)
    wire = req.to_fields()
    assert wire["arg"] == ["ls"] and wire["terminal"] == 1 and wire["id"] == "web" and wire["stream"] == 6
    assert not {"readonly", "privileged", "shared_pid_ns", "pid_ns_of", "sysctl", "mount_src"} & set(wire)
    bare = ExecRequest("web", 8, ProcessRequest(arg=("true",)))
    assert not any(k.startswith("cap_") or k == "no_new_privs" for k in bare.to_fields())
    changed = dataclasses.replace(req.process, arg=("id",), uid=0)
    assert ExecRequest("web", 8, changed).to_fields()["arg"] == ["id"]


@pytest.mark.parametrize(("fields", "why"), [
    ({**POD_FIELDS, "hostname": "x"}, "not NEW_CONTAINER fields: hostname"),
    ({**POD_FIELDS, "bogus": 1}, "not NEW_CONTAINER fields: bogus"),
    ({**POD_FIELDS, "uid": "0"}, "uid: '0' is not a u64"),
    ({**POD_FIELDS, "uid": -1}, "uid: -1 is not a u64"),
    ({**POD_FIELDS, "terminal": 2}, "terminal: 2 is not 0 or 1"),
    ({**POD_FIELDS, "env": "A=1"}, "env: 'A=1' is not a list"),
    ({**POD_FIELDS, "cwd": ["/"]}, "cwd: .* is a list"),
    ({**POD_FIELDS, "arg": []}, "needs a command"),
    ({**POD_FIELDS, "mount_src": ["a"], "mount_dst": [], "mount_flags": []}, "lists of one length"),
    ({**POD_FIELDS, "mount_src": ["a"], "mount_dst": ["/a"], "mount_flags": [8]}, "invalid flags 8"),
    ({**POD_FIELDS, "mount_src": ["a"], "mount_dst": ["/a"], "mount_flags": [6]}, "invalid flags 6"),
    ({k: v for k, v in POD_FIELDS.items() if k != "arg"}, "missing"),
    ({**POD_FIELDS, "memory_limit": -1}, "memory_limit: -1 is not a u64"),
    ({**POD_FIELDS, "masked_paths": ["/a/../b"]}, "masked_paths: '/a/../b' is not a clean absolute path"),
    ({**POD_FIELDS, "readonly_paths": ["/a", ""]}, "readonly_paths: '' is not a clean"),
    ({**POD_FIELDS, "readonly_paths": ["/"]}, "readonly_paths: '/' is not a clean"),
    ({**POD_FIELDS, "masked_paths": ["/p"] * 257}, "more than 256 paths"),
    ({**POD_FIELDS, "seccomp": "BgAAAAAA/38"}, "seccomp: not base64"),
    ({**POD_FIELDS, "seccomp": "BgAA"}, "seccomp: 3 bytes"),
    ({**POD_FIELDS, "seccomp": "AAAA" * 10923}, "seccomp: 32769 bytes"),
    ({**POD_FIELDS, "seccomp_flags": 2}, "seccomp_flags 2: .* with seccomp"),
    ({**POD_FIELDS, "seccomp": "BgAAAAAA/38=", "seccomp_flags": 1}, "seccomp_flags 1"),
])
def test_bad_fields_refused(fields: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ContainerRequest.from_fields(fields, id="c", stream=2)


def test_pod_request() -> None:
    req = PodRequest(hostname="web", share="hcshare", sharefs="9p", clock_ns=5)
    assert req.to_fields() == {"hostname": "web", "share": "hcshare", "sharefs": "9p", "clock_ns": 5}
    assert PodRequest.from_fields(req.to_fields()) == req
    with pytest.raises(ValueError, match="not START_POD fields: id"):
        PodRequest.from_fields({"id": "x"})
    with pytest.raises(ValueError, match="not START_POD fields: net_mac"):  # retired
        PodRequest.from_fields({"net_mac": "02:68:63:00:00:02"})


M1, M2 = "02:68:63:00:00:02", "02:68:63:00:01:02"


def test_pod_request_network_entries() -> None:
    """Interfaces and routes as START_POD carries them: built by net_if()/net_route() (canonical text), parsed back
    by NetIf/NetRoute, checked together."""
    ifs = (net_if(M1.upper(), ["10.77.0.2/16", "2001:DB8:0::2/64"]), net_if(M2, ["192.0.2.2/24"], mtu=1400),
           net_if("02:68:63:00:02:02", []))
    assert ifs == (f"{M1} 0 10.77.0.2/16 2001:db8::2/64", f"{M2} 1400 192.0.2.2/24", "02:68:63:00:02:02 0")
    routes = (net_route("0.0.0.0/0", "10.77.0.1", M1), net_route("::/0", "fe80::1", M1),
              net_route("198.51.100.0/24", None, M2))
    assert routes == (f"0.0.0.0/0 10.77.0.1 {M1}", f"::/0 fe80::1 {M1}", f"198.51.100.0/24 - {M2}")
    req = PodRequest(hostname="web", net_if=ifs, net_route=routes)
    assert req.to_fields() == {"hostname": "web", "net_if": list(ifs), "net_route": list(routes)}
    assert PodRequest.from_fields(json.loads(json.dumps(req.to_fields()))) == req
    first = NetIf.parse(ifs[0])
    assert first.mac == M1 and first.mtu == 0 and [a.version for a in first.addresses] == [4, 6]
    assert NetRoute.parse(routes[2]).via is None and str(NetRoute.parse(routes[1]).dst) == "::/0"
    assert PodRequest().to_fields() == {}  # no network: no entries


@pytest.mark.parametrize(("ifs", "routes", "why"), [
    ((f"{M1} 0 10.77.0.2",), (), "want ADDR/LEN"),
    ((f"{M1} 0 10.77.0.2/255.255.0.0",), (), "want ADDR/LEN"),
    ((f"{M1} 0 10.77.0.2/0",), (), "prefix length"),
    ((f"{M1} 0 2001:db8::2/129",), (), "prefix length"),
    ((f"{M1} 0 fe80::2%eth0/64",), (), "invalid address"),
    ((f"{M1} 0 010.77.0.2/16",), (), "invalid address"),
    ((f"{M1} 1279 2001:db8::2/64",), (), "IPv6 needs an MTU"),
    ((f"{M1} 67",), (), "MTU 67"),
    ((f"{M1} 65536",), (), "MTU 65536"),
    ((f"{M1} -1",), (), "want MAC MTU"),
    ((M1,), (), "want MAC MTU"),
    ((f"{M1} 0 ",), (), "invalid address"),
    ((f"{M1}  0",), (), "want MAC MTU"),
    (("01:68:63:00:00:02 0",), (), "invalid MAC"),
    (("00:00:00:00:00:00 0",), (), "invalid MAC"),
    (("02-68-63-00-00-02 0",), (), "invalid MAC"),
    ((f"{M1} 0", f"{M1} 1500"), (), "given twice"),
    ((f"{M1} 0 " + " ".join(f"10.0.0.{i}/24" for i in range(1, 18)),), (), "more than 16 addresses"),
    (tuple(f"02:00:00:00:00:{i:02x} 0" for i in range(1, 18)), (), "at most 16 net_if"),
    ((f"{M1} 0",), (f"0.0.0.0/0 10.0.0.1 {M2}",), f"no net_if entry has MAC {M2}"),
    ((), (f"0.0.0.0/0 10.0.0.1 {M1}",), "no net_if entry"),
    ((f"{M1} 0",), (f"::/0 10.0.0.1 {M1}",), "different families"),
    ((f"{M1} 0",), (f"10.0.0.1/8 - {M1}",), "host bits"),
    ((f"{M1} 0",), ("10.0.0.0/8 -",), "want DST VIA MAC"),
    ((f"{M1} 0",), (f"10.0.0.0/8 - {M1} x",), "want DST VIA MAC"),
    ((f"{M1} 0",), (f"10.0.0.0/8 gw {M1}",), "invalid address"),
])
def test_bad_network_entries_refused(ifs: tuple[str, ...], routes: tuple[str, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        PodRequest(net_if=ifs, net_route=routes)
    with pytest.raises(ValueError, match=why):
        PodRequest.from_fields({"net_if": list(ifs), "net_route": list(routes)})


async def test_agent_refuses_bad_network_entries(agent_host_binary: Path) -> None:
    """The agent checks every entry itself (the host's check is not its only guard), before it changes anything:
    EINVAL naming the entry. Good entries pass in test mode (nothing is configured there)."""
    async with AgentBinary(agent_host_binary) as client:
        agent = Agent(client)
        await agent.handshake(5)
        await agent.start_pod(PodRequest(net_if=(f"{M1} 1400 10.77.0.2/16 2001:db8::2/64",),
                                         net_route=(f"::/0 2001:db8::1 {M1}", f"10.0.0.0/8 - {M1}")))
        for fields, why in (({"net_if": [f"{M1} 0 10.77.0.2"]}, f'net_if "{M1} 0 10.77.0.2": invalid address'),
                            ({"net_if": [f"{M1} 0"], "net_route": [f"0.0.0.0/0 10.0.0.1 {M2}"]},
                             f"no net_if entry has MAC {M2}")):
            with pytest.raises(AgentRequestError) as e:
                await client.request(Msg.START_POD, fields)  # type: ignore[arg-type]
            assert e.value.errno == errno.EINVAL and why in e.value.message, e.value.message


# ---- Agent against the agent binary ------------------------------------------------------------------------

async def _output(streams: typing.Any) -> tuple[bytes, int]:
    out = b""
    while (chunk := await streams.stdout.get()) is not None:
        out += chunk
    return out, await asyncio.wait_for(streams.exit, 10)


async def test_agent_requests(agent_host_binary: Path, tmp_path: Path) -> None:
    """new_container → exec → signal → winsize → remove_container → stats, and the same name again."""
    async with AgentBinary(agent_host_binary) as client:
        agent = Agent(client)
        assert (await agent.handshake(5)).startswith("hc-agent/") and agent.guest_uptime is not None
        await agent.start_pod(PodRequest(hostname="ignored-in-test-mode"))
        base = await agent.stats()
        first = await agent.new_container(ContainerRequest("web", 2, ProcessRequest(arg=("sleep", "30"))))
        assert first.pid and first.pid > 0
        term = await agent.exec(ExecRequest("web", 4, ProcessRequest(
            arg=("sh", "-c", "sleep 0.2; stty size"), terminal=True)))
        await agent.winsize(4, 33, 99)
        assert (await _output(term)) == (b"33 99\r\n", 0)
        with pytest.raises(AgentRequestError) as e:
            await agent.remove_container("web")
        assert e.value.errno == errno.EBUSY and e.value.phase is None
        await agent.signal(2, 9)
        assert await asyncio.wait_for(first.exit, 10) == 137
        await agent.remove_container("web")
        assert await agent.stats() == base
        again = await agent.new_container(ContainerRequest("web", 6, ProcessRequest(arg=("echo", "again"))))
        assert await _output(again) == (b"again\n", 0)
        with pytest.raises(AgentRequestError) as e:
            await agent.signal(6, 15)
        assert e.value.errno == errno.ESRCH
        await agent.remove_container("web")
        await agent.ping()
        await agent.shutdown()  # test mode: the agent exits


async def test_agent_maps_the_phase_to_docker_exit_codes(agent_host_binary: Path, tmp_path: Path) -> None:
    """A command that cannot run is CommandNotRunnable with docker's code (from the phase, not the message);
    its stream is unregistered, so the same stream can be used again."""
    plain = tmp_path / "plain"
    plain.write_text("")
    async with AgentBinary(agent_host_binary) as client:
        agent = Agent(client)
        await agent.handshake(5)
        cases = [(ProcessRequest(arg=("no-such-command",)), 127),
                 (ProcessRequest(arg=(str(plain),)), 126),
                 (ProcessRequest(arg=("true",), cwd=str(tmp_path / "gone")), 127)]
        for process, code in cases:
            with pytest.raises(CommandNotRunnable) as e:
                await agent.new_container(ContainerRequest("c", 2, process))
            assert e.value.exit_code == code
        with pytest.raises(AgentRequestError) as err:  # not a command failure: the agent's error as it is
            await agent.new_container(ContainerRequest("c", 2, ProcessRequest(arg=("true",), rlimit=("nofile:9:1",))))
        assert err.value.phase is Phase.RLIMIT
        sleeper = await agent.new_container(ContainerRequest("c", 2, ProcessRequest(arg=("sleep", "30"))))
        with pytest.raises(CommandNotRunnable) as e:
            await agent.exec(ExecRequest("c", 4, ProcessRequest(arg=("no-such-command",))))
        assert e.value.exit_code == 127
        assert 4 not in client._procs
        await agent.signal(2, 9)
        await asyncio.wait_for(sleeper.exit, 10)
        assert (await agent.stats()).processes == 0
