"""Reproducers of bugs the fuzzers found in files this work may not change (their owners fix them): each test fails
until its bug is fixed, so this file is left out of the suite (pytest's testpaths is tests/). Run it by name:
`.venv/bin/pytest -q fuzz/test_open_bugs.py`. With a fix, move the vector from tests/vectors/fuzz-open/ to
tests/vectors/fuzz/ (the short pass replays it from then on) and drop its workaround (named in each test)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OPEN = REPO / "tests" / "vectors" / "fuzz-open"
AGENT = REPO / "src" / "hypercontainer" / "guest" / "agent"


def test_agent_client_hangup_during_request() -> None:
    """protocol/client.py: a guest that hangs up while a request is being written makes request() raise
    ConnectionResetError (from StreamWriter.drain) instead of VMError ("lost the guest agent"), which is what its
    callers handle. Vector: tests/vectors/fuzz-open/agent_client/hangup-during-request (the empty input: the guest
    closes both channels at once). Fix: in request(), `except (ConnectionError, OSError) as e: self._fail(...);
    raise VMError(f"lost the guest agent: {e}") from None` around write/drain. Workaround in fuzz/agent_client.py:
    the guest reads both requests before it answers or hangs up."""
    from hypercontainer.errors import VMError
    from hypercontainer.protocol.client import AgentClient
    from hypercontainer.protocol.codec import Msg

    async def main() -> None:
        ctl_host, ctl_guest = socket.socketpair()
        io_host, io_guest = socket.socketpair()
        client = AgentClient()
        await client.connect_sockets(ctl_host, io_host)
        ctl_guest.close()
        io_guest.close()
        try:
            with pytest.raises(VMError):
                await client.request(Msg.PING, None)
        finally:
            await client.close()

    asyncio.run(main())
