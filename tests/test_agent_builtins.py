"""The agent's builtins (archive, extract, stat, ps: docs/protocol.md, "Builtins") in the real agent binary built for
the host, in test mode over socketpairs (no VM), through protocol/agent.py's exec API."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import socket
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hypercontainer.errors import AgentError
from hypercontainer.protocol.agent import Agent as AgentAPI
from hypercontainer.protocol.agent import ExecRequest, ProcessRequest
from hypercontainer.protocol.client import AgentClient
from hypercontainer.protocol.codec import Msg

from .test_agent import Agent, _busybox_share

_streams = iter(range(4, 1 << 30, 2))


@contextlib.asynccontextmanager
async def container(binary: Path, share: Path | None = None, rootfs: str | None = None) -> AsyncIterator[AgentClient]:
    """An agent with a container "c" whose first process sleeps (on `rootfs` in `share`, or in test mode on the
    host's root); killed at the end."""
    async with Agent(binary, share) as c:
        await c.handshake(5)
        p = c.register(2, False)
        await c.request(Msg.NEW_CONTAINER, {"id": "c", "arg": ["sleep", "60"], "stream": 2,
                                            **({"rootfs": rootfs} if rootfs else {})})
        try:
            yield c
        finally:
            await c.request(Msg.SIGNAL, {"stream": 2, "signal": 9})
            await asyncio.wait_for(p.exit, 10)


async def _drain(q: asyncio.Queue[bytes | None]) -> bytes:
    out = b""
    while (chunk := await q.get()) is not None:
        out += chunk
    return out


async def builtin(c: AgentClient, *args: str, stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
    """An EXEC of the builtin args[0] in container "c", to its end: stdout, stderr, exit status."""
    req = ExecRequest(id="c", stream=next(_streams), builtin=True,
                      process=ProcessRequest(arg=args, stdin=stdin is not None))
    p = await AgentAPI(c).exec(req)

    async def feed() -> None:
        if stdin is not None:
            await p.write_stdin(stdin)
            await p.close_stdin()

    out, err, _ = await asyncio.gather(_drain(p.stdout), _drain(p.stderr), feed())
    return out, err, await asyncio.wait_for(p.exit, 30)


def _tree(root: Path) -> str:
    """A tree with what a tar can hold; returns the md5 of its 10 MB file."""
    big = os.urandom(10 << 20)
    (root / "sub" / ("d" * 120)).mkdir(parents=True)
    (root / "empty").mkdir(mode=0o700)
    (root / "big").write_bytes(big)
    (root / "small").write_text("hello\n")
    (root / "small").chmod(0o640)
    (root / "sub" / "exec").write_text("#!/bin/sh\n")
    (root / "sub" / "exec").chmod(0o4755)
    (root / "sub" / ("d" * 120) / ("f" * 150)).write_text("long\n")
    (root / "link").symlink_to("small")
    (root / "sub" / "longlink").symlink_to("t" * 200)
    os.link(root / "small", root / "sub" / "hard")
    os.mkfifo(root / "fifo", 0o620)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
    return hashlib.md5(big).hexdigest()


async def test_archive_reads_as_tarfile(agent_host_binary: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    md5 = _tree(src)
    async with container(agent_host_binary) as c:
        out, err, code = await builtin(c, "archive", str(src))
        assert code == 0, err
        assert b"sock: a socket, skipped" in err and len(out) % 512 == 0
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            members = {m.name: m for m in tar.getmembers()}
            big = tar.extractfile("src/big")
            assert big and hashlib.md5(big.read()).hexdigest() == md5
        long_dir = "src/sub/" + "d" * 120
        assert set(members) == {"src", "src/big", "src/empty", "src/fifo", "src/link", "src/small", "src/sub",
                                "src/sub/exec", "src/sub/hard", "src/sub/longlink", long_dir,
                                f"{long_dir}/{'f' * 150}"}
        for name, m in members.items():
            st = (tmp_path / name).lstat()
            assert (m.mode, m.uid, m.gid, m.mtime) == (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                                       int(st.st_mtime)), name
        assert members["src"].isdir() and members["src/empty"].isdir() and members["src/fifo"].isfifo()
        assert members["src/big"].size == 10 << 20 and members["src/small"].size == 6
        assert members["src/link"].issym() and members["src/link"].linkname == "small"
        assert members["src/sub/longlink"].linkname == "t" * 200
        assert members["src/sub/hard"].islnk() and members["src/sub/hard"].linkname == "src/small"

        # DIR/.: its contents, named relative to it; a final symlink is archived as itself unless followed.
        out, err, code = await builtin(c, "archive", f"{src}/sub/.")
        assert code == 0, err
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            assert {"exec", "hard", "longlink", "d" * 120} <= set(tar.getnames()) and "sub" not in tar.getnames()
        (tmp_path / "tosub").symlink_to(src / "sub")
        out, _, code = await builtin(c, "archive", str(tmp_path / "tosub"))
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            assert code == 0 and tar.getnames() == ["tosub"]
        out, _, code = await builtin(c, "archive", f"{tmp_path}/tosub/")
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            assert code == 0 and "tosub/exec" in tar.getnames()

        _, err, code = await builtin(c, "archive", str(tmp_path / "missing"))
        assert (code, err) == (1, f"archive {tmp_path}/missing: No such file or directory\n".encode())
        _, err, code = await builtin(c, "archive", "relative")
        assert code == 1 and b"not an absolute path" in err


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, type: bytes = tarfile.REGTYPE, size: int = 0, link: str = "",
          mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode, info.mtime = type, size, link, mode, 1_000_000_000
    return info


async def test_extract_a_tarfile_archive(agent_host_binary: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    (src / "sock").unlink()
    os.lchown(src / "small", 1234, 5678) if os.geteuid() == 0 else None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, "src")
    data = buf.getvalue()
    async with container(agent_host_binary) as c:
        for owners, target, old_new, top in (("1", "own", (), "src"), ("0", "root", (), "src"),
                                             ("1", "ren", ("src", "renamed"), "renamed")):
            dst = tmp_path / target
            dst.mkdir()
            out, err, code = await builtin(c, "extract", str(dst), owners, *old_new, stdin=data)
            assert (out, err, code) == (b"", b"", 0)
            got = sorted(str(p.relative_to(dst / top)) for p in (dst / top).rglob("*"))
            assert got == sorted(str(p.relative_to(src)) for p in src.rglob("*"))
            for p in [src, *src.rglob("*")]:
                a, b = p.lstat(), (dst / top / p.relative_to(src)).lstat()
                assert (a.st_mode, int(a.st_mtime)) == (b.st_mode, int(b.st_mtime)), p
                assert stat.S_ISDIR(a.st_mode) or stat.S_ISLNK(a.st_mode) or a.st_size == b.st_size
                if os.geteuid() == 0:
                    assert (b.st_uid, b.st_gid) == ((a.st_uid, a.st_gid) if owners == "1" else (0, 0)), p
            assert (dst / top / "big").read_bytes() == (src / "big").read_bytes()
            assert os.readlink(dst / top / "sub" / "longlink") == "t" * 200
            assert (dst / top / "small").stat().st_ino == (dst / top / "sub" / "hard").stat().st_ino

        # GNU long names, and a file over a file of the same name: replaced.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(_info("g/" + "x" * 200, size=3), io.BytesIO(b"abc"))
            tar.addfile(_info("own/src/small", size=2), io.BytesIO(b"hi"))
        out, err, code = await builtin(c, "extract", str(tmp_path), "0", stdin=buf.getvalue())
        assert code == 0, err
        assert (tmp_path / "g" / ("x" * 200)).read_bytes() == b"abc"
        assert (tmp_path / "own/src/small").read_bytes() == b"hi"


async def test_hostile_archives_refused(agent_host_binary: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    good = _tar((_info("ok", size=2), b"ok"))
    bad_sum = bytearray(good)
    bad_sum[0] ^= 1
    cases = {
        "absolute": _tar((_info(f"{outside}/abs", size=3), b"bad")),
        "dotdot": _tar((_info("../outside/dotdot", size=3), b"bad")),
        "through-symlink": _tar((_info("esc", tarfile.SYMTYPE, link=str(outside)), None),
                                (_info("esc/through", size=3), b"bad")),
        "hardlink-outside": _tar((_info("h", tarfile.LNKTYPE, link="../outside/secret"), None)),
        "hardlink-absolute": _tar((_info("h", tarfile.LNKTYPE, link=f"{outside}/secret"), None)),
        "hardlink-directory": _tar((_info("d", tarfile.DIRTYPE, mode=0o755), None),
                                   (_info("h", tarfile.LNKTYPE, link="d"), None)),
        "truncated": _tar((_info("ok", size=2000), b"x" * 2000))[:1200],
        "no-end": good[:1024],
        "bad-checksum": bytes(bad_sum),
    }
    before = sorted(outside.rglob("*"))
    async with container(agent_host_binary) as c:
        for name, data in cases.items():
            dst = tmp_path / name
            dst.mkdir()
            _, err, code = await builtin(c, "extract", str(dst), "1", stdin=data)
            assert code == 1 and err.count(b"\n") == 1 and err.startswith(b"extract "), (name, err)
            assert sorted(outside.rglob("*")) == before and (outside / "secret").read_text() == "secret\n", name
            assert not (dst / "h").exists() and (name == "no-end") == (dst / "ok").exists(), name  # entries stream
        _, err, code = await builtin(c, "extract", str(tmp_path / "nodir"), "1", stdin=good)
        assert code == 1 and b"No such file or directory" in err
        _, err, code = await builtin(c, "extract", str(tmp_path), "2", stdin=good)
        assert code == 1 and err.startswith(b"usage: extract")


async def test_stat(agent_host_binary: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("hello")
    (tmp_path / "f").chmod(0o640)
    (tmp_path / "l").symlink_to("f")
    async with container(agent_host_binary) as c:
        assert await builtin(c, "stat", str(tmp_path / "f")) == (b"100640 5\n", b"", 0)
        assert await builtin(c, "stat", str(tmp_path / "l")) == (b"100640 5\n", b"", 0)  # followed
        out, _, code = await builtin(c, "stat", str(tmp_path))
        assert code == 0 and out.split()[0] == oct(tmp_path.stat().st_mode)[2:].encode()
        out, err, code = await builtin(c, "stat", str(tmp_path / "missing"))
        assert (out, code) == (b"", 2) and err == f"stat {tmp_path}/missing: No such file or directory\n".encode()
        _, _, code = await builtin(c, "stat", str(tmp_path / "f" / "below"))
        assert code == 2


async def test_ps_lists_a_process(agent_host_binary: Path) -> None:
    async with container(agent_host_binary) as c:
        sleeper = await AgentAPI(c).exec(ExecRequest(id="c", stream=next(_streams),
                                                     process=ProcessRequest(arg=("sleep", "31"))))
        out, err, code = await builtin(c, "ps")
        assert code == 0, err
        lines = out.decode().splitlines()
        tag, clk_tck, uptime = lines[0].split()
        assert tag == "#" and int(clk_tck) > 0 and float(uptime) > 0
        rows = {int(line.split()[0]): line for line in lines[1:]}
        fields, cmd = rows[sleeper.pid or 0].split("\t")
        pid, ppid, uid, state, cpu, start, tty = fields.split()
        assert (int(pid), cmd, int(uid)) == (sleeper.pid, "sleep 31", os.getuid()) and state in "RSD"
        assert int(ppid) > 0 and int(cpu) >= 0 and int(start) > 0 and int(tty) == 0
        assert all(line.count("\t") == 1 for line in lines[1:])
        await c.request(Msg.SIGNAL, {"stream": sleeper.stream, "signal": 9})
        await asyncio.wait_for(sleeper.exit, 10)


async def test_unknown_builtin_and_builtin_in_new_container(agent_host_binary: Path) -> None:
    async with container(agent_host_binary) as c:
        with pytest.raises(AgentError, match='unknown builtin "sh"') as e:
            await builtin(c, "sh", "-c", "true")
        assert e.value.errno == errno.EINVAL
        c.register(90, False)
        with pytest.raises(AgentError, match="builtin is for EXEC only") as e:
            await c.request(Msg.NEW_CONTAINER, {"id": "b", "arg": ["ps"], "stream": 90, "builtin": 1})
        assert e.value.errno == errno.EINVAL
        stats = await c.request(Msg.STATS)
        assert stats["containers"] == 1 and stats["processes"] == 1  # only the container's sleep


@pytest.mark.skipif(os.geteuid() != 0, reason="container setup needs root")
async def test_builtins_stay_in_the_container_root(agent_host_binary: Path, busybox_tar: Path, tmp_path: Path) -> None:
    """A symlink in the container pointing out of its root resolves inside it: archive and extract see the
    container's /etc, never the host's; ps sees the container's PID namespace."""
    share = tmp_path / "share"
    _busybox_share(busybox_tar, share, "c1")
    (share / "c1" / "esc").symlink_to("/../../../etc")
    async with container(agent_host_binary, share, "c1") as c:
        out, err, code = await builtin(c, "archive", "/esc/.")
        assert code == 0, err
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            assert sorted(tar.getnames()) == sorted(p.name for p in (share / "c1" / "etc").iterdir())
            passwd = tar.extractfile("passwd")
            assert passwd and passwd.read() == (share / "c1" / "etc" / "passwd").read_bytes()
        out, err, code = await builtin(c, "extract", "/esc", "0", stdin=_tar((_info("hc-builtin-test", size=2), b"in")))
        assert code == 0, err
        assert (share / "c1" / "etc" / "hc-builtin-test").read_bytes() == b"in"
        assert not Path("/etc/hc-builtin-test").exists()
        out, err, code = await builtin(c, "ps")
        assert code == 0, err
        rows = [line.split("\t") for line in out.decode().splitlines()[1:]]
        assert [r[0].split()[0] for r in rows] == ["1"] and rows[0][1] == "sleep 60"
