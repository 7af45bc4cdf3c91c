"""The real agent binary, built for the host, in test mode over socketpairs: no VM needed."""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from hypercontainer.errors import AgentError
from hypercontainer.image.unpack import unpack_layer
from hypercontainer.protocol.client import AgentClient, AgentRequestError, ProcessStreams, command_exit_code
from hypercontainer.protocol.codec import CTL_HDR, MountFlag, Msg, Phase


class Agent:
    """The agent binary over socketpairs; `root` stands in for the pod share, `cgroups` for its cgroup hierarchies
    (CONTAINER_STATS reads them; a test writes the counters it wants there)."""

    def __init__(self, binary: Path, root: Path | None = None, cgroups: Path | None = None) -> None:
        self.ctl, ctl_child = socket.socketpair()
        self.io, io_child = socket.socketpair()
        args = [str(binary), "--test", str(ctl_child.fileno()), str(io_child.fileno())]
        if root or cgroups:
            args.append(str(root or "/nonexistent"))
        if cgroups:
            args.append(str(cgroups))
        self.proc = subprocess.Popen(args, pass_fds=(ctl_child.fileno(), io_child.fileno()))
        ctl_child.close()
        io_child.close()

    async def __aenter__(self) -> AgentClient:
        self.client = AgentClient()
        await self.client.connect_sockets(self.ctl, self.io)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        self.proc.wait(5)


async def run(client: AgentClient, argv: list[str], stream: int = 2, stdin: bytes | None = None,
              _signal: int | None = None, _msg: Msg = Msg.NEW_CONTAINER, **extra: object) -> tuple[bytes, bytes, int]:
    """A process to its end (a new container's, or with _msg EXEC, one in a container); with _signal, that signal
    once its first line of output has arrived."""
    p = client.register(stream, bool(extra.get("terminal")))
    await client.request(_msg, {"id": f"c{stream}", "arg": argv, "stream": stream,
                                "stdin": int(stdin is not None), **extra})  # type: ignore[dict-item]
    if stdin is not None:
        await p.write_stdin(stdin)
        await p.close_stdin()
    if _signal is not None:
        first = await p.stdout.get()
        await client.request(Msg.SIGNAL, {"stream": stream, "signal": _signal})
        rest = b""
        while (chunk := await p.stdout.get()) is not None:
            rest += chunk
        return (first or b"") + rest, b"", await asyncio.wait_for(p.exit, 10)

    async def drain(q: asyncio.Queue) -> bytes:
        out = b""
        while (chunk := await q.get()) is not None:
            out += chunk
        return out

    out, err = await asyncio.gather(drain(p.stdout), drain(p.stderr))
    return out, err, await asyncio.wait_for(p.exit, 10)


@pytest.fixture
def agent(agent_host_binary: Path) -> Agent:
    return Agent(agent_host_binary)


async def test_handshake_and_ping(agent: Agent) -> None:
    async with agent as c:
        assert (await c.handshake(5)).startswith("hc-agent/")
        assert c.guest_uptime is not None
        assert await c.request(Msg.PING) == {}


async def test_requests_before_version_refused(agent: Agent) -> None:
    async with agent as c:
        with pytest.raises(AgentError, match="VERSION must be the first") as e:
            await c.request(Msg.PING)
        assert e.value.errno == errno.EPROTO


async def test_version_mismatch(agent: Agent) -> None:
    async with agent as c:
        with pytest.raises(AgentError, match="version 99 not supported") as e:
            await c.request(Msg.VERSION, {"version": 99})
        assert e.value.errno == errno.EPROTONOSUPPORT


async def test_unknown_type_and_bad_payload(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        with pytest.raises(AgentError) as e:
            await c.request(99)  # type: ignore[arg-type]
        assert e.value.errno == errno.ENOSYS
        # A u64 field with a 3-byte value: the agent answers EINVAL and keeps serving.
        fut = asyncio.get_running_loop().create_future()
        c._pending[500] = fut
        body = (1).to_bytes(2, "big") + (3).to_bytes(4, "big") + b"abc"
        c._ctl[1].write(CTL_HDR.pack(Msg.VERSION, 500, len(body)) + body)  # type: ignore[index]
        reply = await fut
        assert reply.type == Msg.ERROR and reply.fields["code"] == errno.EINVAL
        assert await c.request(Msg.PING) == {}


async def test_oversized_frame_from_host_is_refused(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        fut = asyncio.get_running_loop().create_future()
        c._pending[9] = fut
        c._ctl[1].write(CTL_HDR.pack(Msg.PING, 9, 2 << 20))  # type: ignore[index]
        reply = await fut
        assert reply.type == Msg.ERROR and reply.fields["code"] == errno.EMSGSIZE


async def test_process_stdio_and_exit_codes(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        out, err, code = await run(c, ["sh", "-c", "echo out; echo err >&2; exit 17"])
        assert (out, err, code) == (b"out\n", b"err\n", 17)
        out, _, code = await run(c, ["cat"], stream=4, stdin=b"abc" * 100000)
        assert out == b"abc" * 100000 and code == 0
        _, _, code = await run(c, ["sh", "-c", "kill -9 $$"], stream=6)
        assert code == 128 + 9


async def test_env_cwd_and_signal(agent: Agent, tmp_path: Path) -> None:
    async with agent as c:
        await c.handshake(5)
        out, _, _ = await run(c, ["sh", "-c", 'echo "$A $PWD"'], env=["A=1", "PATH=/usr/bin:/bin"], cwd=str(tmp_path))
        assert out.decode().strip() == f"1 {tmp_path}"
        p = c.register(8, False)
        await c.request(Msg.NEW_CONTAINER, {"id": "sleeper", "arg": ["sleep", "30"], "stream": 8})
        await c.request(Msg.SIGNAL, {"stream": 8, "signal": 15})
        assert await asyncio.wait_for(p.exit, 10) == 128 + 15
        with pytest.raises(AgentError) as e:
            await c.request(Msg.SIGNAL, {"stream": 8, "signal": 15})
        assert e.value.errno == errno.ESRCH


async def test_missing_command_is_a_clear_error(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        c.register(2, False)
        with pytest.raises(AgentError, match="exec no-such-command: No such file or directory") as e:
            await c.request(Msg.NEW_CONTAINER, {"id": "x", "arg": ["no-such-command"], "stream": 2})
        assert e.value.errno == errno.ENOENT
        with pytest.raises(AgentError, match="stream id must be even"):
            await c.request(Msg.NEW_CONTAINER, {"id": "y", "arg": ["true"], "stream": 3})
        with pytest.raises(AgentError, match="invalid container id"):
            await c.request(Msg.NEW_CONTAINER, {"id": "../x", "arg": ["true"], "stream": 4})


async def test_terminal(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        out, err, code = await run(c, ["sh", "-c", "tty; stty size"], terminal=1)
        assert code == 0 and err == b""
        assert b"/dev/pts/" in out
        out, err, code = await run(c, ["stty", "size"], stream=4, terminal=1, rows=33, cols=101)
        assert (out.strip(), code) == (b"33 101", 0)  # sized before the process starts: no WINSIZE race


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_container_root_and_isolation(agent_host_binary: Path, busybox_tar: Path, tmp_path: Path) -> None:
    """NEW_CONTAINER with a rootfs: own mount namespace, pivot_root, /proc and /dev inside; host untouched."""
    share = tmp_path / "share"
    share.mkdir()
    with tarfile.open(busybox_tar) as outer:
        layer = outer.extractfile("layer/layer.tar")
        assert layer
        unpack_layer(layer, share / "c1")  # type: ignore[arg-type]
    mounts_before = Path("/proc/self/mountinfo").read_text()
    async with Agent(agent_host_binary, share) as c:
        await c.handshake(5)
        out, err, code = await run(c, ["sh", "-c", "cat /etc/passwd | head -1; ls /dev; id -u; ls /proc/1/"],
                                   rootfs="c1", uid=1000, gid=1000)
        assert code == 0, err
        lines = out.decode().split()
        assert lines[0] == "root:x:0:0:root:/root:/bin/sh"
        assert "null" in lines and "pts" in lines and "1000" in lines
        with pytest.raises(AgentError, match="not a clean relative path"):
            c.register(4, False)
            await c.request(Msg.NEW_CONTAINER, {"id": "other", "rootfs": "../etc", "arg": ["true"], "stream": 4})
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    shutil.rmtree(share)


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_hold_then_start_container(agent_host_binary: Path, busybox_tar: Path, tmp_path: Path) -> None:
    """NEW_CONTAINER with hold: the process is set up on its root and waits (no output, not yet exec'd) until
    START_CONTAINER, which answers once it runs. As with runc's create, the steps that can fail (the working
    directory, the file to exec looked up in PATH) fail NEW_CONTAINER, with their phase; the exec that is left
    fails START_CONTAINER (with its phase) and the process exits 127; a held process can be killed; only a held
    container can be started."""
    share = tmp_path / "share"
    share.mkdir()
    for name in ("c1", "c2", "c3", "c4"):
        with tarfile.open(busybox_tar) as outer:
            layer = outer.extractfile("layer/layer.tar")
            assert layer
            unpack_layer(layer, share / name)  # type: ignore[arg-type]
    async with Agent(agent_host_binary, share) as c:
        await c.handshake(5)
        p = c.register(2, False)
        pid = (await c.request(Msg.NEW_CONTAINER, {"id": "c1", "rootfs": "c1", "arg": ["sh", "-c", "echo started"],
                                                   "stream": 2, "hold": 1}))["pid"]
        assert Path(f"/proc/{pid}/exe").resolve() == agent_host_binary.resolve()  # not exec'd yet
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(p.stdout.get(), 0.3)
        reply = await c.request(Msg.START_CONTAINER, {"id": "c1"})
        assert reply["pid"] == pid
        assert await p.stdout.get() == b"started\n" and await asyncio.wait_for(p.exit, 10) == 0
        e = await _refused(c, Msg.START_CONTAINER, 0, id="c1")
        assert e.errno == errno.EINVAL and "not waiting to start" in e.message
        e = await _refused(c, Msg.START_CONTAINER, 0, id="nope")
        assert e.errno == errno.ENOENT
        e = await _refused(c, Msg.NEW_CONTAINER, 4, id="c2", rootfs="c2", arg=["true"], cwd="/no/such", hold=1)
        assert (e.phase, e.errno, command_exit_code(e)) == (Phase.CHDIR, errno.ENOENT, 127)
        e = await _refused(c, Msg.NEW_CONTAINER, 4, id="c2", rootfs="c2", arg=["no-such-command"], hold=1)
        assert (e.phase, e.errno, command_exit_code(e)) == (Phase.EXEC, errno.ENOENT, 127)
        p = await _started(c, Msg.NEW_CONTAINER, 10, id="c4", rootfs="c4", arg=["true"], hold=1)
        (share / "c4" / "bin" / "true").unlink()  # found at the hold, gone by START: only the exec is left to fail
        e = await _refused(c, Msg.START_CONTAINER, 0, id="c4")
        assert (e.phase, e.errno, command_exit_code(e)) == (Phase.EXEC, errno.ENOENT, 127)
        assert await asyncio.wait_for(p.exit, 10) == 127
        p = await _started(c, Msg.NEW_CONTAINER, 6, id="c3", rootfs="c3", arg=["true"], hold=1)
        await c.request(Msg.SIGNAL, {"stream": 6, "signal": 9})
        assert await asyncio.wait_for(p.exit, 10) == 137
        e = await _refused(c, Msg.START_CONTAINER, 0, id="c3")
        assert e.errno == errno.EINVAL
        e = await _refused(c, Msg.EXEC, 8, id="c1", arg=["true"], hold=1)
        assert e.errno == errno.EINVAL and "NEW_CONTAINER only" in e.message
    shutil.rmtree(share)


async def test_stream_zero_echoes(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        await c.io_ping(5)


async def test_rlimits(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        out, _, code = await run(c, ["sh", "-c", "ulimit -n; ulimit -Hn"], rlimit=["nofile:100:200"])
        assert (out, code) == (b"100\n200\n", 0)
        c.register(4, False)
        with pytest.raises(AgentError, match="unknown rlimit"):
            await c.request(Msg.NEW_CONTAINER, {"id": "r", "arg": ["true"], "stream": 4, "rlimit": ["bogus:1:1"]})


def _busybox_share(busybox_tar: Path, share: Path, *names: str) -> None:
    share.mkdir()
    for name in names:
        with tarfile.open(busybox_tar) as outer:
            layer = outer.extractfile("layer/layer.tar")
            assert layer
            unpack_layer(layer, share / name)  # type: ignore[arg-type]


def _status(out: bytes) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_container_boundary(agent_host_binary: Path, busybox_tar: Path, tmp_path: Path) -> None:
    """A container on a root: PID 1 of its own PID namespace, docker's default capabilities, runc's masked and
    read-only /proc paths; capability fields and no_new_privs as given; an EXEC gets the container's."""
    share = tmp_path / "share"
    _busybox_share(busybox_tar, share, "c1", "c2")
    mounts_before = Path("/proc/self/mountinfo").read_text()
    async with Agent(agent_host_binary, share) as c:
        await c.handshake(5)
        script = ("tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/self/status; wc -c < /proc/timer_list; "
                  "echo 1 > /proc/sys/kernel/domainname || echo RO; mount -t tmpfs x /tmp || echo NOMOUNT")
        out, err, code = await run(c, ["sh", "-c", script], rootfs="c1")
        assert code == 0, err
        lines = out.decode().splitlines()
        assert lines[0].startswith("sh -c tr")  # PID 1 in there is the container's own first process
        st = _status(out)
        assert int(st["CapBnd"], 16) == int(st["CapEff"], 16) == 0xA80425FB and int(st["CapInh"], 16) == 0
        assert st["NoNewPrivs"] == "0" and "RO" in lines and "NOMOUNT" in lines
        if Path("/proc/timer_list").exists():
            assert lines[lines.index("RO") - 1].strip() == "0"  # masked: /dev/null bound over it
        assert b"Read-only file system" in err

        # Given sets and no_new_privs; an EXEC without them gets the container's, with them its own.
        p = c.register(4, False)
        await c.request(Msg.NEW_CONTAINER, {"id": "c2", "rootfs": "c2", "arg": ["sleep", "30"], "stream": 4,
                                            "cap_bounding": 0x3, "cap_effective": 0x1, "cap_permitted": 0x3,
                                            "no_new_privs": 1})
        c.register(6, False)
        await c.request(Msg.EXEC, {"id": "c2", "arg": ["sh", "-c", "cat /proc/self/status; cat /proc/1/comm"],
                                   "stream": 6})
        out = b"".join([x async for x in _drain(c, 6)])
        st = _status(out)
        assert int(st["CapBnd"], 16) == 0x3 and int(st["CapEff"], 16) == 0x3 and st["NoNewPrivs"] == "1"
        assert out.decode().splitlines()[-1] == "sleep"  # it joined the container's PID namespace
        c.register(8, False)
        await c.request(Msg.EXEC, {"id": "c2", "arg": ["grep", "CapEff", "/proc/self/status"], "stream": 8,
                                   "cap_bounding": 0x1, "cap_effective": 0x1, "cap_permitted": 0x1})
        assert b"".join([x async for x in _drain(c, 8)]).split() == [b"CapEff:", b"0000000000000001"]
        # The container's PID 1 has no TERM handler: the kernel would drop the host's signal; the agent kills
        # it as TERM would have (143), where before this signal just did nothing in a PID namespace.
        await c.request(Msg.SIGNAL, {"stream": 4, "signal": 15})
        assert await asyncio.wait_for(p.exit, 10) == 128 + 15
        # One with a handler gets the signal itself.
        out, _, code = await run(c, ["sh", "-c", "trap 'echo caught; exit 7' TERM; echo ready; "
                                     "while :; do sleep 0.1; done"], stream=10, rootfs="c1", _signal=15)
        assert (out, code) == (b"ready\ncaught\n", 7)
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    shutil.rmtree(share)


async def _drain(c: AgentClient, stream: int):
    p = c._procs[stream]
    while (chunk := await p.stdout.get()) is not None:
        yield chunk
    await asyncio.wait_for(p.exit, 10)


# ---- REMOVE_CONTAINER and STATS ------------------------------------------------------------------------------

async def _stats(c: AgentClient) -> tuple[int, int, int]:
    r = await c.request(Msg.STATS)
    return int(r["containers"]), int(r["processes"]), int(r["fds"])  # type: ignore[arg-type]


async def _started(c: AgentClient, msg: Msg, stream: int, **fields: object) -> ProcessStreams:
    p = c.register(stream, False)
    await c.request(msg, {"stream": stream, **fields})  # type: ignore[dict-item]
    return p


async def test_remove_container_frees_its_name_and_slot(agent: Agent) -> None:
    """Create, exit, remove: the id is unknown afterwards (no EXEC into it), the slot count is back, and a new
    container of the same name starts; removing it twice names it as unknown."""
    async with agent as c:
        await c.handshake(5)
        base = await _stats(c)
        p = await _started(c, Msg.NEW_CONTAINER, 2, id="web", arg=["true"])
        assert await asyncio.wait_for(p.exit, 10) == 0
        assert (await _stats(c))[0] == base[0] + 1  # an exited container keeps its slot until removed
        await c.request(Msg.REMOVE_CONTAINER, {"id": "web"})
        assert await _stats(c) == base
        c.register(4, False)
        with pytest.raises(AgentError, match="no container web") as e:
            await c.request(Msg.EXEC, {"id": "web", "arg": ["true"], "stream": 4})
        assert e.value.errno == errno.ENOENT
        c.unregister(4)
        with pytest.raises(AgentError, match="no container web") as e:
            await c.request(Msg.REMOVE_CONTAINER, {"id": "web"})
        assert e.value.errno == errno.ENOENT
        out, _, code = await run(c, ["echo", "again"], stream=6, id="web")
        assert (out, code) == (b"again\n", 0)


async def test_remove_refuses_a_running_or_unknown_container(agent: Agent) -> None:
    async with agent as c:
        await c.handshake(5)
        p = await _started(c, Msg.NEW_CONTAINER, 2, id="sleeper", arg=["sleep", "30"])
        with pytest.raises(AgentError, match="container sleeper is running: stop it first") as e:
            await c.request(Msg.REMOVE_CONTAINER, {"id": "sleeper"})
        assert e.value.errno == errno.EBUSY
        out, _, code = await run(c, ["echo", "still here"], stream=4, id="sleeper", _msg=Msg.EXEC)
        assert (out, code) == (b"still here\n", 0)  # refused, so nothing of it went
        await c.request(Msg.SIGNAL, {"stream": 2, "signal": 9})
        assert await asyncio.wait_for(p.exit, 10) == 137
        await c.request(Msg.REMOVE_CONTAINER, {"id": "sleeper"})
        with pytest.raises(AgentError, match="no container no-such-ctr") as e:
            await c.request(Msg.REMOVE_CONTAINER, {"id": "no-such-ctr"})
        assert e.value.errno == errno.ENOENT


async def test_remove_kills_what_outlived_the_first_process(agent: Agent) -> None:
    """In test mode containers share the host's PID namespace (as a pod's shared one would): an EXECed process
    outlives the first one, and REMOVE ends it; its EXITED still comes."""
    async with agent as c:
        await c.handshake(5)
        first = await _started(c, Msg.NEW_CONTAINER, 2, id="c", arg=["sleep", "30"])
        execed = await _started(c, Msg.EXEC, 4, id="c", arg=["sleep", "30"])
        await c.request(Msg.SIGNAL, {"stream": 2, "signal": 9})
        assert await asyncio.wait_for(first.exit, 10) == 137
        assert not execed.exit.done()
        await c.request(Msg.REMOVE_CONTAINER, {"id": "c"})
        assert await asyncio.wait_for(execed.exit, 10) == 137
        assert (await _stats(c))[:2] == (0, 0)


async def test_300_container_cycles_leave_the_agent_as_it_was(agent: Agent) -> None:
    """create → exit → remove, 300 times under one name: the agent's container and process slots and its open
    fds end where they started; with no container left it keeps serving."""
    async with agent as c:
        await c.handshake(5)
        base = await _stats(c)
        for i in range(300):
            p = await _started(c, Msg.NEW_CONTAINER, 2 + 2 * i, id="cycle", arg=["true"])
            assert await asyncio.wait_for(p.exit, 10) == 0
            c.unregister(2 + 2 * i)
            await c.request(Msg.REMOVE_CONTAINER, {"id": "cycle"})
        assert await _stats(c) == base
        assert base[:2] == (0, 0)
        assert await c.request(Msg.PING) == {}
        out, _, code = await run(c, ["echo", "later"], stream=1000, id="later")
        assert (out, code) == (b"later\n", 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_remove_closes_the_container_namespaces(agent_host_binary: Path, busybox_tar: Path,
                                                      tmp_path: Path) -> None:
    """A container on a root holds its mount and PID namespaces (two fds in the agent) until it is removed:
    cycles on a root end with the fds where they started, each exited container held them until REMOVE."""
    share = tmp_path / "share"
    _busybox_share(busybox_tar, share, "c1")
    async with Agent(agent_host_binary, share) as c:
        await c.handshake(5)
        base = None
        for i in range(301):
            p = await _started(c, Msg.NEW_CONTAINER, 2 + 2 * i, id="rooted", rootfs="c1", arg=["true"])
            assert await asyncio.wait_for(p.exit, 10) == 0
            c.unregister(2 + 2 * i)
            held = await _stats(c)
            await c.request(Msg.REMOVE_CONTAINER, {"id": "rooted"})
            if base is None:  # after the first: the agent keeps its own PID namespace's fd from then on
                base = await _stats(c)
            assert await _stats(c) == base and base[0] == 0
            assert held == (1, 0, base[2] + 2)
    shutil.rmtree(share)


# ---- the failing phase ---------------------------------------------------------------------------------------

async def _refused(c: AgentClient, msg: Msg, stream: int, **fields: object) -> AgentRequestError:
    c.register(stream, False)
    with pytest.raises(AgentRequestError) as e:
        await c.request(msg, {"stream": stream, **fields})  # type: ignore[dict-item]
    c.unregister(stream)
    return e.value


async def test_failure_phase_exec_and_chdir(agent: Agent, tmp_path: Path) -> None:
    """The ERROR says which step failed: exec (not found: 127, not executable: 126), chdir; none for a request
    refused before any step; a failed start keeps no container slot."""
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    async with agent as c:
        await c.handshake(5)
        base = await _stats(c)
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="x", arg=["no-such-command"])
        assert (e.phase, e.errno, command_exit_code(e)) == (Phase.EXEC, errno.ENOENT, 127)
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="x", arg=[str(plain)])
        assert (e.phase, e.errno, command_exit_code(e)) == (Phase.EXEC, errno.EACCES, 126)
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="x", arg=["true"], cwd=str(tmp_path / "gone"))
        assert (e.phase, e.errno, command_exit_code(e)) == (Phase.CHDIR, errno.ENOENT, 127)
        assert "chdir to working directory" in e.message
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="x", arg=["true"], rlimit=["nofile:10:5"])
        assert (e.phase, command_exit_code(e)) == (Phase.RLIMIT, None)  # soft over hard: setrlimit refuses
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="x", arg=["true"], cwd="relative")
        assert (e.phase, e.errno, command_exit_code(e)) == (None, errno.EINVAL, None)
        assert await _stats(c) == base
        p = await _started(c, Msg.NEW_CONTAINER, 2, id="x", arg=["sleep", "30"])
        e = await _refused(c, Msg.EXEC, 4, id="x", arg=["no-such-command"])
        assert (e.phase, command_exit_code(e)) == (Phase.EXEC, 127)
        await c.request(Msg.SIGNAL, {"stream": 2, "signal": 9})
        await asyncio.wait_for(p.exit, 10)


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_failure_phase_mount(agent_host_binary: Path, busybox_tar: Path, tmp_path: Path) -> None:
    share = tmp_path / "share"
    _busybox_share(busybox_tar, share, "c1")
    async with Agent(agent_host_binary, share) as c:
        await c.handshake(5)
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="m", rootfs="c1", arg=["true"], mount_src=["no-such-dir"],
                           mount_dst=["/mnt"], mount_flags=[MountFlag.READONLY])
        assert (e.phase, e.errno) == (Phase.MOUNT, errno.ENOENT) and "mount volume" in e.message
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="m", rootfs="c1", arg=["true"], mount_src=["c1"],
                           mount_dst=["/mnt"], mount_flags=[8])
        assert (e.phase, e.errno) == (None, errno.EINVAL) and "invalid mount flags 8" in e.message
    shutil.rmtree(share)


# ---- seccomp, masked and read-only paths ------------------------------------------------------------------------
def _filter(**profile: object) -> str:
    from hypercontainer.spec.seccomp import compile_filter

    return compile_filter({"defaultAction": "SCMP_ACT_ALLOW", **profile})[0]


NO_MKDIR = {"syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}]}


async def test_seccomp_filter_for_the_container_and_its_execs(agent: Agent, tmp_path: Path) -> None:
    """The container's filter is loaded before exec; an EXEC without one gets the container's, with one its own;
    a filter the kernel refuses fails in phase seccomp, one that is not base64 is refused before any step."""
    no_mkdir = _filter(**NO_MKDIR)
    async with agent as c:
        await c.handshake(5)
        base = await _stats(c)
        out, err, code = await run(c, ["sh", "-c", f"mkdir {tmp_path}/a; grep ^Seccomp: /proc/self/status"],
                                   seccomp=no_mkdir)
        assert b"Operation not permitted" in err and out.split() == [b"Seccomp:", b"2"] and code == 0
        assert not (tmp_path / "a").exists()
        p = await _started(c, Msg.NEW_CONTAINER, 4, id="s", arg=["sleep", "30"], seccomp=no_mkdir)
        out, err, code = await run(c, ["mkdir", f"{tmp_path}/b"], stream=6, _msg=Msg.EXEC, id="s")
        assert code == 1 and b"Operation not permitted" in err and not (tmp_path / "b").exists()
        out, err, code = await run(c, ["mkdir", f"{tmp_path}/b"], stream=8, _msg=Msg.EXEC, id="s",
                                   seccomp=_filter())
        assert code == 0 and (tmp_path / "b").is_dir(), err
        await c.request(Msg.SIGNAL, {"stream": 4, "signal": 9})
        await asyncio.wait_for(p.exit, 10)
        for cid in ("s", "c2"):
            await c.request(Msg.REMOVE_CONTAINER, {"id": cid})

        bad_insn = base64.b64encode(bytes.fromhex("ffff0000000000ff")).decode()
        e = await _refused(c, Msg.NEW_CONTAINER, 10, id="x", arg=["true"], seccomp=bad_insn)
        assert (e.phase, e.errno) == (Phase.SECCOMP, errno.EINVAL) and "load the seccomp filter" in e.message
        for fields, why in (({"seccomp": "not base64!"}, "not base64"), ({"seccomp": ""}, "not base64"),
                            ({"seccomp": no_mkdir, "seccomp_flags": 1}, "seccomp_flags 1"),
                            ({"seccomp_flags": 2}, "seccomp_flags without seccomp")):
            e = await _refused(c, Msg.NEW_CONTAINER, 10, id="x", arg=["true"], **fields)
            assert (e.phase, e.errno) == (None, errno.EINVAL) and why in e.message, e.message
        assert await _stats(c) == base  # no slot, no fd left by a failed start


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid and capabilities need root")
async def test_seccomp_goes_in_where_runc_puts_it(agent: Agent) -> None:
    """Without no_new_privs the filter goes in while the agent's child still has CAP_SYS_ADMIN, before the uid
    change, so a filter refusing setgroups fails the user step; with no_new_privs it goes in just before exec,
    after the uid change and the capability sets (which it then no longer sees)."""
    no_setgroups = _filter(syscalls=[{"names": ["setgroups"], "action": "SCMP_ACT_ERRNO"}])
    user = {"uid": 65534, "gid": 65534, "cap_bounding": 0, "cap_effective": 0, "cap_permitted": 0}
    async with agent as c:
        await c.handshake(5)
        e = await _refused(c, Msg.NEW_CONTAINER, 2, id="x", arg=["true"], seccomp=no_setgroups, no_new_privs=0,
                           **user)
        assert (e.phase, e.errno) == (Phase.USER, errno.EPERM) and "setgroups" in e.message
        out, err, code = await run(c, ["sh", "-c", "grep -E '^(Uid|NoNewPrivs|Seccomp):' /proc/self/status"],
                                   seccomp=no_setgroups, no_new_privs=1, **user)
        st = _status(out)
        assert (code, err, st["Seccomp"], st["NoNewPrivs"], st["Uid"].split()[0]) == (0, b"", "2", "1", "65534")


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_masked_and_readonly_paths_as_given(agent_host_binary: Path, busybox_tar: Path, tmp_path: Path) -> None:
    """masked_paths / readonly_paths replace runc's defaults; an empty list (one empty entry) is none; without
    them the defaults stay; paths that are not clean are refused."""
    share = tmp_path / "share"
    _busybox_share(busybox_tar, share, "c1")
    root = share / "c1"
    (root / "etc" / "secret").write_text("password\n")
    (root / "data").mkdir()
    (root / "data" / "file").write_text("x\n")
    (root / "ro").mkdir()
    script = ("cat /etc/secret; ls /data; touch /ro/x && echo WROTE; "
              "grep -c ' /proc/sys ' /proc/self/mountinfo; grep -c ' /proc/keys ' /proc/self/mountinfo; true")
    async with Agent(agent_host_binary, share) as c:
        await c.handshake(5)
        out, err, code = await run(c, ["sh", "-c", script], rootfs="c1", masked_paths=["/etc/secret", "/data",
                                   "/no/such"], readonly_paths=["/ro"])
        assert (code, out.split()) == (0, [b"0", b"0"]) and b"Read-only file system" in err, (out, err)
        out, err, code = await run(c, ["sh", "-c", script], stream=4, rootfs="c1", masked_paths=[""],
                                   readonly_paths=[""])
        assert (code, out.split()) == (0, [b"password", b"file", b"WROTE", b"0", b"0"]), (out, err)  # none
        (root / "ro" / "x").unlink()
        out, err, code = await run(c, ["sh", "-c", script], stream=6, rootfs="c1")
        assert (code, out.split()) == (0, [b"password", b"file", b"WROTE", b"1", b"1"]), (out, err)  # runc's
        for paths in (["/a/../b"], ["relative"], ["/"], ["", "/a"]):
            e = await _refused(c, Msg.NEW_CONTAINER, 8, id="x", rootfs="c1", arg=["true"], masked_paths=paths)
            assert (e.phase, e.errno) == (None, errno.EINVAL) and "masked_paths" in e.message
    shutil.rmtree(share)
