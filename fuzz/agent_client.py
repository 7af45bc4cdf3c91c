"""protocol/client.py: an AgentClient on socketpairs, its guest ends written by a hostile guest.

The client has a handshake request, a PING in flight and two registered processes (one with a terminal); the
fuzzed bytes go, in fuzzed chunks, to the control or the stream channel, and the guest ends are closed. The
reader tasks must end with the connection marked lost and no exception of their own (their documented way out
of a protocol breach is ProtocolError, caught inside: `lost` says why); the pending requests end with a reply,
AgentRequestError, VMError or ProtocolError; a process's exit, if set to an error, is VMError. The output queues
are drained as hyperd's consumers drain them (a full queue holds the stream reader back by design)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import atheris

with atheris.instrument_imports(include=["hypercontainer.protocol"]):
    from hypercontainer.errors import VMError
    from hypercontainer.protocol.client import AgentClient, AgentRequestError
    from hypercontainer.protocol.codec import Msg, ProtocolError

logging.disable(logging.CRITICAL)  # each breach is logged; a million times is noise
LOOP = asyncio.new_event_loop()
ALLOWED: tuple[type[BaseException], ...] = (AgentRequestError, VMError, ProtocolError)


async def _drain(q: asyncio.Queue) -> None:
    while True:
        await q.get()


def parse(data: bytes) -> tuple[int, bool, list[tuple[bool, bytes]]]:
    """data: a flags byte (bits 0-3: max_stream, bit 4: takeover), then writes: a byte (bit 0: control channel,
    else stream), a 16-bit big-endian length, that many bytes (the last write takes what is left)."""
    if not data:
        return 0, False, []
    max_stream, takeover = data[0] & 15, bool(data[0] & 16)
    writes, off = [], 1
    while off < len(data):
        on_ctl = bool(data[off] & 1)
        n = int.from_bytes(data[off + 1 : off + 3], "big")
        writes.append((on_ctl, data[off + 3 : off + 3 + n]))
        off += 3 + n
    return max_stream, takeover, writes


async def _one(data: bytes) -> None:
    max_stream, takeover, writes = parse(data)

    ctl_host, ctl_guest = socket.socketpair()
    io_host, io_guest = socket.socketpair()
    client = AgentClient()
    client.max_stream, client.takeover = max_stream, takeover
    drains: list[asyncio.Task] = []
    try:
        await client.connect_sockets(ctl_host, io_host)
        procs = [client.register(2, False), client.register(4, True)]
        drains = [asyncio.create_task(_drain(q)) for p in procs for q in (p.stdout, p.stderr)]
        version = asyncio.create_task(client.handshake(5))
        ping = asyncio.create_task(client.request(Msg.PING))
        await asyncio.sleep(0)  # the requests go out (a hang-up while they are written is a VMError too)
        ctl_guest.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            ctl_guest.recv(1 << 16)
        guest = {True: ctl_guest, False: io_guest}
        for on_ctl, chunk in writes:
            if chunk and not client.lost.done():
                with contextlib.suppress(OSError):  # the client may have hung up on an earlier breach
                    guest[on_ctl].sendall(chunk)
                await asyncio.sleep(0)
        ctl_guest.close()
        io_guest.close()
        await asyncio.wait_for(asyncio.shield(client.lost), 10)
        for t in client._tasks:  # the readers end by themselves: end of file or a breach
            await asyncio.wait_for(asyncio.shield(t), 10)
            assert t.exception() is None, t.exception()
        for req in (version, ping):
            with contextlib.suppress(*ALLOWED):
                await asyncio.wait_for(req, 10)
        for p in procs:  # each process's exit is a status, or the lost connection
            if p.exit.done() and not p.exit.cancelled() and p.exit.exception() is not None:
                assert isinstance(p.exit.exception(), VMError), p.exit.exception()
    finally:
        for d in drains:
            d.cancel()
        await client.close()
        for s in (ctl_guest, io_guest):
            s.close()


def test_one(data: bytes) -> None:
    LOOP.run_until_complete(_one(data))
