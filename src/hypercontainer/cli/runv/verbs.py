"""What runv's verbs do, without the command line (click): main.py's commands call these, and hot.py calls the
engine's hot verbs (start, state, kill, delete) directly, without importing click (~20 ms of each engine call)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from ...errors import HCError, InvalidArgument, NotFound
from . import wire
from .state import Store, check_id, oci_state

TYPE_CHECKING = False  # `typing` costs each runv call ~6-19 ms of imports
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from .standin import StandIn


class Runtime:
    def __init__(self, root: Path, log: Path | None, log_format: str, debug: bool) -> None:
        self.store = Store(root)
        self.log, self.log_format, self.debug = log, log_format, debug

    def write_log(self, level: str, msg: str) -> None:
        if not self.log:
            return
        import datetime as dt

        now = dt.datetime.now(dt.UTC).isoformat()
        line = (json.dumps({"level": level, "msg": msg, "time": now}) if self.log_format == "json"
                else f'time="{now}" level={level} msg="{msg}"')
        try:
            with open(self.log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def warn(rt: Runtime, msg: str) -> None:
    """To the --log file, where the client looks (our stderr is the container's); to stderr without one."""
    if rt.log:
        rt.write_log("warning", msg)
    else:
        print(f"runv: warning: {msg}", file=sys.stderr)


def after_hooks(rt: Runtime, st: dict, kind: str, status: str) -> None:
    """poststart and poststop hooks: a failure is a warning (the OCI runtime spec)."""
    if not has_hooks(Path(st["bundle"]), kind):
        return  # nothing to run: the config is not validated (pydantic's models cost start and delete 0.1 s)
    from ...spec import oci
    from . import hooks

    try:
        cfg = oci.load(Path(st["bundle"]))
    except HCError:
        return  # the bundle is gone: nothing to run
    try:
        hooks.run(cfg, kind, hooks.state(cfg, st["id"], st["bundle"], status, st.get("pid") or 0))
    except HCError as e:
        warn(rt, e.message)


def has_hooks(bundle: Path, kind: str) -> bool:
    """Whether config.json names hooks of this kind (unreadable: no; oci.load and hooks.run decide the rest)."""
    try:
        raw = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return False
    found = raw.get("hooks") if isinstance(raw, dict) else None
    return isinstance(found, dict) and bool(found.get(kind))


def stop_shim(store: Store, cid: str, st: dict) -> None:
    """Asks the shim to kill the container (it then stops the VM and exits); kills it and its VM if it will not."""
    with contextlib.suppress(HCError):
        if st["status"] == "paused":
            wire.request(store.sock(cid), {"op": "resume"}, timeout=10)
        wire.request(store.sock(cid), {"op": "kill", "signal": 9}, timeout=10)
    deadline = time.monotonic() + 15
    while Store.alive(st) and time.monotonic() < deadline:
        time.sleep(0.05)
    from ... import procs

    if Store.alive(st):
        with contextlib.suppress(ProcessLookupError):
            os.kill(st["pid"], 9)
        procs.kill_if_ours(st.get("shim_pid"), st.get("shim_start"), "")  # a warm shim (standin.py)
    procs.kill_if_ours(st.get("vm_pid"), st.get("vm_start"), "")


def wait_for_warm_shim(st: dict[str, Any]) -> None:
    """A warm shim (standin.py) reports its container's exit before its VM has stopped: it is given the time to
    stop it (killed after 15 s; stop_orphan_vm() then stops the VM)."""
    if not st.get("shim_pid"):
        return
    from ... import procs

    shim = procs.adopt(st["shim_pid"], st.get("shim_start"), "")
    if shim and not shim.wait_blocking(15):
        shim.kill()
        shim.wait_blocking(5)


def stop_orphan_vm(rt: Runtime, cid: str, st: dict[str, Any]) -> None:
    """A shim that was killed (kill -9) leaves its VM running: the VM is killed if its pid and start time still name
    it, waited for, and what the shim held for it (uid lease, cgroup) released; one line in --log says so."""
    from ... import procs

    vm = procs.adopt(st.get("vm_pid"), st.get("vm_start"), st.get("vm_dir") or str(rt.store.rundir(cid)))
    if vm is None:  # stopped with its shim, or never booted
        return
    from ...config import environment
    from ...vm import confine, uids

    vmm_uids = environment().vmm_uids
    if vmm_uids:  # the range the shim took the VM's uid from
        uids.use_range(uids.parse_range(vmm_uids))
    held = None if st.get("vm_lent") else confine.inspect(vm.pid)  # a factory's VM: the factory frees them
    with contextlib.suppress(ProcessLookupError, OSError):
        vm.kill()
    if not vm.wait_blocking(10):
        raise HCError(f"container {cid}: its shim (pid {st.get('pid')}) was gone and its VM (pid {vm.pid}) "
                      "did not stop")
    if held:
        confine.release_pid(vm.pid, *held)
    rt.write_log("warning", f"container {cid}: its shim (pid {st.get('pid')}) was gone; "
                            f"its VM (pid {vm.pid}) was stopped")


def unplug(rt: Runtime, cid: str, st: dict[str, Any]) -> None:
    """What the container's VM had in the engine's network namespace (taps, tc filters) goes: its shim removes it
    when it stops, a shim that was killed cannot. (A namespace of the shim's own died with it and its VM.)"""
    att = st.get("network")
    if not att or not att.get("netns") or att["netns"].startswith("/proc/"):
        return
    from ...network import netns_mode

    taps = [i["tap"] for i in att.get("interfaces") or [] if i.get("tap")]
    try:
        netns_mode.unplug(att["netns"], taps)
    except (HCError, OSError) as e:
        warn(rt, f"container {cid}: cleaning its network namespace {att['netns']}: {e}")


def cleanup(store: Store, cid: str) -> None:
    """The container's state and runtime directories (remove_tree detaches what is still mounted below), and the
    host memory cgroup its shim joined."""
    with contextlib.suppress(NotFound, KeyError):
        cg = store.load(cid).get("cgroup")
        if cg:
            remove_cgroup(Path(cg))
    for d in (store.dir(cid), store.rundir(cid)):
        if not remove_leftovers(str(d)):
            from ...storage.volumes import remove_tree

            remove_tree(d)


# What a shim that finished leaves (it tore its VM's tree down itself), deepest first.
LEFTOVERS = ("pod/logs/ctr.log", "state.json", "shim.log", "pod/logs", "pod", "")


def remove_leftovers(d: str) -> bool:
    """Removes the directory `d` if it holds no more than LEFTOVERS, without the imports of the mount-aware
    remove_tree (~5 ms of each delete); False, having removed no directory that holds anything else (a mount
    point, a share's contents): remove_tree's job."""
    for name in LEFTOVERS:
        path = f"{d}/{name}" if name else d
        try:
            (os.unlink if name.endswith((".json", ".log")) else os.rmdir)(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def remove_cgroup(cg: Path) -> None:
    """The cgroup and the empty groups below it (the VM's own group nests there: vm/cgroups.py makes it under its
    creator's), once their processes are gone (runv delete; see hostoom.py for why the container's pid joined it)."""
    for d in [*sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True), cg]:
        for _ in range(20):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def log_error(msg: str) -> None:
    """Writes the error to --log as well (the runc shim shows the last error line of that file)."""
    argv = sys.argv[1:]
    log, fmt = None, "text"
    for i, a in enumerate(argv):
        if a == "--log" and i + 1 < len(argv):
            log = argv[i + 1]
        elif a.startswith("--log="):
            log = a.split("=", 1)[1]
        elif a == "--log-format" and i + 1 < len(argv):
            fmt = argv[i + 1]
        elif a.startswith("--log-format="):
            fmt = a.split("=", 1)[1]
    if log:
        Runtime(Path("."), Path(log), fmt, False).write_log("error", msg)


def start(rt: Runtime, cid: str) -> None:
    """Start the process of a created container."""
    st = rt.store.load(cid)
    if st["status"] != "created":
        raise HCError(f"cannot start a container that is {st['status']}")
    wire.request(rt.store.sock(cid), {"op": "start"})
    after_hooks(rt, st, "poststart", "running")


def state(rt: Runtime, cid: str) -> str:
    """The container's state (OCI runtime spec JSON)."""
    return json.dumps(oci_state(rt.store.load(cid)), indent=2)


def kill(rt: Runtime, all_: bool, cid: str, sig: str) -> None:
    """Send a signal (name or number) to the container's process."""
    from ...signals import parse_signal

    number = parse_signal(sig)
    st = rt.store.load(cid)
    if st["status"] not in ("created", "running", "paused"):
        raise HCError("container not running")
    wire.request(rt.store.sock(cid), {"op": "kill", "signal": number, "all": all_})


def delete(rt: Runtime, force: bool, cid: str) -> None:
    """Delete a container: its VM, its state."""
    try:
        st = rt.store.load(cid)
    except NotFound:
        if force:
            cleanup(rt.store, cid)
            return
        raise
    if st["status"] in ("running", "paused") and not force:
        raise HCError(f"cannot delete container {cid} that is not stopped: {st['status']}")
    if st["status"] in ("created", "running", "paused"):
        stop_shim(rt.store, cid, st)
    else:
        wait_for_warm_shim(st)
        stop_orphan_vm(rt, cid, st)
        unplug(rt, cid, st)
    cleanup(rt.store, cid)
    after_hooks(rt, st, "poststop", "stopped")


def spawn_and_wait_ok(argv: list[str], preserve: int = 0) -> subprocess.Popen:
    """Starts a helper that reports `ok` (or `error MSG`) on a status pipe; returns it once it said ok."""
    import subprocess

    r, w = os.pipe()
    preserved = tuple(range(3, 3 + preserve))
    proc = subprocess.Popen([*argv, "--status-fd", str(w)], pass_fds=(w, *preserved), start_new_session=True)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline().strip()
    if line != "ok":
        proc.wait()
        raise HCError(line.removeprefix("error ").strip() or f"the helper exited with status {proc.returncode}")
    return proc


def write_pid_file(path: Path, pid: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(str(pid))
    tmp.rename(path)


def spawn_shim(root: Path, cid: str, bundle: Path, console_socket: Path | None, log: Path,
               preserve_fds: int) -> subprocess.Popen:
    """A shim of the container's own (no factory, or no warm shim ready): a new interpreter."""
    argv = [sys.executable, "-m", "hypercontainer.cli.runv.shim", "--root", str(root), "--id", cid,
            "--bundle", str(bundle), "--log", str(log)]
    if console_socket:
        argv += ["--console-socket", str(console_socket.resolve())]
    return spawn_and_wait_ok(argv, preserve_fds)


def create(rt: Runtime, bundle: Path, pid_file: Path | None, console_socket: Path | None, preserve_fds: int,
           cid: str) -> subprocess.Popen | StandIn:
    """Create a container: its shim (a warm one of the factory's, or one started now) checks the config and reports
    it created; the VM boots after."""
    check_id(cid)
    bundle = bundle.resolve()
    if not (bundle / "config.json").is_file():
        raise InvalidArgument(f"bundle {bundle} has no config.json")
    d = rt.store.reserve(cid)
    rt.store.save(cid, {"id": cid, "bundle": str(bundle), "status": "creating", "pid": 0})
    if preserve_fds:  # reported, never dropped silently
        msg = f"--preserve-fds {preserve_fds}: open files cannot cross into a VM; the process does not get them"
        warn(rt, msg)
    from . import standin

    try:
        proc = standin.create(rt.store.root, cid, bundle, console_socket, d / "shim.log") or spawn_shim(
            rt.store.root, cid, bundle, console_socket, d / "shim.log", preserve_fds)
    except HCError:
        cleanup(rt.store, cid)
        raise
    for line in (d / "shim.log").read_text(errors="replace").splitlines():
        if "not supported, ignored:" in line:  # reported, never dropped silently
            warn(rt, line.split("WARNING runv-shim: ", 1)[-1])
    if pid_file:
        write_pid_file(pid_file, proc.pid)
    return proc

