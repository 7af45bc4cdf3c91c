"""CONTAINER_STATS and OPEN_PORT: a container's counters from its cgroups in the guest, and a TCP connection from
inside the guest to its localhost relayed on the agent's stream channel (Kubernetes' ContainerStats and
port-forward).

First the real agent binary in test mode over socketpairs (no VM): CONTAINER_STATS reads a cgroup tree the test
writes (the host's cgroups are never touched), with the CPU time of a real busy process where cpuacct is missing;
OPEN_PORT dials listeners of the test's own on 127.0.0.1 and ::1. Then a real VM through the pod core: a container
that fills 32 MiB, a busy loop, httpd and nc on the pod's localhost only."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from hypercontainer.errors import Conflict, InvalidArgument, NotFound
from hypercontainer.pod.container import Container
from hypercontainer.pod.pod import GuestAssets, Pod
from hypercontainer.protocol.agent import (
    Agent,
    AgentRequestError,
    ContainerRequest,
    ContainerStats,
    PortStream,
    ProcessRequest,
)
from hypercontainer.protocol.codec import BY_NAME, FrameReader, Msg
from hypercontainer.spec.pod import PodSpec

from .guest import guest_parts
from .test_agent import Agent as AgentBinary
from .test_protocol import vectors

MiB = 1 << 20
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ==== the protocol ===================================================================================================
def test_container_stats_attributes_are_protocol_fields() -> None:
    """Every attribute but the host's timestamp is a u64 field of the reply."""
    names = [f for f in ContainerStats.__dataclass_fields__ if f != "timestamp"]
    assert all(BY_NAME[n].kind == "u64" and not BY_NAME[n].list for n in names)


def test_vectors_read_as_typed() -> None:
    """container-stats-ack is a ContainerStats; open-port carries port and stream (both codecs run the vectors)."""
    frames = {name: FrameReader("ctl").feed(raw)[0] for name, kind, raw in vectors() if kind == "ctl"}
    ack = ContainerStats.from_fields(frames["container-stats-ack"].fields, 5)
    assert ack == ContainerStats(1234567890, 34 * MiB, 33 * MiB, MiB, 2, 64 * MiB, 5)
    assert frames["container-stats"].type == Msg.CONTAINER_STATS and frames["container-stats"].fields == {"id": "c1"}
    assert frames["open-port"].type == Msg.OPEN_PORT and frames["open-port"].fields == {"port": 8080, "stream": 6}
    refused = frames["open-port-refused"]
    assert refused.type == Msg.ERROR and refused.fields["code"] == errno.ECONNREFUSED
    assert frames["port-exited"].fields == {"stream": 6, "status": 0}
    with pytest.raises(Exception, match="lacks a counter"):
        ContainerStats.from_fields({"cpu_ns": 1})


# ==== test mode: the agent binary over socketpairs ===================================================================
@contextlib.asynccontextmanager
async def agent_of(binary: Path, tmp: Path | None = None) -> AsyncIterator[Agent]:
    async with AgentBinary(binary, tmp, tmp / "cg" if tmp else None) as client:
        agent = Agent(client)
        await agent.handshake(5)
        yield agent


async def test_container_stats_read_its_cgroups(agent_host_binary: Path, tmp_path: Path) -> None:
    async with agent_of(agent_host_binary, tmp_path) as agent:
        loop = ProcessRequest(("sh", "-c", "while :; do :; done"))
        busy = await agent.new_container(ContainerRequest("busy", 2, loop))
        with pytest.raises(AgentRequestError) as e:
            await agent.container_stats("busy")
        assert e.value.errno == errno.ENOENT and "no memory cgroup for container busy" in e.value.message

        mem, cpu = tmp_path / "cg" / "memory" / "busy", tmp_path / "cg" / "cpuacct" / "busy"
        mem.mkdir(parents=True)
        (mem / "memory.usage_in_bytes").write_text(f"{40 * MiB}\n")
        (mem / "memory.stat").write_text(f"cache 7\nrss 1\ntotal_cache {6 * MiB}\ntotal_rss {30 * MiB}\n"
                                         f"total_inactive_file {4 * MiB}\ntotal_active_file {2 * MiB}\n")
        (mem / "memory.limit_in_bytes").write_text(f"{64 * MiB}\n")
        (mem / "cgroup.procs").write_text(f"{busy.pid}\n")
        await asyncio.sleep(0.3)  # a few ticks of CPU time
        before = time.time_ns()
        first = await agent.container_stats("busy")
        await asyncio.sleep(0.5)
        second = await agent.container_stats("busy")
        # No cpuacct: the CPU time of its processes, as /proc counts it (10 ms ticks).
        assert 0 < first.cpu_ns < second.cpu_ns and second.cpu_ns - first.cpu_ns >= 50_000_000, (first, second)
        assert (first.mem_usage, first.mem_working_set, first.mem_rss) == (40 * MiB, 36 * MiB, 30 * MiB)
        assert first.pids == 1 and first.memory_limit == 64 * MiB
        assert before <= first.timestamp < second.timestamp <= time.time_ns()

        cpu.mkdir(parents=True)
        (cpu / "cpuacct.usage").write_text("987654321\n")  # cpuacct's counter when there is one
        (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # the kernel's "no limit"
        (mem / "memory.usage_in_bytes").write_text(f"{MiB}\n")  # less than the inactive cache
        (mem / "cgroup.procs").write_text(f"{busy.pid}\n{os.getpid()}\n")
        third = await agent.container_stats("busy")
        assert (third.cpu_ns, third.memory_limit, third.mem_working_set, third.pids) == (987654321, None, 0, 2)

        with pytest.raises(AgentRequestError) as e:
            await agent.container_stats("nosuch")
        assert e.value.errno == errno.ENOENT and e.value.message == "no container nosuch"
        await agent.signal(2, 9)
        assert await asyncio.wait_for(busy.exit, 10) == 137
        with pytest.raises(AgentRequestError) as e:
            await agent.container_stats("busy")
        assert e.value.errno == errno.ESRCH and e.value.message == "container busy is not running"


@contextlib.asynccontextmanager
async def listener(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def read_all(port: PortStream) -> bytes:
    out = b""
    while chunk := await asyncio.wait_for(port.read(), 30):
        out += chunk
    return out


async def test_port_round_trip_with_half_close_from_the_host(agent_host_binary: Path) -> None:
    """The host writes 3 MiB and closes its side; the server reads to EOF, answers, closes: the host reads all of
    it, then EOF; the relay ends in order (0). Both directions are far over the agent's 1 MiB of buffer."""
    async def upper(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write((await r.read()).upper())
        await w.drain()
        w.close()

    payload = os.urandom(3 * MiB // 2).hex().encode()
    async with listener(upper) as p, agent_of(agent_host_binary) as agent:
        port = await agent.open_port(p, 2)
        await port.write(payload)
        await port.close_write()
        assert await read_all(port) == payload.upper()
        assert await port.read() == b"" and await asyncio.wait_for(port.ended, 10) == 0
        with pytest.raises(BrokenPipeError):
            await port.write(b"late")
        await port.close()


async def test_port_half_close_from_the_pod(agent_host_binary: Path) -> None:
    """The server sends a banner and shuts down its sending side, then reads: the host reads the banner and EOF,
    and can still write; what it writes after that EOF arrives."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def banner(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"banner\n")
        w.write_eof()
        got.set_result(await r.read())
        w.close()

    async with listener(banner) as p, agent_of(agent_host_binary) as agent:
        port = await agent.open_port(p, 2)
        assert await read_all(port) == b"banner\n"
        await port.write(b"after your EOF")
        await port.close_write()
        assert await asyncio.wait_for(got, 10) == b"after your EOF"
        assert await asyncio.wait_for(port.ended, 10) == 0
        await port.close()


async def test_port_close_ends_the_connection(agent_host_binary: Path) -> None:
    """close() on a connection that is still open both ways: the server sees EOF, the relay ends ECONNABORTED."""
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.set_result(await r.read())
        w.close()

    async with listener(hold) as p, agent_of(agent_host_binary) as agent:
        port = await agent.open_port(p, 2)
        await port.write(b"x")
        await port.close()
        assert await asyncio.wait_for(seen, 10) == b"x"
        assert port.ended.result() == errno.ECONNABORTED
        await port.close()  # twice: nothing more


async def test_port_on_ipv6_loopback_only(agent_host_binary: Path) -> None:
    """127.0.0.1 refuses, ::1 answers: the agent tries ::1 too (as containerd's port-forward does)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"v6")
        w.close()

    try:
        ctx = listener(hello, "::1")
        p = await ctx.__aenter__()
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    try:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", p)) == 0:
                pytest.skip("the port is taken on 127.0.0.1 too")
        async with agent_of(agent_host_binary) as agent:
            port = await agent.open_port(p, 2)
            assert await read_all(port) == b"v6"
            await port.close()
    finally:
        await ctx.__aexit__(None, None, None)


async def test_port_as_asyncio_streams(agent_host_binary: Path) -> None:
    """The pair a caller written for asyncio streams takes (the CRI streaming server's port-forward): the PortStream
    as the reader (read(n) at most n), writer() as the writer: write and drain, write_eof, close and wait_closed."""
    async def upper(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write((await r.read()).upper())
        await w.drain()
        w.close()

    async with listener(upper) as p, agent_of(agent_host_binary) as agent:
        reader = await agent.open_port(p, 2)
        writer = reader.writer()
        for part in (b"abc", b"def" * 30000):
            writer.write(part)
            await writer.drain()
        assert writer.can_write_eof() and not writer.is_closing()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(2), 10) == b"AB"
        rest = b""
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 10):
            assert len(chunk) <= 1 << 16
            rest += chunk
        assert rest == b"C" + b"DEF" * 30000
        writer.close()
        await writer.wait_closed()
        assert writer.is_closing() and reader.ended.result() == 0 and not agent.client._procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_port_refused_and_bad_requests(agent_host_binary: Path) -> None:
    async with agent_of(agent_host_binary) as agent:
        closed = free_port()
        with pytest.raises(AgentRequestError) as e:
            await agent.open_port(closed, 2)
        assert e.value.errno == errno.ECONNREFUSED
        assert e.value.message == f"connect to port {closed} on the pod's localhost: Connection refused"
        client = agent.client
        for fields, code in (({"port": 0, "stream": 2}, errno.EINVAL), ({"port": 70000, "stream": 2}, errno.EINVAL),
                             ({"port": closed, "stream": 3}, errno.EINVAL), ({"port": closed}, errno.EINVAL)):
            with pytest.raises(AgentRequestError) as e:
                await client.request(Msg.OPEN_PORT, fields)  # type: ignore[arg-type]
            assert e.value.errno == code, fields
        with pytest.raises(ValueError):
            await agent.open_port(0, 2)

        async def idle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()
            w.close()

        async with listener(idle) as p:
            port = await agent.open_port(p, 2)  # the stream a refused request named is free again
            with pytest.raises(AgentRequestError) as e:
                await client.request(Msg.OPEN_PORT, {"port": p, "stream": 2})
            assert e.value.errno == errno.EEXIST
            with pytest.raises(AgentRequestError) as e:
                await agent.winsize(2, 24, 80)
            assert e.value.errno == errno.ENOTTY
            await port.close()
            with pytest.raises(AgentRequestError) as e:
                await agent.signal(2, 9)
            assert e.value.errno == errno.ESRCH


async def cycles(open_port: Callable[[], Awaitable[PortStream]], n: int) -> None:
    """n connections: even ones a round trip ended in order, odd ones closed at once (aborted)."""
    for i in range(n):
        port = await open_port()
        if i % 2 == 0:
            await port.write(b"ping %d\n" % i)
            await port.close_write()
            assert await read_all(port) == b"ping %d\n" % i
        await port.close()
        assert port.ended.done()


async def test_100_port_cycles_leave_the_agent_as_it_was(agent_host_binary: Path) -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read())
        w.close()

    async with listener(echo) as p, agent_of(agent_host_binary) as agent:
        before = await agent.stats()
        stream = iter(range(2, 1000, 2))
        await cycles(lambda: agent.open_port(p, next(stream)), 100)
        for _ in range(3):  # refused ones too
            with pytest.raises(AgentRequestError):
                await agent.open_port(free_port(), next(stream))
        after = await agent.stats()
        assert (after.fds, after.processes) == (before.fds, before.processes)
        assert not agent.client._procs


# ==== a real VM, through the pod core ================================================================================

APP = ("head -c 33554432 /dev/zero > /dev/shm/fill; echo hello-from-the-pod > /tmp/index.html;"
       " httpd -f -p 127.0.0.1:8080 -h /tmp & nc -ll -p 9090 -e cat & wait")


@pytest.fixture(scope="module")
def guest(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return guest_parts(busybox_tar, tmp_path_factory, "sha256:" + "2" * 64)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.5)


async def in_a_vm(tmp: Path, guest: SimpleNamespace) -> None:
    spec = PodSpec.model_validate({"name": "relay", "keep_alive": True, "network": "none", "containers": [
        {"name": "app", "image": "busybox", "command": ["sh", "-c", APP]},
        {"name": "short", "image": "busybox", "command": ["true"]}]})
    (tmp / "state" / "logs").mkdir(parents=True)
    app = Container(spec.containers[0], guest.image, stream=2, log_path=tmp / "state" / "logs" / "app.log",
                    overrides={"memory_limit": 200 * MiB})
    short = Container(spec.containers[1], guest.image, stream=4, log_path=tmp / "state" / "logs" / "short.log")
    a = guest.assets
    pod = Pod("f" * 64, "relay", spec, [app, short], tmp / "state", tmp / "run" / "pod",
              GuestAssets(a.kernel, a.initrd, guest.accel), boot="cold")
    await pod.start()
    try:
        # ---- stats: 32 MiB in its tmpfs, its processes, its limit, then a busy loop's CPU time
        async def filled() -> bool:
            s = await pod.container_stats("app")
            return s.mem_usage >= 32 * MiB and s.pids == 3
        await until(filled, "the app container never showed 32 MiB and its 3 processes")
        s = await pod.container_stats("app")
        assert s.mem_working_set >= 32 * MiB and s.memory_limit == 200 * MiB, s
        assert s.mem_usage < 100 * MiB, s  # its own, not the VM's
        busy = await pod.exec("app", ["timeout", "3", "sh", "-c", "while :; do :; done"])
        await asyncio.sleep(1)
        during = await pod.container_stats("app")
        assert during.pids == 5 and during.cpu_ns > s.cpu_ns, (s, during)  # timeout and its sh
        assert await asyncio.wait_for(busy.exit, 60) == 143
        after = await pod.container_stats("app")
        # cpuacct keeps what exited processes used: half a second of the loop's three at least
        assert after.cpu_ns - s.cpu_ns >= 500_000_000 and after.pids == 3, (s, after)
        await asyncio.wait_for(short.done.wait(), 60)
        with pytest.raises(Conflict, match="not running"):
            await pod.container_stats("short")
        with pytest.raises(NotFound):
            await pod.container_stats("nosuch")

        # ---- port relay: httpd on the pod's 127.0.0.1 only, nc -e cat on 9090, a closed port
        port = await pod.open_port(8080)
        await port.write(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        page = await read_all(port)
        await port.close()
        assert page.startswith(b"HTTP/1.") and page.endswith(b"hello-from-the-pod\n"), page
        port = await pod.open_port(9090)
        blob = os.urandom(MiB)
        writer = asyncio.ensure_future(port.write(blob))
        got = b""
        while len(got) < len(blob):
            chunk = await asyncio.wait_for(port.read(), 60)
            assert chunk, "EOF before the echo was complete"
            got += chunk
        await writer
        await port.close_write()
        assert got == blob and await read_all(port) == b""
        await port.close()
        with pytest.raises(AgentRequestError) as e:
            await pod.open_port(8081)
        assert e.value.errno == errno.ECONNREFUSED and "port 8081" in e.value.message, e.value.message
        with pytest.raises(InvalidArgument):
            await pod.open_port(0)

        before = await pod.agent_stats()
        await cycles(lambda: pod.open_port(9090), 100)
        after_cycles = await pod.agent_stats()
        assert (after_cycles["fds"], after_cycles["processes"]) == (before["fds"], before["processes"]), (
            before, after_cycles)
    finally:
        await pod.stop()
    with pytest.raises(Conflict):
        await pod.open_port(8080)


@pytest.fixture
def short_tmp():
    """A short path: QEMU's unix sockets live below it (108 bytes at most)."""
    d = Path(tempfile.mkdtemp(prefix="hc-relay-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="QEMU and the pod's overlays need root")
@pytest.mark.timeout(900)
def test_stats_and_port_relay_in_a_vm(guest: SimpleNamespace, short_tmp: Path) -> None:
    asyncio.run(in_a_vm(short_tmp, guest))
