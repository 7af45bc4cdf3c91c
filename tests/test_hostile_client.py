"""AgentClient against a guest that stops short (issue 17, the hostile guest; the VM test is test_hostile_guest.py):
a request never answered, a reply cut in half, an EXITED whose output never ends on a dead stream channel. The
agent is declared lost with the reason named, instead of the host waiting forever. No VM: a scripted guest over
socketpairs."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from hypercontainer.errors import VMError
from hypercontainer.protocol.client import STREAM_QUEUE, AgentClient
from hypercontainer.protocol.codec import Msg, encode_ctl, encode_io


@pytest.fixture
async def guest() -> AsyncIterator[tuple[AgentClient, socket.socket, socket.socket]]:
    ctl_host, ctl_guest = socket.socketpair()
    io_host, io_guest = socket.socketpair()
    client = AgentClient()
    client.reply_timeout = client.eof_timeout = 0.3
    await client.connect_sockets(ctl_host, io_host)
    yield client, ctl_guest, io_guest
    await client.close()
    ctl_guest.close()
    io_guest.close()


async def test_unanswered_request_loses_the_agent(guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    client, _, _ = guest
    other = client.register(2, False)
    with pytest.raises(VMError, match=r"no reply to PING within 0\.3 s"):
        await asyncio.wait_for(client.request(Msg.PING), 5)
    assert client.lost.result() == "no reply to PING within 0.3 s"
    with pytest.raises(VMError):  # everything waiting on the guest learns it
        await other.exit
    with pytest.raises(VMError, match="lost the guest agent"):
        await client.request(Msg.PING)


async def test_truncated_reply_loses_the_agent(guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    client, ctl, _ = guest
    req = asyncio.ensure_future(client.request(Msg.STATS))
    await asyncio.sleep(0.05)
    reply = encode_ctl(Msg.ACK, 1, {"containers": 1, "processes": 2, "fds": 3})
    ctl.sendall(reply[: len(reply) // 2])
    with pytest.raises(VMError, match="no reply to STATS"):
        await asyncio.wait_for(req, 5)


async def test_answered_request_is_not_timed_out(guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    client, ctl, _ = guest
    req = asyncio.ensure_future(client.request(Msg.PING))
    await asyncio.sleep(0.1)
    ctl.sendall(encode_ctl(Msg.ACK, 1))
    assert await asyncio.wait_for(req, 5) == {}
    await asyncio.sleep(0.5)
    assert not client.lost.done()


async def test_version_keeps_the_handshake_budget(guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    """VERSION is timed by the handshake's own budget (a cold boot may take long), not by reply_timeout."""
    client, ctl, _ = guest
    hs = asyncio.ensure_future(client.handshake(5))
    await asyncio.sleep(0.6)  # twice reply_timeout
    assert not hs.done()
    ctl.sendall(encode_ctl(Msg.ACK, 1, {"version": 1, "agent": "fake", "uptime_ms": 5}))
    assert await asyncio.wait_for(hs, 5) == "fake"
    assert not client.lost.done()


async def test_exited_without_eof_on_a_silent_stream_channel(
        guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    """The guest closed its stream channel (close-io): EXITED comes, the output's end never does."""
    client, ctl, _ = guest
    proc = client.register(4, False)
    ctl.sendall(encode_ctl(Msg.EXITED, 0, {"stream": 4, "status": 0}))
    assert await asyncio.wait_for(proc.exit, 5) == 0
    why = await asyncio.wait_for(client.lost, 5)
    assert why == "no end of output on stream 4 0.3 s after EXITED (stream channel silent)"
    assert await proc.stdout.get() is None and await proc.stderr.get() is None  # readers are not left hanging


async def test_eof_after_exited_is_fine(guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    """EOFs travel on the other channel: they may come after the EXITED, within eof_timeout."""
    client, ctl, io = guest
    proc = client.register(4, False)
    ctl.sendall(encode_ctl(Msg.EXITED, 0, {"stream": 4, "status": 3}))
    assert await asyncio.wait_for(proc.exit, 5) == 3
    await asyncio.sleep(0.1)
    io.sendall(encode_io(4, b"late output") + encode_io(4, b"") + encode_io(5, b""))
    assert await asyncio.wait_for(proc.stdout.get(), 5) == b"late output"
    assert await proc.stdout.get() is None and await proc.stderr.get() is None
    await asyncio.sleep(0.8)
    assert not client.lost.done()


async def test_a_consumer_holding_the_stream_back_is_not_the_guests_fault(
        guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    """A full output queue stops the stream reader (back-pressure): the EOFs behind it are late through no fault of
    the guest's."""
    client, ctl, io = guest
    proc = client.register(4, False)
    io.sendall(b"".join(encode_io(4, b"x") for _ in range(STREAM_QUEUE + 1)) + encode_io(4, b"") + encode_io(5, b""))
    await asyncio.sleep(0.1)
    assert proc.stdout.full()
    ctl.sendall(encode_ctl(Msg.EXITED, 0, {"stream": 4, "status": 0}))
    await asyncio.wait_for(proc.exit, 5)
    await asyncio.sleep(1.0)  # over three eof_timeouts
    assert not client.lost.done()
    chunks = []
    while (chunk := await asyncio.wait_for(proc.stdout.get(), 5)) is not None:
        chunks.append(chunk)
    assert len(chunks) == STREAM_QUEUE + 1 and await proc.stderr.get() is None
    await asyncio.sleep(0.5)
    assert not client.lost.done()


async def test_an_event_flood_does_not_fill_the_log(guest: tuple[AgentClient, socket.socket, socket.socket],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """EXITED for a process nobody is attached to (one an earlier hyperd started) is fine, and logged; a guest
    repeating it as fast as it can gets a few lines and a count, not a line each."""
    client, ctl, _ = guest
    client.max_stream = 8
    caplog.set_level(logging.INFO, logger="hypercontainer.protocol.client")
    proc = client.register(8, True)
    ctl.setblocking(False)  # the flood is more than the socket holds: sent as the client reads it
    await asyncio.get_running_loop().sock_sendall(ctl, encode_ctl(Msg.EXITED, 0, {"stream": 6, "status": 0}) * 20000
                                                  + encode_ctl(Msg.EXITED, 0, {"stream": 8, "status": 7}))
    assert await asyncio.wait_for(proc.exit, 10) == 7  # the events behind the flood still come
    lines = [r for r in caplog.records if "nobody was attached" in r.getMessage()]
    assert 64 <= len(lines) <= 66 and lines[-1].getMessage().endswith("(20000 such)"), len(lines)
    assert not client.lost.done()


async def test_a_paused_vm_is_not_silent(guest: tuple[AgentClient, socket.socket, socket.socket]) -> None:
    """While the VM's CPUs are stopped (hyperctl pause) a request waits without a timeout; it counts again from the
    unpause."""
    client, ctl, _ = guest
    client.paused = True
    req = asyncio.ensure_future(client.request(Msg.PING))
    await asyncio.sleep(1.0)  # over three reply_timeouts
    assert not req.done() and not client.lost.done()
    client.paused = False
    ctl.sendall(encode_ctl(Msg.ACK, 1))
    assert await asyncio.wait_for(req, 5) == {}
    with pytest.raises(VMError, match="no reply to PING"):  # unpaused, and silent: lost as ever
        await asyncio.wait_for(client.request(Msg.PING), 5)
