"""The host codec against the shared vectors, the C side against the same vectors, and both tables agree."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from hypercontainer.errors import AgentError, VMError
from hypercontainer.protocol.agent import ContainerRequest, ExecRequest, PodRequest, check_net, check_seccomp
from hypercontainer.protocol.client import AgentClient, AgentRequestError, command_exit_code
from hypercontainer.protocol.codec import (
    BY_NAME,
    FIELDS,
    RETIRED_TAGS,
    CtlFrame,
    FrameReader,
    MountFlag,
    Msg,
    Phase,
    ProtocolError,
    check_from_guest,
    encode_ctl,
    encode_io,
)

from .conftest import AGENT_SRC, BUILD

VECTORS = Path(__file__).parent / "vectors" / "frames.txt"


def vectors() -> list[tuple[str, str, bytes]]:
    rows = []
    for line in VECTORS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, hexdata = line.split()
            rows.append((name, kind, bytes.fromhex(hexdata)))
    return rows


@pytest.mark.parametrize(("name", "kind", "raw"), vectors(), ids=[v[0] for v in vectors()])
def test_vector(name: str, kind: str, raw: bytes) -> None:
    channel = "ctl" if "ctl" in kind else "io"
    reader = FrameReader(channel)  # type: ignore[arg-type]
    if kind.startswith("bad-"):
        with pytest.raises(ProtocolError):
            frames = reader.feed(raw)
            assert frames, "bad vector decoded to nothing"  # an incomplete frame is not a rejection
        return
    (frame,) = reader.feed(raw)
    assert reader.pending == 0
    if channel == "ctl":
        assert encode_ctl(frame.type, frame.seq, frame.fields) == raw
    else:
        assert encode_io(frame.stream, frame.data) == raw


def test_vectors_byte_at_a_time() -> None:
    for _, kind, raw in vectors():
        if kind in ("ctl", "io"):
            reader = FrameReader(kind)  # type: ignore[arg-type]
            got = []
            for b in raw:
                got += reader.feed(bytes([b]))
            assert len(got) == 1


def test_c_agent_runs_the_same_vectors() -> None:
    r = subprocess.run(["make", "-s", "-C", str(AGENT_SRC), f"OUT={BUILD}/agent-test", "test",
                        f"VECTORS={VECTORS}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(vectors())} passed, 0 failed" in r.stdout


def test_tables_agree(agent_host_binary: Path) -> None:
    """Messages, fields, mount flags and failure phases: the agent's tables are the host's."""
    out = subprocess.run([str(agent_host_binary), "--tables"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert {row[0] for row in rows} == {"msg", "field", "mountflag", "phase"}
    assert {int(n): name for kind, n, name in (r for r in rows if r[0] == "msg")} == {m.value: m.name for m in Msg}
    py_fields = [[str(f.tag), f.name, f.kind, *(["list"] if f.list else [])] for f in FIELDS]
    assert [r[1:] for r in rows if r[0] == "field"] == py_fields
    c_flags = {int(bit): name for kind, bit, name in (r for r in rows if r[0] == "mountflag")}
    assert c_flags == {f.value: f.name for f in MountFlag}
    assert [r[1] for r in rows if r[0] == "phase"] == [p.value for p in Phase]


def test_host_rejects_unknown_tag_from_guest() -> None:
    raw = encode_ctl(Msg.ACK, 1) [:8] + (10).to_bytes(4, "big") + (999).to_bytes(2, "big") + (4).to_bytes(4, "big") \
        + b"abcd"
    with pytest.raises(ProtocolError, match="unknown field tag 999"):
        FrameReader("ctl").feed(raw)


@pytest.mark.parametrize(("frame", "why"), [
    (CtlFrame(Msg.NEW_CONTAINER, 1, {}), "only the host sends"),
    (CtlFrame(77, 1, {}), "unknown message type"),
    (CtlFrame(Msg.ERROR, 1, {"code": 2}), "without message"),
    (CtlFrame(Msg.EXITED, 0, {"stream": 2}), "without status"),
    (CtlFrame(Msg.EXITED, 5, {"stream": 2, "status": 0}), "with seq 5"),
    (CtlFrame(Msg.ACK, 0, {}), "with seq 0"),
    (CtlFrame(Msg.ERROR, 1, {"code": 2, "message": "x", "phase": "bogus"}), "ERROR with phase 'bogus'"),
    (CtlFrame(Msg.ACK, 1, {"phase": "exec"}), "ACK with phase"),
])
def test_guest_frames_checked(frame: CtlFrame, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        check_from_guest(frame)


def test_encoder_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        encode_ctl(Msg.SIGNAL, 1, {"signal": -1})
    with pytest.raises(ValueError):
        encode_ctl(Msg.START_POD, 1, {"hostname": "a\0b"})
    with pytest.raises(ProtocolError):
        encode_io(2, b"x" * 65537)
    assert BY_NAME["arg"].list


async def test_client_records_oom_kill_and_rejects_a_bad_flag() -> None:
    """EXITED's oom_killed reaches the process's streams; a value other than 0/1 ends the connection."""
    for flag, expect in ((1, True), (0, False), (None, False), (2, None)):
        ctl_host, ctl_guest = socket.socketpair()
        io_host, io_guest = socket.socketpair()
        client = AgentClient()
        await client.connect_sockets(ctl_host, io_host)
        proc = client.register(2, False)
        fields = {"stream": 2, "status": 137, **({} if flag is None else {"oom_killed": flag})}
        ctl_guest.sendall(encode_ctl(Msg.EXITED, 0, fields))
        if expect is None:
            assert "oom_killed 2" in await asyncio.wait_for(client.lost, 5)
            with pytest.raises(VMError):
                await proc.exit
        else:
            assert await asyncio.wait_for(proc.exit, 5) == 137 and proc.oom_killed is expect
        await client.close()
        for s in (ctl_guest, io_guest):
            s.close()


async def test_client_error_carries_the_phase() -> None:
    """ERROR's phase reaches the host as AgentRequestError.phase (an AgentError, as before); none when absent."""
    ctl_host, ctl_guest = socket.socketpair()
    io_host, io_guest = socket.socketpair()
    client = AgentClient()
    await client.connect_sockets(ctl_host, io_host)
    for seq, phase in ((1, "exec"), (2, None)):
        req = asyncio.ensure_future(client.request(Msg.PING))
        await asyncio.sleep(0)
        ctl_guest.sendall(encode_ctl(Msg.ERROR, seq, {"code": 13, "message": "exec /x: Permission denied",
                                                       **({"phase": phase} if phase else {})}))
        with pytest.raises(AgentRequestError) as e:
            await asyncio.wait_for(req, 5)
        assert isinstance(e.value, AgentError) and e.value.errno == 13
        assert e.value.phase == (Phase(phase) if phase else None)
        assert command_exit_code(e.value) == (126 if phase else None)
    await client.close()
    for s in (ctl_guest, io_guest):
        s.close()


START_POD_NET = [v for v in vectors() if v[0].startswith("start-pod-net")]


@pytest.mark.parametrize(("name", "kind", "raw"), START_POD_NET, ids=[v[0] for v in START_POD_NET])
def test_start_pod_network_vectors(name: str, kind: str, raw: bytes) -> None:
    """The network entries of the start-pod-net* vectors, read by PodRequest as the agent reads them (test_net.c
    runs the same frames): accepted, or refused where the name says -bad-."""
    (frame,) = FrameReader("ctl").feed(raw)
    assert frame.type == Msg.START_POD and frame.fields.get("net_if")
    if "-bad-" in name:
        with pytest.raises(ValueError, match=r"net_if|net_route"):
            PodRequest.from_fields(frame.fields)
        return
    req = PodRequest.from_fields(frame.fields)
    ifs, routes = check_net(req.net_if, req.net_route)
    assert [(i.mac, i.mtu, [str(a) for a in i.addresses]) for i in ifs] == [
        ("02:68:63:00:00:02", 0, ["10.77.0.2/16", "2001:db8::2/64"]), ("02:68:63:00:01:02", 1400, ["192.0.2.2/24"])]
    assert [str(r) for r in routes] == [
        "0.0.0.0/0 10.77.0.1 02:68:63:00:00:02", "::/0 2001:db8::1 02:68:63:00:00:02",
        "198.51.100.0/24 - 02:68:63:00:01:02", "2001:db8:99::/48 fe80::1 02:68:63:00:01:02"]
    assert encode_ctl(Msg.START_POD, frame.seq, req.to_fields()) == raw


def test_retired_tags_stay_retired() -> None:
    """net_mac, net_addr and net_gw (31-33) are gone and their tags never reused; a frame with one is refused."""
    assert {31, 32, 33} == RETIRED_TAGS and not RETIRED_TAGS & {f.tag for f in FIELDS}
    assert not {"net_mac", "net_addr", "net_gw"} & set(BY_NAME)
    raw = encode_ctl(Msg.ACK, 1)[:8] + (10).to_bytes(4, "big") + (32).to_bytes(2, "big") + (4).to_bytes(4, "big") \
        + b"abcd"
    with pytest.raises(ProtocolError, match="unknown field tag 32"):
        FrameReader("ctl").feed(raw)


def test_container_security_vectors() -> None:
    """new-container-own-security and exec-seccomp (the agent's codec runs them too; test_agent.py has the agent
    apply such fields): memory limit, the container's own path lists (an empty one as one empty entry), the filter
    and its flags, read by the request classes and written back the same."""
    frames = {name: FrameReader("ctl").feed(raw)[0] for name, kind, raw in vectors()
              if name in ("new-container-own-security", "exec-seccomp")}
    req = ContainerRequest.from_fields(frames["new-container-own-security"].fields)
    assert (req.memory_limit, req.masked_paths, req.readonly_paths) == (15 << 20, ("/etc/secret", "/proc/kcore"), ())
    assert req.process.seccomp and check_seccomp(req.process.seccomp) == 1 and req.process.seccomp_flags == 2
    (again,) = FrameReader("ctl").feed(encode_ctl(Msg.NEW_CONTAINER, 1, req.to_fields()))
    assert again.fields["readonly_paths"] == [""] and ContainerRequest.from_fields(again.fields) == req
    ex = ExecRequest.from_fields(frames["exec-seccomp"].fields)
    assert ex.process.seccomp == req.process.seccomp and "memory_limit" not in ex.to_fields()


def test_exec_builtin_vector() -> None:
    """exec-builtin (the agent's codec runs it too; test_agent_builtins.py runs builtins for real): an EXEC of the
    agent's `archive` builtin, read by ExecRequest; NEW_CONTAINER fields never carry `builtin`."""
    (frame,) = [FrameReader("ctl").feed(raw)[0] for name, kind, raw in vectors() if name == "exec-builtin"]
    assert frame.type == Msg.EXEC and frame.fields["builtin"] == 1
    ex = ExecRequest.from_fields(frame.fields)
    assert ex.builtin is True and ex.process.arg == ("archive", "/etc/.") and (ex.id, ex.stream) == ("c1", 8)
    assert ex.to_fields()["builtin"] == 1
    assert "builtin" not in ExecRequest.from_fields({"arg": ["ps"]}, id="c1", stream=2).to_fields()
    with pytest.raises(ValueError, match="not NEW_CONTAINER fields: builtin"):
        ContainerRequest.from_fields(frame.fields)


def test_hold_and_start_container_vectors() -> None:
    """new-container-hold, start-container and its ACK (the agent's codec runs them too; tests/test_agent.py has
    the agent hold and release a container): `hold` is NEW_CONTAINER's only, absent unless set."""
    frames = {name: FrameReader("ctl").feed(raw)[0] for name, kind, raw in vectors()
              if name in ("new-container-hold", "start-container", "start-container-ack")}
    req = ContainerRequest.from_fields(frames["new-container-hold"].fields)
    assert req.hold is True and (req.id, req.rootfs, req.stream) == ("c1", "c1", 2)
    (again,) = FrameReader("ctl").feed(encode_ctl(Msg.NEW_CONTAINER, 19, req.to_fields()))
    assert again.fields["hold"] == 1 and ContainerRequest.from_fields(again.fields) == req
    assert "hold" not in ContainerRequest.from_fields({"arg": ["sh"]}, id="c1", stream=2).to_fields()
    assert frames["start-container"].type == Msg.START_CONTAINER and frames["start-container"].fields == {"id": "c1"}
    assert frames["start-container-ack"].fields == {"pid": 42}
    assert "hold" not in ExecRequest.from_fields({"arg": ["sh"], "hold": 1}, id="c1", stream=2).to_fields()
