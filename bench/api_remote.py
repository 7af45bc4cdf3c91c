#!/usr/bin/env python3
"""Remote API benchmark: the API round trip over TLS (hyperd --listen, a tenant's token) against the unix socket,
alternating in one run against one hyperd: `hyperctl ps` end to end (the client's start-up included), and one
GET /v1/pods from an open client (hypercontainer.client.rest: a new connection per request, as hyperctl makes, so the
TLS handshake counts)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import BIN, Daemon

from hypercontainer.client.endpoint import Endpoint
from hypercontainer.client.rest import Rest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "11")) * 3)
    ap.add_argument("--json", type=Path, default=REPO / "build" / "bench-api-remote.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-api-"))
    subprocess.run([str(BIN / "hyperd"), "tls", "init", str(tmp / "tls")], check=True, capture_output=True)
    port = free_port()
    (tmp / "hyperd").mkdir()
    d = Daemon(tmp / "hyperd", HYPERCONTAINER_LISTEN=f"tcp://127.0.0.1:{port}", HYPERCONTAINER_TLS_DIR=str(tmp / "tls"))
    d.start()
    try:
        admin = Rest(d.rundir / "hyperd.sock", 30)
        admin.request("POST", "/v1/tenants", json={"name": "bench"})
        token = str(admin.request("POST", "/v1/tokens", json={"tenant": "bench"})["token"])
        remote = Rest(Endpoint(host="127.0.0.1", port=port, ca_file=tmp / "tls" / "ca.pem", token=token), 30)
        local_env = d.env
        remote_env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERCONTAINER_")}
        remote_env.update(HYPERCONTAINER_HOST=f"tcp://127.0.0.1:{port}", HYPERCONTAINER_TOKEN=token,
                          HYPERCONTAINER_TLS_CA=str(tmp / "tls" / "ca.pem"), XDG_CONFIG_HOME=str(tmp / "client"))
        hyperctl = [str(BIN / "hyperctl"), "ps"]

        def ps(env: dict[str, str]) -> None:
            subprocess.run(hyperctl, env=env, check=True, capture_output=True)

        cases = {"ps unix": lambda: ps(local_env), "ps tls": lambda: ps(remote_env),
                 "GET unix": lambda: admin.request("GET", "/v1/pods"),
                 "GET tls": lambda: remote.request("GET", "/v1/pods")}
        for fn in cases.values():  # warm up
            fn()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for k, fn in cases.items():
                times[k].append(timed(fn))
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"API round trip, median of {args.runs} alternating runs:")
    for k, v in med.items():
        print(f"  {k:9s} {v * 1000:7.1f} ms")
    print(f"  hyperctl ps: tls / unix  {med['ps tls'] / med['ps unix']:.2f}")
    print(f"  GET /v1/pods: tls / unix {med['GET tls'] / med['GET unix']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"times": times, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
