"""The REST API under schemathesis: a hyperd of its own (temporary root, runtime dir and socket, --network none,
cold boots, no pool, an empty image store), reached through a TCP relay to its unix socket, every operation of
/openapi.json driven with generated requests, then the pod specs and manifests of the parser fuzzers (vectors and
seeds) sent as POST /v1/pods. Passes when no answer is a 5xx, hyperd's log holds no traceback, and
once every pod is removed and hyperd stopped, nothing of it is left: no QEMU or virtiofsd process naming its
root, no mount under its root, no tap of its pods (it runs with --network none: it makes no links at all).

Left out: the websocket routes (attach, exec, run: not in /openapi.json), GET /v1/events (an endless stream),
POST /v1/images/pull and POST /v1/auth (they reach out to registries: the registry fuzz target covers what they
parse).

`python -m fuzz.api [--max-examples N] [--seed S] [--seconds T]`: exit status 0 when it passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hypercontainer.network.links import tap_name

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXCLUDE = r"^/v1/(events|images/pull|auth)$"


class Relay:
    """127.0.0.1:PORT -> a unix socket, in a thread of its own."""

    def __init__(self, sock: Path) -> None:
        self.sock, self.port = sock, 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(Exception):
                w.close()

        async def client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_unix_connection(str(self.sock))
            except OSError:
                w.close()
                return
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        async def start() -> None:
            server = await asyncio.start_server(client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _pod_ids(port: int) -> list[str]:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        return [p["id"] for p in c.get("/v1/pods").json()]


def _processes_naming(root: Path) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmd and "schemathesis" not in cmd:
            out.append(f"{pid}: {cmd[:200]}")
    return out


def _replay_specs(port: int) -> list[str]:
    """The pod specs and Kubernetes manifests the parser fuzzers found crashes with (tests/vectors/fuzz/pod_spec,
    kube; JSON or YAML), and their seeds, as POST /v1/pods bodies (created, not started): each a 2xx or 4xx."""
    import httpx
    import yaml

    problems: list[str] = []
    codes: list[int] = []
    files = [f for t in ("pod_spec", "kube") for d in (REPO / "tests" / "vectors" / "fuzz" / t, REPO / "fuzz" /
                                                        "corpus" / t) if d.is_dir() for f in sorted(d.iterdir())]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        for f in files:
            try:
                spec = yaml.safe_load(f.read_bytes())  # JSON is YAML
            except yaml.YAMLError:
                continue
            r = c.post("/v1/pods", json={"spec": spec, "start": False})
            codes.append(r.status_code)
            if r.status_code >= 500:
                problems.append(f"POST /v1/pods with {f.relative_to(REPO)}: {r.status_code} {r.text[:300]}")
            elif r.status_code < 300:
                c.delete(f"/v1/pods/{r.json()['id']}", params={"force": "true"})
    print(f"replayed {len(codes)} pod specs: status codes {sorted(set(codes))}")
    return problems


def run(max_examples: int, seed: int, seconds: float | None = None, extra: list[str] | None = None) -> list[str]:
    """Runs schemathesis against a fresh hyperd; returns the problems found (empty: passed)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import Daemon  # the test suite's hyperd: its own root, runtime dir and socket

    root = Path(tempfile.mkdtemp(prefix="hc-fuzz-api-"))
    links = _links()
    d = Daemon(root, HYPERCONTAINER_BOOT="cold", HYPERCONTAINER_POOL="0")
    problems: list[str] = []
    relay = None
    pod_ids: list[str] = []
    try:
        d.start()
        relay = Relay(d.rundir / "hyperd.sock")
        cmd = [str(BIN / "schemathesis"), "run", f"http://127.0.0.1:{relay.port}/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", str(max_examples), "--seed", str(seed),
               "--generation-database", "none", "--exclude-path-regex", EXCLUDE, "--workers", "1",
               "--request-timeout", "60", "--no-color", *(extra or [])]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, cwd=root)
            out = r.stdout + r.stderr
            print(out[-6000:])
            if r.returncode != 0:
                problems.append(f"schemathesis exited {r.returncode}")
        except subprocess.TimeoutExpired as e:  # the long form: time is up, what ran so far counts
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            print(out[-6000:])
            if "not_a_server_error" in out and "FAILURES" in out:
                problems.append("schemathesis found a server error")
        problems += _replay_specs(relay.port)
        pod_ids = _pod_ids(relay.port)
        log = d.log.read_text(errors="replace")
        if "Traceback" in log:
            problems.append("traceback in hyperd's log:\n" + log[log.index("Traceback") - 2000 :][:6000])
    finally:
        if relay:
            relay.close()
        with contextlib.suppress(Exception):
            d.stop()
        time.sleep(1)
        left = _processes_naming(root)
        if left:
            problems.append("processes left: " + "; ".join(left))
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(root))]
        if mounts:
            problems.append(f"mounts left: {mounts}")
        # hyperd runs with --network none: it makes no links at all; a tap would be named after its pod (links.py)
        new_links = {name for name in _links() - links if any(name == tap_name(i) for i in pod_ids)}
        if new_links:
            problems.append(f"network links left: {sorted(new_links)}")
        shutil.rmtree(root, ignore_errors=True)
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-examples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=None)
    a, rest = ap.parse_known_args()
    problems = run(a.max_examples, a.seed, a.seconds, rest)
    for p in problems:
        print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
