"""runv's command line. Each container gets a shim process (shim.py) that boots its VM with hyperd's pod core
and stands in for the container's process on the host. No hyperd is needed. State lives under --root (default
/run/runv)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from ... import __version__
from ...errors import HCError, InvalidArgument, NotFound
from .. import run_cli
from . import verbs, wire
from .state import OCI_VERSION, member_name, oci_state
from .verbs import Runtime, after_hooks, cleanup, log_error, spawn_and_wait_ok, stop_shim, warn, write_pid_file

if TYPE_CHECKING:
    pass

# Every engine call is a new runv process: what one verb needs (the pod core, pydantic's models, subprocess) is
# imported in that verb, not here (`python -X importtime`; tests/test_runv.py keeps the hot verbs light).

CONTEXT = {"help_option_names": ["-h", "--help"], "ignore_unknown_options": False}






def runtime() -> Runtime:
    # runv's group callback sets ctx.obj = Runtime(...) before any command runs
    return cast(Runtime, click.get_current_context().find_object(Runtime))


@click.group(context_settings=CONTEXT)
@click.option("--root", type=click.Path(path_type=Path), default=Path("/run/runv"), show_default=True,
              help="Directory for container state.")
@click.option("--log", type=click.Path(path_type=Path), help="Log file (errors are also written to stderr).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--debug", is_flag=True)
@click.option("--systemd-cgroup", is_flag=True, help="Accepted; the VM is the container's boundary.")
@click.option("--rootless", default="auto", help="Accepted (runv runs as root).")
@click.option("--criu", hidden=True)
@click.version_option(__version__, "-v", "--version", prog_name="runv",
                      message=f"runv version %(version)s\ncommit: hypercontainer\nspec: {OCI_VERSION}")
@click.pass_context
def cli(ctx: click.Context, root: Path, log: Path | None, log_format: str, debug: bool, systemd_cgroup: bool,
        rootless: str, criu: str | None) -> None:
    """runv: run OCI containers, each in its own VM."""
    ctx.obj = Runtime(root, log, log_format, debug)


# ---- lifecycle ---------------------------------------------------------------------------------------------




@cli.command(context_settings=CONTEXT)
@click.option("-b", "--bundle", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.option("--pid-file", type=click.Path(path_type=Path))
@click.option("--console-socket", type=click.Path(path_type=Path))
@click.option("--preserve-fds", type=int, default=0)
@click.option("--no-pivot", is_flag=True, help="Accepted (the guest always pivots).")
@click.option("--no-new-keyring", is_flag=True, help="Accepted.")
@click.argument("cid")
def create(bundle: Path, pid_file: Path | None, console_socket: Path | None, preserve_fds: int, no_pivot: bool,
           no_new_keyring: bool, cid: str) -> None:
    """Create a container: its process waits for `start`; its VM boots meanwhile (start waits for it)."""
    verbs.create(runtime(), bundle, pid_file, console_socket, preserve_fds, cid)




@cli.command(context_settings=CONTEXT)
@click.argument("cid")
def start(cid: str) -> None:
    """Start the process of a created container."""
    verbs.start(runtime(), cid)






@cli.command(context_settings=CONTEXT)
@click.option("-b", "--bundle", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.option("--pid-file", type=click.Path(path_type=Path))
@click.option("--console-socket", type=click.Path(path_type=Path))
@click.option("-d", "--detach", is_flag=True)
@click.option("--preserve-fds", type=int, default=0)
@click.option("--no-pivot", is_flag=True)
@click.option("--no-new-keyring", is_flag=True)
@click.argument("cid")
def run(bundle: Path, pid_file: Path | None, console_socket: Path | None, detach: bool, preserve_fds: int,
        no_pivot: bool, no_new_keyring: bool, cid: str) -> None:
    """Create and start a container; without -d, wait for it and exit with its status."""
    proc = verbs.create(runtime(), bundle, pid_file, console_socket, preserve_fds, cid)
    rt = runtime()
    try:
        wire.request(rt.store.sock(cid), {"op": "start"})
    except HCError:  # the VM, booting since create returned, did not come up: nothing is left
        with contextlib.suppress(HCError):
            stop_shim(rt.store, cid, rt.store.load(cid))
        cleanup(rt.store, cid)
        raise
    st = rt.store.load(cid)
    after_hooks(rt, st, "poststart", "running")
    if detach:
        return
    code = proc.wait()
    cleanup(rt.store, cid)
    after_hooks(rt, st, "poststop", "stopped")
    sys.exit(code)


@cli.command(context_settings=CONTEXT)
@click.option("--size", type=click.IntRange(1, 64), default=2, show_default=True,
              help="VMs, and shims, kept ready.")
def factory(size: int) -> None:
    """Keep VMs and shims ready for this root's containers (Kata's VM factory): `create` takes a shim whose
    start-up is done, and a container whose VM needs no NIC a VM that is booted. Runs in the foreground until
    SIGTERM or SIGINT."""
    from . import factory as vm_factory

    vm_factory.run(runtime().store.root, size)


@cli.command(context_settings=CONTEXT)
@click.argument("cid")
def state(cid: str) -> None:
    """Print the container's state (OCI runtime spec JSON)."""
    click.echo(verbs.state(runtime(), cid))


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="All processes of the container (the VM's: the same).")
@click.argument("cid")
@click.argument("sig", default="SIGTERM")
def kill(all_: bool, cid: str, sig: str) -> None:
    """Send a signal (name or number; default SIGTERM) to the container's process."""
    verbs.kill(runtime(), all_, cid, sig)


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("cid")
def delete(force: bool, cid: str) -> None:
    """Delete a container: its VM, its state."""
    verbs.delete(runtime(), force, cid)










# ---- processes -----------------------------------------------------------------------------------------------
@cli.command("exec", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-p", "--process", "process_file", type=click.Path(path_type=Path), help="process.json")
@click.option("-d", "--detach", is_flag=True)
@click.option("--pid-file", type=click.Path(path_type=Path))
@click.option("--console-socket", type=click.Path(path_type=Path))
@click.option("-t", "--tty", "tty_", is_flag=True)
@click.option("--cwd")
@click.option("-e", "--env", multiple=True)
@click.option("-u", "--user", help="UID[:GID]")
@click.option("--preserve-fds", type=int, default=0)
@click.option("--process-label", hidden=True)
@click.option("--apparmor", hidden=True)
@click.option("--no-new-privs", is_flag=True, hidden=True)
@click.option("-c", "--cap", multiple=True, hidden=True)
@click.argument("cid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_cmd(process_file: Path | None, detach: bool, pid_file: Path | None, console_socket: Path | None,
             tty_: bool, cwd: str | None, env: tuple[str, ...], user: str | None, preserve_fds: int,
             process_label: str | None, apparmor: str | None, no_new_privs: bool, cap: tuple[str, ...], cid: str,
             command: tuple[str, ...]) -> None:
    """Run a new process in a running container."""
    rt = runtime()
    st = rt.store.load(cid)
    if st["status"] != "running":
        raise HCError(f"cannot exec in a container that is {st['status']}")
    if process_file:
        try:
            process = json.loads(process_file.read_text())
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot read {process_file}: {e}") from None
    else:
        if not command:
            raise InvalidArgument("exec needs a command or --process")
        uid, _, gid = (user or "0").partition(":")
        process = {"args": list(command), "env": list(env), "cwd": cwd or "/", "terminal": tty_,
                   "user": {"uid": int(uid), "gid": int(gid or 0)}}
    if not process.get("args"):
        raise InvalidArgument("the process has no args")
    spec_file = rt.store.dir(cid) / f"exec-{os.getpid()}-{time.monotonic_ns()}.json"
    spec_file.write_text(json.dumps(process))
    # A container that joined a sandbox's VM: the sandbox's shim runs the process, in this container.
    sock = rt.store.sock(st["sandbox"]) if st.get("sandbox") else rt.store.sock(cid)
    argv = [sys.executable, "-m", "hypercontainer.cli.runv.execproc", "--sock", str(sock),
            "--process", str(spec_file)]
    if st.get("sandbox"):
        argv += ["--container", member_name(cid)]
    if console_socket:
        argv += ["--console-socket", str(console_socket.resolve())]
    if detach:
        proc = spawn_and_wait_ok(argv, preserve_fds)
        if pid_file:
            write_pid_file(pid_file, proc.pid)
        return
    from .execproc import run_foreground

    sys.exit(run_foreground(sock, spec_file, console_socket, member_name(cid) if st.get("sandbox") else None))


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.argument("cid")
@click.argument("ps_args", nargs=-1)
def ps(fmt: str, cid: str, ps_args: tuple[str, ...]) -> None:
    """The container's host processes (its shim: the VM's processes are the guest's)."""
    st = runtime().store.load(cid)
    pids = [st["pid"]] if st["status"] in ("created", "running", "paused") else []
    if fmt == "json":
        click.echo(json.dumps(pids))
    else:
        click.echo("PID\n" + "".join(f"{p}\n" for p in pids), nl=False)


@cli.command("list", context_settings=CONTEXT)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-q", "--quiet", is_flag=True)
def list_cmd(fmt: str, quiet: bool) -> None:
    """List containers."""
    store = runtime().store
    states = []
    for cid in store.ids():
        try:
            states.append(oci_state(store.load(cid)))
        except NotFound:
            continue
    if quiet:
        click.echo("".join(s["id"] + "\n" for s in states), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(states))
    else:
        click.echo(f"{'ID':24} {'PID':8} {'STATUS':10} {'BUNDLE':40} CREATED")
        for s in states:
            click.echo(f"{s['id']:24} {s['pid']:<8} {s['status']:10} {s['bundle']:40} {s['created']}")


@cli.command(context_settings=CONTEXT)
@click.argument("cid")
def pause(cid: str) -> None:
    """Pause the container (its VM's CPUs stop)."""
    ask_shim(cid, "pause", needs="running")


@cli.command(context_settings=CONTEXT)
@click.argument("cid")
def resume(cid: str) -> None:
    """Resume a paused container."""
    ask_shim(cid, "resume", needs="paused")


def ask_shim(cid: str, op: str, needs: str) -> None:
    rt = runtime()
    if rt.store.load(cid)["status"] != needs:
        raise HCError(f"container not {needs}")
    wire.request(rt.store.sock(cid), {"op": op})


@cli.command(context_settings=CONTEXT)
@click.option("-r", "--resources", help="Resources JSON file, or - for stdin.")
@click.option("--memory", hidden=True)
@click.option("--cpu-quota", hidden=True)
@click.option("--cpu-period", hidden=True)
@click.option("--pids-limit", hidden=True)
@click.argument("cid")
def update(resources: str | None, memory: str | None, cpu_quota: str | None, cpu_period: str | None,
           pids_limit: str | None, cid: str) -> None:
    """Accepted and reported: a VM's size is fixed when it is created."""
    rt = runtime()
    rt.store.load(cid)
    if resources == "-":
        sys.stdin.read()
    warn(rt, f"update of {cid}: resources of a running VM cannot change; ignored")


@cli.command(context_settings=CONTEXT)
def features() -> None:
    """What this runtime supports (runc's `features` JSON)."""
    from ...spec import seccomp
    from ...spec.pod import CAPABILITIES

    click.echo(json.dumps({
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec"],
        "linux": {"namespaces": ["mount", "pid", "ipc", "uts", "network"],
                  "capabilities": [f"CAP_{c}" for c in CAPABILITIES],
                  "cgroup": {"v1": False, "v2": False, "systemd": False},
                  "seccomp": {"enabled": True, "actions": sorted(seccomp.ACTIONS), "operators": sorted(seccomp.OPS),
                              "archs": ["SCMP_ARCH_X86_64"], "supportedFlags": sorted(seccomp.FLAGS)},
                  "apparmor": {"enabled": False}, "selinux": {"enabled": False}},
        "annotations": {"io.hypercontainer.runv.vm": "one VM per container"},
    }, indent=2))


@cli.command(context_settings=CONTEXT)
@click.option("-b", "--bundle", type=click.Path(path_type=Path), default=Path("."))
@click.option("--rootless", is_flag=True)
def spec(bundle: Path, rootless: bool) -> None:
    """Write a starting config.json (like runc's) into the bundle directory."""
    path = bundle / "config.json"
    if path.exists():
        raise HCError(f"{path} exists already")
    path.write_text(json.dumps({
        "ociVersion": OCI_VERSION,
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                    "cwd": "/"},
        "root": {"path": "rootfs", "readonly": True}, "hostname": "runv",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]},
    }, indent=2))


def main() -> None:
    """runc's exit codes: 2 for bad usage, 1 for errors (also written to --log)."""
    run_cli(cli, "runv", 2, lambda e: 1, report=log_error)


