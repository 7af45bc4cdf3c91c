"""`make cri-conformance`: Kubernetes' CRI conformance suite (critest, cri-tools v1.37.0) against hyperd's own CRI,
in two passes (the default one, streaming over SPDY, and one with -websocket-exec -websocket-attach
-websocket-portforward), with containerd+runc through the same critest as the reference beside it.

    python tools/critest/conformance.py [--passes "spdy ws"] [--reference [cached|rerun|no]] [--focus REGEX]
                                        [--skip REGEX] [--debug] [--clean]

Each pass starts a hyperd of its own under build/critest/run/hyperd/ (state, run directory, CRI socket, registry
mirrors to the local registry, a CNI network of its own: bridge critest1 on 10.98.0.0/24, portmap, loopback),
runs critest against unix://<its CRI socket>, then removes every sandbox, stops hyperd and checks what it left.
Results under build/critest/results/hyperd[-ws]/ (critest.log, hyperd.log, report.json, result.json), the
reference's under results/runc[-ws]/ (results/runc is `make critest`'s too), the comparison in
build/critest/conformance.json. See docs/critest.md."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import build
import env
import main as critest_main
import report
from build import log

REPO = Path(__file__).resolve().parents[2]
WS_FLAGS = ["-websocket-exec", "-websocket-attach", "-websocket-portforward"]
# pass -> (its title, results directory of hyperd, of the reference, critest's extra flags)
PASSES = {"spdy": ("SPDY", "hyperd", "runc", []), "ws": ("WebSocket", "hyperd-ws", "runc-ws", WS_FLAGS)}
REF_NAME = "containerd+runc"


def hyperd_network(args: argparse.Namespace) -> env.Network:
    return env.Network("critest-hyperd", args.bridge, args.subnet, loopback=True)


def reference_network(args: argparse.Namespace) -> env.Network:
    return env.Network("critest", args.ref_bridge, args.ref_subnet)


def run_hyperd(title: str, name: str, flags: list[str], args: argparse.Namespace, out: Path, critest: Path,
               crictl: Path, registry: env.Registry) -> dict:
    """One pass: a fresh hyperd, critest against its CRI socket, then the cleanup (and what hyperd left)."""
    net = hyperd_network(args)
    d = out / "run/hyperd"
    left = env.hyperd_cleanup(d, net, crictl, args.hyperd, args.assets)  # what a killed run left
    if left:
        log(f"removed what an earlier hyperd run left: {'; '.join(left)}")
    results = out / "results" / name
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    d.mkdir(parents=True)
    hyperd = env.Hyperd(d, args.hyperd, args.assets, net, crictl, args.debug)
    hyperd.write_config(registry.port)
    shm_before = set(env.shm_segments())
    label = f"hyperd ({title})"
    code, t0 = -1, 0.0
    try:
        log(f"starting hyperd under {d} (log: {results / 'hyperd.log'})")
        hyperd.start(results / "hyperd.log")
        log(f"hyperd ready: {hyperd.describe()}")
        cmd = critest_main.critest_cmd(critest, hyperd.endpoint, results, args.timeout, args.focus, args.skip,
                                       flags)
        log(f"critest ({label}) against {hyperd.endpoint} {' '.join(flags)} (log: {results / 'critest.log'})")
        t0 = time.monotonic()
        code = critest_main.run_critest(cmd, results / "critest.log", t0, env.critest_tmp(d))
    finally:
        handlers = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        seconds = time.monotonic() - t0 if t0 else 0.0
        res = report.result(label, results / "report.json", seconds, results / "critest.log", args.focus,
                            args.skip, code)
        res["flags"] = flags
        (results / "result.json").write_text(json.dumps(res, indent=1))
        log(f"cleaning up after critest ({label}): sandboxes, hyperd, its VMs and network")
        res["leftovers"] = env.hyperd_cleanup(d, net, crictl, args.hyperd, args.assets, shm_before)
        for what in res["leftovers"]:
            log(f"warning: hyperd left {what} (removed now)")
        report.add_log_hints(res, results / "hyperd.log")
        (results / "result.json").write_text(json.dumps(res, indent=1))
        for s, h in handlers.items():
            signal.signal(s, h)
    return res


def cached_reference(out: Path, name: str, key: dict, args: argparse.Namespace) -> dict | None:
    """The reference's last result under results/<name>/ if it stands for a new run: same setup (critest version
    and flags, containerd and runc versions, test images), a full run or the same focus and skip, complete, and
    younger than --reference-max-age hours."""
    f = out / "results" / name / "result.json"
    try:
        r = json.loads(f.read_text())
        age = time.time() - time.mktime(time.strptime(r["date"], "%Y-%m-%d %H:%M:%S"))
    except (OSError, ValueError, KeyError):
        return None
    if not r.get("specs") or r.get("setup") != key or age > args.reference_max_age * 3600:
        return None
    if (r["focus"], r["skip"]) not in {("", ""), (args.focus, args.skip)}:
        return None
    if any(s["state"] in ("interrupted", "aborted", "timedout") for s in r["specs"].values()):
        return None
    return {**r, "cached": True}


def reference(pass_: str, args: argparse.Namespace, out: Path, critest: Path, crictl: Path,
              registry: env.Registry) -> dict | None:
    """containerd+runc through the same critest with the same flags: its cached result when fresh, else a run
    (tools/critest's containerd with runc, ~75 s)."""
    title, _, name, flags = PASSES[pass_]
    ns = argparse.Namespace(assets=args.assets, runv=str(REPO / ".venv/bin/runv"), focus=args.focus,
                            skip=args.skip, runc_timeout=args.runc_timeout, runv_timeout=args.timeout)
    binary, _, _ = critest_main.runtime("runc", ns, out)
    if args.reference == "cached":
        r = cached_reference(out, name, critest_main.setup_key("runc", binary, flags, registry.pushed()), args)
        if r:
            log(f"reference ({title}): {REF_NAME}'s result of {r['date']} still stands "
                f"({out / 'results' / name}; --reference rerun runs it again)")
            return r
    try:
        return critest_main.run_one("runc", args=ns, out=out, critest=critest, crictl=crictl, registry=registry,
                                    net=reference_network(args), flags=flags, name=name,
                                    timeout=args.runc_timeout)
    except SystemExit as e:  # containerd or runc missing or broken: hyperd's passes still run, alone
        log(f"warning: no {REF_NAME} reference ({title}): {e}")
        return None


class Interrupted(Exception):
    pass


def on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_all(args: argparse.Namespace, passes: list[str], out: Path) -> int:
    t0 = time.monotonic()
    critest, crictl = build.cri_tools(out)
    bb = build.busybox(out)
    progs = build.programs(out)
    layout, refs = build.image_layout(out, bb, progs)
    registry = env.Registry(out / "registry")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where a shell started us with SIGINT ignored
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    refs_done: dict[str, dict] = {}
    done: list[tuple[str, dict, dict | None, list[dict], str]] = []
    code = 0
    try:
        registry.start(refs)
        registry.push(layout, refs)
        log(f"images ready on 127.0.0.1:{registry.port} ({time.monotonic() - t0:.0f} s)")
        if args.reference != "no":  # the SPDY reference is also the WebSocket pass's bar (see below)
            for p in [x for x in PASSES if x in passes or (x == "spdy" and "ws" in passes)]:
                r = reference(p, args, out, critest, crictl, registry)
                if r:
                    refs_done[p] = r
        for p in passes:
            title, name, _, flags = PASSES[p]
            res = run_hyperd(title, name, flags, args, out, critest, crictl, registry)
            baseline, why = [refs_done[p]] if p in refs_done else [], ""
            if p == "ws" and "spdy" in refs_done:
                # containerd 1.6's streaming server answers WebSocket upgrades with 403: what runc passes over
                # SPDY is the bar for hyperd's WebSocket pass too
                baseline, why = [*baseline, refs_done["spdy"]], " (SPDY or WebSocket)"
            done.append((title, res, refs_done.get(p), baseline, why))
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'SIGINT'}); cleaned up", file=sys.stderr)
        code = 130
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # let the cleanup finish
            signal.signal(s, signal.SIG_IGN)
        registry.stop()
    summary = report.conformance_summary(out, done, "hyperd", REF_NAME)
    summary["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if done:  # an interrupted pass has its result.json, not a comparison
        (out / "conformance.json").write_text(json.dumps(summary, indent=1))
    print(f"logs: {out}/results/hyperd[-ws]/ (critest.log, hyperd.log, report.json, result.json), "
          f"{out}/results/runc[-ws]/; comparison: {out}/conformance.json")
    if code:
        return code
    return 0 if done and all(d[1]["specs"] for d in done) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", default="spdy ws", help="spdy (the default streaming), ws (-websocket-*), or both")
    p.add_argument("--reference", nargs="?", const="cached", default="no", choices=("cached", "rerun", "no"),
                   help=f"also {REF_NAME} through the same critest: its cached result if fresh (cached, the "
                        "default with the bare option), always a new run (rerun), or not at all (no)")
    p.add_argument("--reference-max-age", type=float, default=168,
                   help="hours a cached reference result stands (with the same setup)")
    p.add_argument("--focus", default="", help="ginkgo focus regex: run only the specs it matches")
    p.add_argument("--skip", default="", help="ginkgo skip regex")
    p.add_argument("--debug", action="store_true", help="hyperd --debug (a bigger hyperd.log)")
    p.add_argument("--out", type=Path, default=REPO / "build/critest")
    p.add_argument("--assets", type=Path, default=Path(os.environ.get("HYPERCONTAINER_ASSETS")
                                                       or "/var/lib/hypercontainer/assets"))
    p.add_argument("--hyperd", type=Path, default=REPO / ".venv/bin/hyperd")
    p.add_argument("--subnet", default=os.environ.get("CRITEST_HYPERD_SUBNET", "10.98.0.0/24"),
                   help="hyperd's CNI subnet")
    p.add_argument("--bridge", default=os.environ.get("CRITEST_HYPERD_BRIDGE", "critest1"),
                   help="hyperd's CNI bridge")
    p.add_argument("--ref-subnet", default=os.environ.get("CRITEST_SUBNET", "10.99.0.0/24"))
    p.add_argument("--ref-bridge", default=os.environ.get("CRITEST_BRIDGE", "critest0"))
    p.add_argument("--timeout", default="3h", help="ginkgo suite timeout against hyperd (a VM per sandbox)")
    p.add_argument("--runc-timeout", default="30m", help="ginkgo suite timeout of the reference")
    p.add_argument("--clean", action="store_true", help="only remove what killed runs left, and exit")
    args = p.parse_args()
    passes = [x for x in re.split(r"[\s,]+", args.passes) if x]
    if not passes or set(passes) - set(PASSES):
        p.error(f"--passes: spdy and/or ws, not {args.passes!r}")
    passes = [x for x in PASSES if x in passes]
    if os.geteuid() != 0:
        p.error("critest needs root (hyperd, containerd, CNI, mounts)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.assets = args.assets.resolve()
    args.hyperd = args.hyperd.absolute()  # not resolved: the venv's bin/ is where hyperctl and python are
    if not args.hyperd.exists():
        p.error(f"no hyperd at {args.hyperd}")
    with critest_main.locked(out, wait=True):
        if args.clean:
            crictl = out / "bin/crictl"
            left = env.hyperd_cleanup(out / "run/hyperd", hyperd_network(args), crictl if crictl.exists() else None,
                                      args.hyperd, args.assets)
            for what in left:
                log(f"hyperd had left {what} (removed now)")
            for pid in env.procs_mentioning(out / "registry/config.yml"):
                env.stop_pid(pid)
            n = env.sweep_tmp()
            if n:
                log(f"removed {n} director{'y' if n == 1 else 'ies'} critest had left in /tmp")
            log("cri-conformance: cleaned up")
            return 0
        return run_all(args, passes, out)


if __name__ == "__main__":
    sys.exit(main())
