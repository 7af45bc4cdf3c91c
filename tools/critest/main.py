"""`make critest`: Kubernetes' CRI conformance suite (critest, cri-tools v1.37.0) against a private containerd
whose runc shim runs runc, then runv; one tally line per runtime and the specs that pass with runc only.

    python tools/critest/main.py [--runtimes "runc runv"] [--focus REGEX] [--skip REGEX]

Everything lives under build/critest/ (see docs/critest.md); it is cleaned up on exit, on Ctrl-C, and at the
start of the next run after a run that was killed."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import build
import env
import report
from build import log

REPO = Path(__file__).resolve().parents[2]
# Spec outcomes as ginkgo prints them in its verbose output, e.g. "• [FAILED] [12.3 seconds]".
OUTCOME = re.compile(r"^(?:•|S|P) ?(?:\[(FAILED|PANICKED|TIMEDOUT|INTERRUPTED|SKIPPED|PENDING)\])?.*"
                     r"\[[\d.]+ seconds\]$")


class Interrupted(Exception):
    pass


def on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def follow(proc: subprocess.Popen[str], logfile: Path, t0: float) -> None:
    """Copies critest's output to logfile; prints each spec that fails as it happens, and a count now and then."""
    done = failed = 0
    pending_failure = ""
    assert proc.stdout
    with open(logfile, "w") as out:
        for text in proc.stdout:
            out.write(text)
            text = text.rstrip("\n")
            if pending_failure:  # the spec's name follows its outcome line
                failed += 1
                print(f"   {pending_failure.lower()}: {text.strip()}", flush=True)
                pending_failure = ""
            m = OUTCOME.match(text)
            if m:
                done += 1
                if m.group(1) in ("FAILED", "PANICKED", "TIMEDOUT", "INTERRUPTED"):
                    pending_failure = m.group(1)
                if done % 20 == 0:
                    print(f"   ... {done} specs done, {failed} failed, {time.monotonic() - t0:.0f} s", flush=True)


def critest_cmd(critest: Path, endpoint: str, results: Path, timeout: str, focus: str, skip: str,
                flags: list[str]) -> list[str]:
    """critest against `endpoint`: verbose, its JSON report into `results`, the suite's timeout, focus and skip
    regexes, and extra flags (the -websocket-* ones)."""
    cmd = [str(critest), f"-runtime-endpoint={endpoint}", f"-image-endpoint={endpoint}",
           f"-ginkgo.json-report={results / 'report.json'}", "-ginkgo.no-color", "-ginkgo.v",
           f"-ginkgo.timeout={timeout}", "-ginkgo.poll-progress-after=300s", "-ginkgo.poll-progress-interval=60s",
           *flags]
    if focus:
        cmd.append(f"-ginkgo.focus={focus}")
    if skip:
        cmd.append(f"-ginkgo.skip={skip}")
    return cmd


def run_critest(cmd: list[str], logfile: Path, t0: float, tmpdir: Path) -> int:
    """Runs critest, its output into logfile; TMPDIR is where its specs make their host directories."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            stdin=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=str(tmpdir)))
    reader = threading.Thread(target=follow, args=(proc, logfile, t0), daemon=True)
    reader.start()
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: ginkgo runs its cleanup nodes on SIGINT, then exits
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(10)


def run_one(rt: str, args: argparse.Namespace, out: Path, critest: Path, crictl: Path, registry: env.Registry,
            net: env.Network, flags: list[str] | None = None, name: str = "", timeout: str = "") -> dict:
    """critest against a containerd of ours running `rt`; results under results/<name or rt>/. Returns the
    result (result.json)."""
    flags = flags or []
    binary, d, environ = runtime(rt, args, out)
    if not Path(binary).exists():
        raise SystemExit(f"no {rt} binary ({binary})")
    env.cleanup(d, binary, net, crictl, environ)  # what a killed run left
    results = out / "results" / (name or rt)
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    d.mkdir(parents=True)
    ctd = env.Containerd(d, binary, net, environ, crictl)
    ctd.write_config(registry.port)
    shm_before = set(env.shm_segments())
    code, t0 = -1, 0.0
    label = f"{name or rt}"
    try:
        ctd.start(results / "containerd.log")
        timeout = timeout or (args.runc_timeout if rt == "runc" else args.runv_timeout)
        cmd = critest_cmd(critest, ctd.endpoint, results, timeout, args.focus, args.skip, flags)
        log(f"critest ({label}): containerd {containerd_version()} + {' '.join([binary, *flags])} "
            f"(log: {results / 'critest.log'})")
        t0 = time.monotonic()
        code = run_critest(cmd, results / "critest.log", t0, env.critest_tmp(d))
    finally:
        handlers = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        seconds = time.monotonic() - t0 if t0 else 0.0
        res = report.result(label, results / "report.json", seconds, results / "critest.log", args.focus,
                            args.skip, code)
        res["setup"] = setup_key(rt, binary, flags, registry.pushed())
        (results / "result.json").write_text(json.dumps(res, indent=1))
        log(f"cleaning up after critest ({label})")
        env.cleanup(d, binary, net, crictl, environ, shm_before)
        for s, h in handlers.items():
            signal.signal(s, h)
    return res


def setup_key(rt: str, binary: str, flags: list[str], refs: dict[str, str] | None) -> dict:
    """What a result depends on besides the specs run: critest's version and flags, containerd's and the runtime's
    versions, the test images. A cached result with the same key (and focus/skip) stands for a new run."""
    r = subprocess.run([binary, "--version"], capture_output=True, text=True)
    images = hashlib.sha256(json.dumps(refs or {}, sort_keys=True).encode()).hexdigest()[:16]
    return {"cri_tools": build.CRI_TOOLS_VERSION, "containerd": containerd_version(), "runtime": rt,
            "runtime_version": r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "?",
            "flags": flags, "images": images}


def runtime(rt: str, args: argparse.Namespace, out: Path) -> tuple[str, Path, dict[str, str]]:
    """The runtime's binary, its run directory, and the environment of containerd (so of the shim and runv)."""
    d = out / "run" / rt
    binary = (shutil.which("runc") or "/usr/sbin/runc") if rt == "runc" else args.runv
    return binary, d, dict(os.environ, HYPERCONTAINER_ASSETS=str(args.assets), HYPERCONTAINER_RUN=str(d / "hc"))


def clean(args: argparse.Namespace, out: Path) -> int:
    """What killed runs left: `make critest-clean`."""
    net = env.Network("critest", args.bridge, args.subnet)
    crictl = out / "bin/crictl"
    for rt in ("runc", "runv"):
        binary, d, environ = runtime(rt, args, out)
        env.cleanup(d, binary, net, crictl if crictl.exists() else None, environ)
    hnet = env.Network("critest-hyperd", os.environ.get("CRITEST_HYPERD_BRIDGE", "critest1"),
                       os.environ.get("CRITEST_HYPERD_SUBNET", "10.98.0.0/24"))
    env.hyperd_cleanup(out / "run/hyperd", hnet, crictl if crictl.exists() else None, REPO / ".venv/bin/hyperd",
                       args.assets)
    for pid in env.procs_mentioning(out / "registry/config.yml"):
        env.stop_pid(pid)
    n = env.sweep_tmp()
    if n:
        log(f"removed {n} director{'y' if n == 1 else 'ies'} critest had left in /tmp")
    log("critest: cleaned up")
    return 0


def containerd_version() -> str:
    r = subprocess.run(["containerd", "--version"], capture_output=True, text=True)
    return r.stdout.split()[2] if r.returncode == 0 and len(r.stdout.split()) > 2 else "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtimes", default="runc runv", help="runc, runv or both (space or comma separated)")
    p.add_argument("--focus", default="", help="ginkgo focus regex: run only the specs it matches")
    p.add_argument("--skip", default="", help="ginkgo skip regex")
    p.add_argument("--out", type=Path, default=REPO / "build/critest")
    p.add_argument("--assets", type=Path, default=Path(os.environ.get("HYPERCONTAINER_ASSETS")
                                                       or "/var/lib/hypercontainer/assets"))
    p.add_argument("--runv", default=str(REPO / ".venv/bin/runv"))
    p.add_argument("--subnet", default=os.environ.get("CRITEST_SUBNET", "10.99.0.0/24"))
    p.add_argument("--bridge", default=os.environ.get("CRITEST_BRIDGE", "critest0"))
    p.add_argument("--runc-timeout", default="30m", help="ginkgo suite timeout with runc")
    p.add_argument("--runv-timeout", default="3h", help="ginkgo suite timeout with runv (a VM per sandbox)")
    p.add_argument("--clean", action="store_true", help="only remove what killed runs left, and exit")
    args = p.parse_args()
    runtimes = [r for r in re.split(r"[\s,]+", args.runtimes) if r]
    if not runtimes or set(runtimes) - {"runc", "runv"}:
        p.error(f"--runtimes: runc and/or runv, not {args.runtimes!r}")
    if os.geteuid() != 0:
        p.error("critest needs root (containerd, CNI, mounts)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.assets = args.assets.resolve()
    with locked(out):
        return clean(args, out) if args.clean else run_all(args, runtimes, out)


@contextlib.contextmanager
def locked(out: Path, wait: bool = False):
    """build/critest/.lock: one critest run at a time (`make critest`, `make cri-conformance`, their cleanups)."""
    with open(out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise SystemExit(f"another critest run holds {out / '.lock'}") from None
            log(f"waiting for another critest run to finish (it holds {out / '.lock'})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_all(args: argparse.Namespace, runtimes: list[str], out: Path) -> int:

    t0 = time.monotonic()
    critest, crictl = build.cri_tools(out)
    bb = build.busybox(out)
    progs = build.programs(out)
    layout, refs = build.image_layout(out, bb, progs)
    net = env.Network("critest", args.bridge, args.subnet)
    registry = env.Registry(out / "registry")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where a shell started us with SIGINT ignored
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    ran: list[str] = []
    code = 0
    try:
        registry.start(refs)
        registry.push(layout, refs)
        log(f"images ready on 127.0.0.1:{registry.port} ({time.monotonic() - t0:.0f} s)")
        for rt in runtimes:
            ran.append(rt)
            run_one(rt, args, out, critest, crictl, registry, net)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'SIGINT'}); cleaned up", file=sys.stderr)
        code = 130
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # let the cleanup finish
            signal.signal(s, signal.SIG_IGN)
        registry.stop()
    return report.summarize(out, ran) or code


if __name__ == "__main__":
    sys.exit(main())
