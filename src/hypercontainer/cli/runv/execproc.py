"""The process that stands in for an exec'd process on the host: `runv exec` runs it in the foreground, or (with
--detach) starts it and writes its pid to the pid file. It relays its stdio (or a pty handed to the console
socket) to the exec over the shim's socket and exits with the process's status."""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import termios
import tty
from pathlib import Path

from . import wire
from .fdio import read_chunks, write_all


def console_pty(console_socket: Path) -> int:
    master, slave = os.openpty()
    tty.setraw(slave)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(console_socket))
        s.sendmsg([b"/dev/pts/runv"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])
    os.close(master)
    with contextlib.suppress(OSError):
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return slave


async def relay(sock: Path, process: dict, console: int | None, status_fd: int | None,
                container: str | None = None) -> int:
    """`container`: the name in the sandbox's VM of a container that joined it (`sock` is then the sandbox's)."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(json.dumps({"op": "exec", "process": process, "container": container}).encode() + b"\n")
    await writer.drain()
    reply = json.loads(await reader.readline() or b'{"ok": false, "error": "the shim closed the connection"}')
    if not reply.get("ok"):
        msg = reply.get("error", "exec failed")
        if status_fd is not None:
            os.write(status_fd, f"error {msg}\n".encode())
        else:
            print(f"runv: {msg}", file=sys.stderr)
        return 255
    if status_fd is not None:
        os.write(status_fd, b"ok\n")
        os.close(status_fd)
    loop = asyncio.get_running_loop()
    in_fd, out_fd, err_fd = (console, console, console) if console is not None else (0, 1, 2)

    def send(kind: int, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(wire.frame(kind, data))

    async def pump_in() -> None:
        async for data in read_chunks(in_fd):
            send(wire.STDIN, data)
        send(wire.STDIN, b"")

    def on_signal(sig: int) -> None:
        send(wire.SIGNAL, struct.pack(">i", sig))

    def on_winch(tty: int) -> None:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(tty, termios.TIOCGWINSZ, b"\0" * 8))
        send(wire.RESIZE, struct.pack(">HH", rows, cols))

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, on_signal, int(sig))
    if console is not None:
        loop.add_signal_handler(signal.SIGWINCH, on_winch, console)
        on_winch(console)
    stdin_task = asyncio.ensure_future(pump_in())
    status = 255
    while (f := await wire.read_frame(reader)) is not None:
        kind, data = f
        if kind in (wire.STDOUT, wire.STDERR):
            await write_all(out_fd if kind == wire.STDOUT else err_fd, data)
        elif kind == wire.EXIT and len(data) == 4:
            status = struct.unpack(">i", data)[0]
            break
    stdin_task.cancel()
    writer.close()
    return status


def run_foreground(sock: Path, process_file: Path, console_socket: Path | None, container: str | None = None) -> int:
    process = json.loads(process_file.read_text())
    process_file.unlink(missing_ok=True)
    console = console_pty(console_socket) if console_socket and process.get("terminal") else None
    return asyncio.run(relay(sock, process, console, None, container))


def main() -> None:
    ap = argparse.ArgumentParser(prog="runv-exec")
    ap.add_argument("--sock", required=True)
    ap.add_argument("--process", required=True)
    ap.add_argument("--console-socket")
    ap.add_argument("--container")
    ap.add_argument("--status-fd", type=int)
    args = ap.parse_args()
    process_file = Path(args.process)
    process = json.loads(process_file.read_text())
    process_file.unlink(missing_ok=True)
    console = None
    try:
        if args.console_socket and process.get("terminal"):
            console = console_pty(Path(args.console_socket))
    except OSError as e:
        os.write(args.status_fd, f"error console socket: {e}\n".encode())
        sys.exit(255)
    sys.exit(asyncio.run(relay(Path(args.sock), process, console, args.status_fd, args.container)))


if __name__ == "__main__":
    main()
